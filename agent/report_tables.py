"""KEY NUMBERS of the terminal report: a table per resource, from RunFigures.

Cells read "mean/max": the mean of the per-window values and the highest
window, over the windows the section header names.
"""

from __future__ import annotations

from ai_bottleneck.capacity import LINK_SPEED
from ai_bottleneck.figures import Agg, NicFigures, RunFigures, UseAgainst
from ai_bottleneck.path_use import capacity_text
from ai_bottleneck.probes.vocabulary import HttpPhase
from ai_bottleneck.termstyle import Style, table, wrap
from ai_bottleneck.units import MISSING, bits, celsius, count, pct, secs, size, watts


def _ratio_pair(a: Agg) -> str:
    """"61/98%": mean and highest window of a ratio."""
    if not a:
        return MISSING
    return f"{pct(a.mean)[:-1]}/{pct(a.max)}"


def _bits_pair(a: Agg) -> str:
    if not a:
        return MISSING
    return _shared_unit(bits(a.mean), bits(a.max))


def _secs_pair(a: Agg) -> str:
    if not a:
        return MISSING
    return _shared_unit(secs(a.mean), secs(a.max))


def _shared_unit(a: str, b: str) -> str:
    """"19.5 GiB", "80 GiB" -> "19.5/80 GiB"; different units stay whole."""
    (na, _, ua), (nb, _, ub) = a.partition(" "), b.partition(" ")
    return f"{na}/{nb} {ua}" if ua == ub else f"{a}/{b}"


def gpu_table(f: RunFigures, width: int) -> list[str]:
    if not f.gpus:
        return []
    rows = []
    for g in f.gpus:
        used, total = g.memory_used_bytes.max, g.memory_total_bytes
        if used is not None and total:
            memory = f"{_shared_unit(size(used), size(total))} {pct(g.memory_used_ratio.max)}"
        else:
            memory = size(used) if used is not None else MISSING
        power = watts(g.power_watts.mean)
        if g.power_watts and g.power_limit_watts:
            power = _shared_unit(power, watts(g.power_limit_watts))
        throttled = (", ".join(f"{reason} {n}w" for reason, n in
                               sorted(g.throttled.items(), key=lambda p: -p[1]))
                     if g.throttled else "no")
        rows.append([g.id, (g.name or MISSING).removeprefix("NVIDIA "), _ratio_pair(g.utilization),
                     _ratio_pair(g.sm_active), memory, power,
                     celsius(g.temperature_celsius.max), throttled])
    header = ["GPU", "NAME", "UTIL", "SM", "MEMORY", "POWER", "TEMP", "THROTTLE"]
    return table(header, rows, width, shrink=1)


def host_table(f: RunFigures, width: int) -> list[str]:
    h = f.host
    if h is None:
        return []
    row = ["host", _ratio_pair(h.cpu), _ratio_pair(h.busiest_core),
           _ratio_pair(h.cpu_pressure), _ratio_pair(h.io_pressure),
           pct(h.memory_used_ratio.max) if h.memory_used_ratio else MISSING]
    return table(["HOST", "CPU", "BUSIEST CORE", "CPU PRESSURE", "IO PRESSURE", "MEMORY"],
                 [row], width, shrink=0)


def nic_table(f: RunFigures, width: int) -> list[str]:
    if not f.nics:
        return []
    rows = [[n.name, _bits_pair(n.rx_bits_per_second), _bits_pair(n.tx_bits_per_second),
             bits(n.link_bits_per_second) if n.link_bits_per_second else "unknown",
             _ratio_pair(n.use)] for n in f.nics]
    out = table(["NIC", "RX", "TX", "LINK", "USE"], rows, width, shrink=0)
    out += [note for n in f.nics if (note := use_note(n)) is not None]
    if f.retransmit_ratio:
        r = f.retransmit_ratio
        out.append(f"  TCP retransmits {pct(r.mean, 2)}/{pct(r.max, 2)} of segments sent")
    return out


def _against_text(g: UseAgainst) -> str:
    """"rx 100% of 8.02 Mbit/s path (plateau)": the mean use in the windows of ``g``."""
    return f"{g.direction} {pct(g.use.mean)} of {capacity_text(g.capacities, g.basis)}"


def use_note(n: NicFigures) -> str | None:
    """"  eth0 USE: rx 100% of 8.02 Mbit/s path (plateau) 5w, of the link speed 2w": what the
    USE column was against where that was not the link speed (the LINK column says
    that), with the mean use in those windows."""
    others = sorted((g for g in n.against.values() if g.basis != LINK_SPEED),
                    key=lambda g: -g.windows)
    if not others:
        return None
    parts = [f"{_against_text(g)} {g.windows}w" for g in others]
    link = sum(g.windows for g in n.against.values() if g.basis == LINK_SPEED)
    if link:
        parts.append(f"of the link speed {link}w")
    return f"  {n.name} USE: " + ", ".join(parts)


