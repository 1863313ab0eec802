"""The validation run's outputs: summary.json, summary.md, nvml_vs_smi.csv, validation.tar.gz.

``write`` is called after every step, so whatever point a run stops at, the
outputs describe what was done so far. At most five files go to --out (the
device tool brings back eight), everything else travels inside the tarball.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

from tests.gpu.phases import BY_NAME

CSV_COLUMNS = ("context", "value", "ours", "nvidia_smi_field", "nvidia_smi_text",
               "nvidia_smi", "unit", "tolerance", "agree", "note")
OUTPUTS = ("summary.json", "summary.md", "nvml_vs_smi.csv", "run.log", "validation.tar.gz")
_LEFT_OUT = {"site", "bin"}  # the installed package and the stand-in's launcher


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def first_gpu_pass(recording: Path) -> dict[str, Any] | None:
    """The GPU values of a recording's first pass. Its utilization averages every sample
    the driver still held, so it may carry the previous phase: worth a look."""
    try:
        with gzip.open(recording, "rt", encoding="utf-8") as fh:
            for line in fh:
                sample = json.loads(line)
                if sample.get("probe") == "gpu" and "pid" not in sample.get("labels", {}):
                    values = sample.get("values", {})
                    return {k: values.get(k) for k in (
                        "utilization_ratio", "utilization_samples", "sm_active_ratio",
                        "gpm_available", "memory_used_bytes")}
    except (OSError, ValueError, EOFError):
        return None
    return None


def phase_summary(record: dict[str, Any], work: Path) -> dict[str, Any]:
    """What the agent said about one phase, beside what it should have said."""
    name = record["name"]
    out: dict[str, Any] = {"name": name,
                           "load": BY_NAME[name].load, "worker_ready": record.get("ready"),
                           "worker_stopped": record.get("stopped"),
                           "recording": record.get("recording"),
                           "diagnose_rc": (record.get("diagnose") or {}).get("rc")}
    rec = work / "rec" / f"{name}.jsonl.gz"
    out["recording_bytes"] = rec.stat().st_size if rec.exists() else None
    out["first_gpu_pass"] = first_gpu_pass(rec)
    diagnosed = _json(work / f"diagnose_{name}.json")
    windows = diagnosed.get("windows", []) if isinstance(diagnosed, dict) else []
    out["windows"] = [{"label": w.get("label"), "confidence": w.get("confidence"),
                       "raw_label": w.get("raw_label"),
                       # "sm_active" where GPM was read, "utilization" where only the coarse
                       "busy_signal": sorted({g.get("busy_signal") for g in (
                           w.get("summary", {}).get("gpu") or {}).values()} - {None})}
                      for w in windows]
    with_gpm = sum(1 for w in out["windows"] if w["busy_signal"] == ["sm_active"])
    out["gpm"] = 2 * with_gpm > len(out["windows"])  # GPM read in most windows
    expected = out["expected_label"] = BY_NAME[name].expected(out["gpm"])
    labels = [w.get("label") for w in windows]
    if labels:
        label, count = Counter(labels).most_common(1)[0]
        first = next(w for w in windows if w.get("label") == label)
        out.update(majority_label=label, majority_windows=count,
                   as_expected=label == expected and 2 * count > len(labels),
                   evidence=first.get("evidence", []),
                   warnings=[w for w in first.get("warnings", [])
                             if not w.startswith("probe ")],
                   gpu_summary=first.get("summary", {}).get("gpu"))
    else:
        out.update(majority_label=None, as_expected=False, evidence=[], warnings=[])
    return out


def compare_rows(work: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(work.glob("nvml_*.json")):
        data = _json(path)
        if isinstance(data, dict):
            rows.extend(data.get("rows", []))
    return rows


def probes(work: Path) -> dict[str, str]:
    """``ai-bottleneck probes`` as probe -> "usable: detail" / "unusable: reason"."""
    try:
        lines = (work / "probes.out").read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    table = {}
    for line in lines[1:]:
        name, _, rest = line.partition(" ")
        status, _, detail = rest.strip().partition(" ")
        if status in ("usable", "unusable"):
            table[name] = f"{status}: {detail.strip()}"
    return table


def card(work: Path, result: dict[str, Any]) -> dict[str, Any]:
    # idle where it ran; else any context (a second try may compare under load only)
    found_files = [work / "nvml_idle.json", *sorted(work.glob("nvml_*.json"))]
    idle = next((d for d in map(_json, found_files) if isinstance(d, dict)), {})
    hello = result.get("worker")
    found = next((s.get("found") for s in result["steps"] if s.get("name") == "install"), None)
    return {"nvidia_smi": idle.get("card", {}),
            "probe_check": idle.get("probe_check"),
            "torch_worker": hello[1] if isinstance(hello, list | tuple) and len(hello) == 2
            else None,
            "installed": found}


def build(result: dict[str, Any], work: Path) -> dict[str, Any]:
    phases = [phase_summary(p, work) for p in result.get("phases", [])]
    rows = compare_rows(work)
    steps = result.get("steps", [])
    failed_steps = [s["name"] for s in steps if s.get("rc") != 0 or s.get("timed_out")]
    overhead = result.get("overhead")
    summary = {
        "mode": result["mode"], "started": result["started"],
        "finished": result.get("finished"), "seconds": result.get("seconds"),
        "settings": result.get("settings"), "card": card(work, result),
        "probes": probes(work),
        "steps": steps, "failed_steps": failed_steps,
        "deadline_hit": bool(result.get("deadline_hit")),
        "nvml_vs_nvidia_smi": {"rows": len(rows), "compared": sum(
            1 for r in rows if r["agree"] is not None), "disagree": [
            r for r in rows if r["agree"] is False]},
        "phases": phases,
        "labels_as_expected": sum(1 for p in phases if p["as_expected"]),
        "overhead": overhead,
        "pids": result.get("pids", []),  # every process the run started (all ended)
    }
    settings = result.get("settings") or {}
    asked = set(str(settings.get("steps", "")).split(","))
    asked_phases = str(settings.get("phases") or ",".join(BY_NAME)).split(",")
    summary["ok"] = (
        not failed_steps and not summary["deadline_hit"]
        and ("compare" not in asked or bool(rows))
        and ("phases" not in asked or (len(phases) == len(asked_phases) and all(
            p["recording_bytes"] and p["windows"] for p in phases)))
        and ("overhead" not in asked or (isinstance(overhead, dict) and "error" not in overhead)))
    return summary


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown(s: dict[str, Any]) -> str:
    c = s["card"]
    smi = c.get("nvidia_smi") or {}
    torch = c.get("torch_worker") or {}
    lines = [f"# ai-bottleneck validation run ({s['mode']})", "",
             f"- card: {smi.get('name', '—')}, driver {smi.get('driver_version', '—')}, "
             f"compute capability {smi.get('compute_cap', '—')}, "
             f"memory {smi.get('memory.total', '—')} MiB",
             f"- nvidia-smi time: {smi.get('timestamp', '—')}; torch "
             f"{torch.get('torch', '—')} (CUDA {torch.get('cuda', '—')})",
             f"- run: {s.get('seconds')} s, ok: {s['ok']}, failed steps: "
             f"{', '.join(s['failed_steps']) or 'none'}"
             + (", deadline hit" if s["deadline_hit"] else ""), "",
             "## Phases", "",
             "| phase | expected | windows | majority | as expected | evidence |",
             "|---|---|---|---|---|---|"]
    for p in s["phases"]:
        labels = " ".join(w["label"] or "?" for w in p["windows"])
        lines.append(f"| {p['name']} | {p['expected_label']} | {labels} | "
                     f"{fmt(p['majority_label'])} | {p['as_expected']} | "
                     f"{fmt('; '.join(p['evidence'] + p['warnings']))} |")
    o = s.get("overhead") or {}
    agent, smi_cpu = o.get("agent") or {}, o.get("nvidia_smi") or {}
    lines += ["", "## Overhead", "",
              f"Over {fmt(o.get('seconds'))} s: agent (1 Hz, default probes) "
              f"{fmt(agent.get('total'))} CPU s, nvidia-smi -l 1 {fmt(smi_cpu.get('total'))} "
              f"CPU s, ratio {fmt(o.get('ratio_agent_to_nvidia_smi'))}; agent peak RSS "
              f"{fmt(o.get('agent_peak_rss_bytes'))} bytes. {o.get('error', '')}", "",
              "## NVML against nvidia-smi (disagreements)", "",
              "| context | value | ours | nvidia-smi field | nvidia-smi | unit |",
              "|---|---|---|---|---|---|"]
    for r in s["nvml_vs_nvidia_smi"]["disagree"]:
        lines.append(f"| {r['context']} | {r['value']} | {fmt(r['ours'])} | "
                     f"{r['nvidia_smi_field']} | {fmt(r['nvidia_smi'])} | {r['unit']} |")
    lines += ["", f"{s['nvml_vs_nvidia_smi']['rows']} rows in nvml_vs_smi.csv, "
              f"{s['nvml_vs_nvidia_smi']['compared']} compared.", ""]
    return "\n".join(lines)


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write(result: dict[str, Any], work: Path, out: Path) -> None:
    s = build(result, work)
    _replace(out / "summary.json", json.dumps(s, indent=1).encode())
    _replace(out / "summary.md", markdown(s).encode())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(compare_rows(work))
    _replace(out / "nvml_vs_smi.csv", buffer.getvalue().encode())
    (work / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    tmp = out / ".validation.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            rel = path.relative_to(work)
            if path.is_file() and rel.parts[0] not in _LEFT_OUT:
                tar.add(path, arcname=f"validation/{rel}")
    os.replace(tmp, out / "validation.tar.gz")


def load(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "summary.json").read_text(encoding="utf-8")))
