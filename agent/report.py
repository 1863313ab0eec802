"""The terminal report: what a person reads in ten seconds.

Works on the JSON forms of the window results and the verdict (the same
objects `--json` prints), so `diagnose` and `replay` render identically.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ai_bottleneck import gpu_faults, gpu_workloads

LABEL_CHARS = {
    "gpu_bound": "G", "vram_bound": "V", "network_bound": "N", "cpu_bound": "C",
    "balanced": "B", "idle": ".", "unknown": "?",
}


def _fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(t))


def _fmt_bits(bps: float) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:.0f} bit/s"


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _pct(r: float) -> str:
    return f"{100 * r:.0f}%"


def _secs(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


class _Series:
    """Mean and max of one number across windows."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def add(self, v: Any) -> None:
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            self.values.append(float(v))

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def __bool__(self) -> bool:
        return bool(self.values)


def _collect(summaries: Iterable[Mapping[str, Any]],
             resource: str) -> dict[str, dict[str, _Series]]:
    """resource -> instance -> key -> series across windows (host has one instance '')."""
    out: dict[str, dict[str, _Series]] = {}
    for s in summaries:
        part = s.get(resource)
        if not isinstance(part, Mapping):
            continue
        instances = {"": part} if resource in ("host", "tcp", "events") else part
        for name, values in instances.items():
            if not isinstance(values, Mapping):
                continue
            slot = out.setdefault(str(name), {})
            for key, v in values.items():
                slot.setdefault(key, _Series()).add(v)
    return out


def _names(summaries: Sequence[Mapping[str, Any]], resource: str) -> dict[str, str]:
    names: dict[str, str] = {}
    for s in summaries:
        for gid, g in (s.get(resource) or {}).items():
            if isinstance(g, Mapping) and isinstance(g.get("name"), str):
                names[str(gid)] = g["name"]
    return names


