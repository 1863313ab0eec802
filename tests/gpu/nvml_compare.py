"""Every value the GPU probe reads beside nvidia-smi's answer, taken in the same second.

Run by tests/gpu/validate.py in the environment where ai-bottleneck is installed:

    python3 -m tests.gpu.nvml_compare --context idle --out FILE.json

The probe is the installed ``GpuProbe`` (NVML through nvidia-ml-py, or the fake
backend that AI_BOTTLENECK_NVML_BACKEND names in a dry run). It samples once to
start its driver-sample cursor and its GPM interval, waits a second, then takes
the compared sample while nvidia-smi's ``--query-gpu``, ``--query-compute-apps``
and two one-second ``dmon`` runs (PCIe, GPM) are under way. Raw nvidia-smi
output is kept in the file beside the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.gpu import smi

SMI_TIMEOUT_SECONDS = 20.0


def _start(args: list[str]) -> subprocess.Popen[str] | OSError:
    try:
        return subprocess.Popen(["nvidia-smi", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    except OSError as exc:  # no nvidia-smi on PATH: the table says so, row by row
        return exc


def _finish(proc: subprocess.Popen[str] | OSError) -> tuple[int | None, str]:
    if isinstance(proc, OSError):
        return None, f"nvidia-smi could not start: {proc}"
    try:
        out, _ = proc.communicate(timeout=SMI_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return None, out
    return proc.returncode, out


def measure(context: str, settle_seconds: float = 1.0) -> dict[str, Any]:
    from ai_bottleneck.probes.gpu import GpuProbe  # the installed package, not the tree

    rc, help_text = _finish(_start(["--help-query-gpu"]))
    chosen = smi.choose_fields(smi.known_fields(help_text))
    fields = sorted(set(chosen.values()))
    probe = GpuProbe()
    try:
        availability = probe.check()
        probe.sample()  # starts the sample-buffer cursor and the first GPM sample
        time.sleep(settle_seconds)
        gpm_ids = ",".join(str(mid) for _, mid in smi.GPM_METRICS)
        procs = {
            "query": _start([f"--query-gpu={','.join(fields)}", "--format=csv,nounits"]),
            "apps": _start(["--query-compute-apps=pid,process_name,used_memory",
                            "--format=csv,nounits"]),
            "pcie": _start(["dmon", "-c", "1", "-s", "t"]),
            "gpm": _start(["dmon", "-c", "1", "--gpm-metrics", gpm_ids]),
        }
        t_ours = time.time()
        samples = probe.sample()
        t_ours_done = time.time()
        raw = {name: _finish(p) for name, p in procs.items()}
        t_smi_done = time.time()
    finally:
        probe.close()
    gpu = next((s for s in samples if s.labels.get("gpu") == "0" and "pid" not in s.labels),
               None)
    queries = smi.query_csv(raw["query"][1]) if raw["query"][0] == 0 else []
    query = queries[0] if queries else {}
    apps = smi.query_csv(raw["apps"][1]) if raw["apps"][0] == 0 else None
    rows = smi.compare(
        context, dict(gpu.values) if gpu is not None and gpu.ok else {},
        dict(gpu.labels) if gpu is not None else {}, query, chosen, apps=apps,
        pcie=raw["pcie"][1] if raw["pcie"][0] == 0 else None,
        gpm=raw["gpm"][1] if raw["gpm"][0] == 0 else None,
        processes=[(dict(s.labels), dict(s.values)) for s in samples
                   if s.labels.get("gpu") == "0" and "pid" in s.labels])
    return {
        "context": context,
        "probe_check": {"usable": availability.usable, "reason": availability.reason},
        "probe_error": gpu.error if gpu is not None else "no sample of GPU 0",
        "t_ours": t_ours, "t_ours_done": t_ours_done, "t_nvidia_smi_done": t_smi_done,
        "nvidia_smi_timestamp": query.get("timestamp"),
        "card": {f: query.get(f) for f in smi.CARD_FIELDS if f in query},
        "fields_asked": fields, "help_query_rc": rc,
        "raw": {name: {"rc": code, "output": out} for name, (code, out) in raw.items()},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", required=True, help="what the GPU is doing (phase name)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--settle-seconds", type=float, default=1.0,
                        help="between the first sample and the compared one")
    args = parser.parse_args(argv)
    result = measure(args.context, args.settle_seconds)
    args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    compared = [r for r in result["rows"] if r["agree"] is not None]
    print(f"{args.context}: {len(result['rows'])} values, {len(compared)} compared, "
          f"{sum(1 for r in compared if not r['agree'])} disagree")
    return 0 if result["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
