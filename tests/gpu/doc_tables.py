"""The tables of docs/validation.md, from a validation run's fetched outputs.

    python -m tests.gpu.doc_tables DIR > /tmp/tables.md

DIR holds summary.json and nvml_vs_smi.csv. Prints the card and date, every
NVML value against nvidia-smi (idle, and under the matrix-product load for the
values that move), the label and evidence of each phase, and the overhead ratio,
as Markdown to paste into docs/validation.md in place of its "not measured yet"
lines.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from tests.gpu.summary import fmt

SHOWN_CONTEXTS = ("idle", "matmul", "tiny_kernels", "memory_held")


def tables(run_dir: Path) -> str:
    s: dict[str, Any] = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    smi = s["card"].get("nvidia_smi") or {}
    torch = s["card"].get("torch_worker") or {}
    date = time.strftime("%Y-%m-%d", time.gmtime(s["started"]))
    out = [f"Measured {date} on {smi.get('name', '—')} (driver {smi.get('driver_version', '—')}, "
           f"compute capability {smi.get('compute_cap', '—')}, {smi.get('memory.total', '—')} "
           f"MiB, persistence {smi.get('persistence_mode', '—')}, MIG "
           f"{smi.get('mig.mode.current', '—')}), PyTorch {torch.get('torch', '—')} "
           f"(CUDA {torch.get('cuda', '—')}), run mode {s['mode']}.", "",
           "### NVML against nvidia-smi", "",
           "| context | value | ours | nvidia-smi field | nvidia-smi | unit | agree |",
           "|---|---|---|---|---|---|---|"]
    with open(run_dir / "nvml_vs_smi.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["context"] not in SHOWN_CONTEXTS:
                continue
            if row["context"] != "idle" and row["ours"] == row["nvidia_smi"]:
                continue  # under load, show what moved
            out.append(f"| {row['context']} | {row['value']} | {row['ours'] or '—'} | "
                       f"{row['nvidia_smi_field'] or '—'} | {row['nvidia_smi'] or '—'} | "
                       f"{row['unit']} | {row['agree'] or '—'} |")
    out += ["", "### Labels per phase", "",
            "| phase | load | expected | windows | as expected | evidence |",
            "|---|---|---|---|---|---|"]
    for p in s["phases"]:
        figures = {k: v for k, v in (p.get("worker_stopped") or {}).items()
                   if k not in ("phase",)}
        labels = " ".join(w["label"] or "?" for w in p["windows"])
        out.append(f"| {p['name']} | {p['load']} ({fmt(json.dumps(figures))}) | "
                   f"{p['expected_label']} | {labels} | {p['as_expected']} | "
                   f"{fmt('; '.join(p['evidence'] + p['warnings']))} |")
    o = s.get("overhead") or {}
    agent, nvsmi = o.get("agent") or {}, o.get("nvidia_smi") or {}
    out += ["", "### Overhead", "",
            "| process | CPU s over the span | CPU s per second |", "|---|---|---|",
            f"| ai-bottleneck diagnose, 1 Hz, default probes | {fmt(agent.get('total'))} | "
            f"{fmt(agent.get('per_second'))} |",
            f"| nvidia-smi --query-gpu=utilization.gpu,memory.used -l 1 | "
            f"{fmt(nvsmi.get('total'))} | {fmt(nvsmi.get('per_second'))} |", "",
            f"Span {fmt(o.get('seconds'))} s; ratio agent / nvidia-smi "
            f"{fmt(o.get('ratio_agent_to_nvidia_smi'))}; agent peak RSS "
            f"{fmt(o.get('agent_peak_rss_bytes'))} bytes.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tests.gpu.doc_tables DIR", file=sys.stderr)
        return 2
    print(tables(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