def key_numbers(windows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per resource instance: means and maxima across the run's windows."""
    summaries = [w.get("summary") or {} for w in windows]
    lines: list[str] = []
    gpu_names = _names(summaries, "gpu")
    for gid, k in sorted(_collect(summaries, "gpu").items()):
        parts = []
        busy = k.get("busy_ratio")
        if busy:
            signal = "SM activity" if k.get("sm_active_ratio") else "utilization (coarse)"
            parts.append(f"busy mean {_pct(busy.mean)}, max {_pct(busy.max)} ({signal})")
        used, total = k.get("memory_used_bytes"), k.get("memory_total_bytes")
        if used and total:
            parts.append(f"memory max {_fmt_bytes(used.max)} of {_fmt_bytes(total.max)} "
                         f"({_pct(used.max / total.max)})")
        if k.get("power_watts"):
            parts.append(f"power mean {k['power_watts'].mean:.0f} W")
        name = f" ({gpu_names[gid]})" if gid in gpu_names else ""
        lines.append(f"GPU {gid}{name}: " + ("; ".join(parts) or "no readings"))
    for _, k in _collect(summaries, "host").items():
        parts = []
        if k.get("cpu_utilization_ratio"):
            c = k["cpu_utilization_ratio"]
            parts.append(f"CPU mean {_pct(c.mean)}, max {_pct(c.max)}")
        if k.get("cpu_busiest_core_ratio"):
            parts.append(f"busiest core max {_pct(k['cpu_busiest_core_ratio'].max)}")
        if k.get("cpu_pressure_some_ratio"):
            parts.append(f"CPU pressure mean {_pct(k['cpu_pressure_some_ratio'].mean)}")
        if k.get("memory_used_ratio"):
            parts.append(f"memory max {_pct(k['memory_used_ratio'].max)}")
        if parts:
            lines.append("Host: " + "; ".join(parts))
    for nic, k in sorted(_collect(summaries, "nic").items()):
        parts = []
        for d in ("rx", "tx"):
            s = k.get(f"{d}_bits_per_second")
            if s:
                parts.append(f"{d} mean {_fmt_bits(s.mean)}, max {_fmt_bits(s.max)}")
        link = k.get("link_speed_bits_per_second")
        parts.append(f"link {_fmt_bits(link.max)}" if link else "link speed unknown")
        lines.append(f"NIC {nic}: " + "; ".join(parts))
    for _, k in _collect(summaries, "tcp").items():
        if k.get("retransmit_ratio"):
            lines.append(f"TCP retransmits: mean {100 * k['retransmit_ratio'].mean:.2f}% of "
                         f"segments sent, max {100 * k['retransmit_ratio'].max:.2f}%")
    for target, k in sorted(_collect(summaries, "http").items()):
        calls = sum(k["calls"].values) if k.get("calls") else 0
        fails = sum(k["failures"].values) if k.get("failures") else 0
        parts = [f"{calls:.0f} calls, {fails:.0f} failed"]
        if k.get("p95_total_seconds"):
            parts.append(f"p95 {_secs(k['p95_total_seconds'].mean)} (worst window "
                         f"{_secs(k['p95_total_seconds'].max)})")
        phases = [(p, k[f"mean_{p}_seconds"].mean) for p in
                  ("dns", "connect", "tls", "upload", "server", "download")
                  if k.get(f"mean_{p}_seconds")]
        if phases:
            parts.append("mean phases: " + ", ".join(f"{p} {_secs(v)}" for p, v in phases))
        lines.append(f"HTTP {target}: " + "; ".join(parts))
    for what, k in sorted(_collect(summaries, "throughput").items()):
        if k.get("bits_per_second"):
            lines.append(f"Measured throughput {what}: {_fmt_bits(k['bits_per_second'].max)}")
    for _, k in _collect(summaries, "events").items():
        oom = sum(k["oom_events"].values) if k.get("oom_events") else 0
        lf = sum(k["load_failure_events"].values) if k.get("load_failure_events") else 0
        lines.append(f"Log events: {oom:.0f} out-of-memory, {lf:.0f} model-load failures")
    lines += gpu_workloads.key_numbers(summaries) + gpu_faults.key_numbers(summaries)
    return lines


def timeline(windows: Sequence[Mapping[str, Any]], width: int = 60) -> list[str]:
    """One character per window, wrapped; and the label changes with their times."""
    chars = "".join(LABEL_CHARS.get(str(w.get("label")), "?") for w in windows)
    lines = [chars[i:i + width] for i in range(0, len(chars), width)] or ["(no windows)"]
    used = [lbl for lbl, c in LABEL_CHARS.items() if c in chars]
    lines.append("legend: " + "  ".join(f"{LABEL_CHARS[lbl]}={lbl}" for lbl in used))
    prev = None
    for w in windows:
        label = w.get("label")
        if prev is not None and label != prev:
            lines.append(f"{_fmt_time(w.get('start'))}  {prev} -> {label}")
        prev = label
    return lines


def render(windows: Sequence[Mapping[str, Any]], verdict: Mapping[str, Any], *,
           title: str, not_measured: Mapping[str, str], notes: Sequence[str] = ()) -> str:
    out: list[str] = [title, ""]
    label = verdict.get("label", "unknown")
    out.append(f"VERDICT  {label}  (confidence {float(verdict.get('confidence', 0)):.2f})")
    out += [f"  {r}" for r in verdict.get("reasons", [])]
    out += ["", f"TIMELINE  (one character per window, {len(windows)} windows)"]
    out += [f"  {line}" for line in timeline(windows)]
    numbers = key_numbers(windows)
    if numbers:
        out += ["", "KEY NUMBERS"] + [f"  {line}" for line in numbers]
    advice = list(verdict.get("advice", []))
    if advice:
        out += ["", "ADVICE"] + [f"  - {a}" for a in advice]
    # "probe X unavailable: ..." warnings repeat the NOT MEASURED section below.
    warnings = [w for w in verdict.get("warnings", [])
                if not any(str(w).startswith(f"probe {name} unavailable")
                           for name in not_measured)]
    if warnings:
        out += ["", "WARNINGS"] + [f"  - {w}" for w in warnings]
    if not_measured:
        out += ["", "NOT MEASURED"]
        width = max(len(k) for k in not_measured)
        out += [f"  {k:<{width}}  {v}" for k, v in sorted(not_measured.items())]
    if notes:
        out += [""] + [f"note: {n}" for n in notes]
    return "\n".join(out) + "\n"