def use_text(n: NicFigures) -> str:
    """The NIC's mean use, against its link speed ("3%"); where the busier direction was
    mostly against another capacity, that group's figure and windows: "rx 100% of
    8.02 Mbit/s path (plateau)" (in all windows), "... in 5 of 6 windows"."""
    g = n.main_against()
    if g is None or g.basis == LINK_SPEED:
        return pct(n.use.mean)
    share = "" if g.windows == n.use.count else f" in {g.windows} of {n.use.count} windows"
    return _against_text(g) + share


def target_table(f: RunFigures, width: int) -> list[str]:
    if not f.targets:
        return []
    rows = []
    for t in f.targets:
        phases = [(p.value, a.mean) for p in HttpPhase
                  if (a := t.phases.get(p.value_name)) and a.mean is not None]
        slowest = max(phases, key=lambda p: p[1]) if phases else None
        failed = (f"{t.failed} ({pct(t.failed / t.calls)})" if t.calls else "0")
        rows.append([t.target, count(t.calls), failed, _secs_pair(t.p95_seconds),
                     f"{slowest[0]} {secs(slowest[1])}" if slowest else MISSING])
    return table(["TARGET", "CALLS", "FAILED", "P95", "SLOWEST PHASE"], rows, width, shrink=0)


def _count_pair(a: Agg) -> str:
    """"2.5/12": mean and highest window of a request count."""
    return f"{a.mean:.3g}/{a.max:.3g}" if a.mean is not None and a.max is not None else MISSING


def engine_table(f: RunFigures, width: int) -> list[str]:
    """Model servers' own metrics: requests running and waiting, KV cache peak,
    preemptions and the p95 latencies the engine measured; then each row's URL."""
    if not f.engines:
        return []
    rows = [[e.engine, _count_pair(e.running), _count_pair(e.waiting),
             pct(e.kv_usage.max) if e.kv_usage else MISSING, count(e.preemptions),
             _secs_pair(e.queue_p95), _secs_pair(e.ttft_p95), _secs_pair(e.inter_token_p95)]
            for e in f.engines]
    out = table(["ENGINE", "RUN", "WAIT", "KV", "PREEMPT", "QUEUE P95", "TTFT P95",
                 "ITL P95"], rows, width, shrink=0)
    return out + [f"  {e.engine} at {e.target}" for e in f.engines]


def workload_lines(f: RunFigures) -> list[str]:
    """Whose GPU memory it is: each workload's peak over the run, largest first."""
    if not f.gpu_workloads:
        return []
    return ["GPU memory by workload (peak)",
            *(f"  {name}: {size(peak)}" for name, peak in f.gpu_workloads)]


def health_lines(f: RunFigures) -> list[str]:
    """The GPUs whose health was not ok in some window, with their worst state."""
    if not f.gpu_health:
        return []
    return ["GPU health (not ok)", *(f"  GPU {gpu}: {text}" for gpu, text in f.gpu_health)]


def phase_lines(f: RunFigures, width: int) -> list[str]:
    out = []
    for t in f.targets:
        phases = [f"{p.value} {secs(a.mean)}" for p in HttpPhase
                  if (a := t.phases.get(p.value_name)) and a.mean is not None]
        if phases:
            out.append(f"  {t.target}: " + ", ".join(phases))
    return [part for line in out for part in wrap(line.strip(), width, "  ", "    ")]


def other_lines(f: RunFigures) -> list[str]:
    out = []
    for tp in f.throughputs:
        a = tp.bits_per_second
        n = len(a.values)
        out.append(f"  {tp.probe} {tp.target}: {bits(a.last)}"
                   + (f" (last of {n}; lowest {bits(min(a.values))})" if n > 1 else ""))
    if f.oom_events or f.load_failures:
        out.append(f"  log events: {count(f.oom_events)} out-of-memory, "
                   f"{count(f.load_failures)} model-load failures")
    return out


def key_numbers(f: RunFigures, width: int, style: Style) -> list[str]:
    """Every table, with a blank line between resources; header lines in bold."""
    blocks = [gpu_table(f, width), health_lines(f), workload_lines(f), host_table(f, width),
              nic_table(f, width), target_table(f, width), engine_table(f, width),
              other_lines(f)]
    out: list[str] = []
    for block in blocks:
        if not block:
            continue
        if out:
            out.append("")
        rest = [part for line in block[1:] for part in
                (wrap(line.strip(), width, "  ", "    ") if len(line) > width else [line])]
        out += [style.bold(block[0]) if block is not blocks[-1] else block[0], *rest]
    return out
