"""Judge the service, not the host: where the ``service`` probe measured the service
under diagnosis (its cgroup), the rules read its CPU use and pressure in place of the
host's, and the host's figures become context ("the host is busy with other work").

Pure functions of a window and its readings (docs/classifier.md, "The service under
diagnosis"). Without service samples, everything is as before.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ai_bottleneck.probes.vocabulary import (
    HOST_CPU,
    IN_SERVICE_LABEL,
    PROCESS_CPU_CORES,
    PROCESS_LABEL,
    SERVICE_BUSIEST_THREAD,
    is_process_sample,
    pressure_value,
)
from ai_bottleneck.readings import HostReading, Readings
from ai_bottleneck.windows import Window
from ai_bottleneck.words import pct

#: Host CPU outside the service worth naming as context.
OTHER_WORK_RATIO = 0.3
TOP = 5


@dataclass(frozen=True, slots=True)
class ProcessCpu:
    pid: str
    name: str
    cores: float        # mean over the passes that saw it
    in_service: bool


def _service(window: Window) -> tuple[str, HostReading] | None:
    measured = [sw for sw in window.of("service") if not is_process_sample(sw.labels) and sw.count]
    if not measured:
        return None
    sw = max(measured, key=lambda s: s.count)
    cpu = sw.mean(HOST_CPU)
    if cpu is None:
        return None
    return sw.labels.get("service", "?"), HostReading(
        samples=sw.count, cpu=cpu, busiest_core=sw.mean(SERVICE_BUSIEST_THREAD),
        cpu_pressure=sw.mean(pressure_value("cpu")),
        io_pressure=sw.mean(pressure_value("io")),
        memory_pressure=sw.mean(pressure_value("memory")))


def top_processes(window: Window, limit: int = TOP) -> list[ProcessCpu]:
    """Processes by CPU in the window, the service's first."""
    out = []
    for sw in window.of("service"):
        if not is_process_sample(sw.labels) or not sw.count:
            continue
        cores = sw.mean(PROCESS_CPU_CORES) or 0.0
        out.append(ProcessCpu(sw.labels[PROCESS_LABEL], sw.labels.get("process_name", "?"), cores,
                              sw.labels.get(IN_SERVICE_LABEL) == "1"))
    mine = sorted((p for p in out if p.in_service), key=lambda p: -p.cores)[:limit]
    others = sorted((p for p in out if not p.in_service), key=lambda p: -p.cores)[:limit]
    return mine + others


def _names(processes: list[ProcessCpu]) -> str:
    return ", ".join(f"{p.name} (pid {p.pid}{', service' if p.in_service else ''}) "
                     f"{p.cores:.2f} cores" for p in processes)


def judge_service(r: Readings, window: Window) -> tuple[Readings, list[str]]:
    """Readings with the service's CPU in place of the host's, and the context notes."""
    found = _service(window)
    if found is None or r.host is None:
        return r, []
    name, service = found
    host = r.host
    notes = [f"service {name}: CPU {pct(service.cpu or 0.0)} of the host"
             + (f", CPU pressure {pct(service.cpu_pressure)}"
                if service.cpu_pressure is not None else "")]
    outside = (host.cpu or 0.0) - (service.cpu or 0.0)
    if outside >= OTHER_WORK_RATIO:
        others = [p for p in top_processes(window) if not p.in_service][:3]
        notes.append(f"the host is busy with other work: {pct(outside)} CPU outside the service"
                     + (f" ({_names(others)})" if others else ""))
    judged = replace(service, memory_used_ratio=host.memory_used_ratio,
                     cpu_count=host.cpu_count)
    return replace(r, host=judged), notes


def cpu_names(window: Window) -> list[str]:
    """For a cpu_bound window: who uses the CPU, and a pinned thread of the service."""
    top = top_processes(window)
    out = [f"top CPU in the window: {_names(top)}"] if top else []
    found = _service(window)
    if found is not None:
        name, service = found
        if service.busiest_core is not None and service.busiest_core >= 0.9:
            out.append(f"one thread of service {name} uses {pct(service.busiest_core)} of a "
                       "core: a single-threaded step (preprocessing, the Python GIL)")
    return out
