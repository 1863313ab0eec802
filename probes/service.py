"""Service probe: the CPU, pressure and memory of the service under diagnosis, from its
cgroup (v2), and which processes use the CPU.

The host probe's figures are the whole host's: on a shared host they blame the
service for other work. This probe reads the service's own cgroup-v2 files
(``cpu.stat``, ``cpu.pressure``, ``memory.pressure``, ``io.pressure``,
``memory.current``) so the rules can judge the service (agent/service_cpu.py),
and each pass names the processes using the most CPU, the service's and the
host's, from ``/proc/<pid>/stat`` deltas. The service is a cgroup path, a systemd
unit (found in the cgroup tree), or a PID or process name (its cgroup).

Samples: one per pass labelled ``service`` (values in docs/probes.md), and one per
top process labelled ``service``, ``pid``, ``process_name``, ``in_service``
(``1``/``0``) with ``process_cpu_cores``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ai_bottleneck.probes.base import (
    Availability,
    Clock,
    Sample,
    failed,
    option_info,
    parse_options,
)
from ai_bottleneck.probes.vocabulary import (
    HOST_CPU,
    IN_SERVICE_LABEL,
    PROCESS_COUNT,
    PROCESS_CPU_CORES,
    PROCESS_LABEL,
    SERVICE_BUSIEST_THREAD,
)

NAME = "service"
_PSI = ("cpu", "memory", "io")


@dataclass(frozen=True)
class Options:
    cgroup: str = field(default="", metadata=option_info(
        doc="the service's cgroup-v2 path, under cgroup_root (system.slice/vllm.service)"))
    unit: str = field(default="", metadata=option_info(
        doc="a systemd unit; its cgroup is found under cgroup_root"))
    process: str = field(default="", metadata=option_info(
        doc="a process name or PID; the service is that process's cgroup"))
    cgroup_root: str = field(default="/sys/fs/cgroup", metadata=option_info(
        doc="where the cgroup-v2 hierarchy is mounted"))
    proc_root: str = field(default="/proc", metadata=option_info(doc="where /proc is"))
    top_processes: int = field(default=5, metadata=option_info(
        min=0, max=50, doc="processes named per pass, by CPU, the service's and the host's"))


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _psi_total(text: str | None) -> float | None:
    """The ``some`` line's ``total`` (microseconds stalled) of a pressure file."""
    for line in (text or "").splitlines():
        if line.startswith("some "):
            for part in line.split():
                if part.startswith("total="):
                    return float(part[6:])
    return None


def _usage_usec(text: str | None) -> float | None:
    for line in (text or "").splitlines():
        if line.startswith("usage_usec "):
            return float(line.split()[1])
    return None


def process_ticks(proc_root: str, pid: int) -> tuple[str, int] | None:
    """(comm, utime + stime in clock ticks) of one process or thread stat file."""
    text = _read(f"{proc_root}/{pid}/stat")
    if text is None or ")" not in text:
        return None
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    try:
        return comm, int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    except (IndexError, ValueError):
        return None


class ServiceProbe:
    name = NAME
    active = False
    interval_seconds: float | None = None
    timeout_seconds = 2.0

    def __init__(self, options: Options | None = None, *, monotonic: Clock = time.monotonic,
                 clock: Clock = time.time) -> None:
        self.options = options or Options()
        self._monotonic = monotonic
        self._clock = clock
        self._hz = float(os.sysconf("SC_CLK_TCK"))
        self._cpus = float(os.cpu_count() or 1)
        self._path: str | None = None
        self._label = (self.options.unit or self.options.cgroup or self.options.process)
        self._before: dict[str, float] = {}
        self._ticks: dict[int, int] = {}
        self._thread_ticks: dict[tuple[int, int], int] = {}
        self._before_at: float | None = None

    # -- which cgroup -----------------------------------------------------------------------

    def _resolve(self) -> str | None:
        o = self.options
        root = o.cgroup_root.rstrip("/")
        if o.cgroup:
            path = f"{root}/{o.cgroup.strip('/')}"
        elif o.unit:
            path = self._find_unit(root, o.unit) or ""
        elif o.process:
            pid = int(o.process) if o.process.isdigit() else self._find_process(o.process)
            text = _read(f"{o.proc_root}/{pid}/cgroup") if pid else None
            lines = [ln for ln in (text or "").splitlines() if ln.startswith("0::")]
            path = f"{root}/{lines[0][3:].strip('/')}" if lines else ""
        else:
            return None
        return path if path and os.path.exists(f"{path}/cgroup.procs") else None

    @staticmethod
    def _find_unit(root: str, unit: str) -> str | None:
        for dirpath, dirnames, _files in os.walk(root):
            if unit in dirnames:
                return f"{dirpath}/{unit}"
            if dirpath.count("/") - root.count("/") >= 4:
                dirnames.clear()  # units sit a few slices deep at most
        return None

    def _find_process(self, name: str) -> int | None:
        for entry in os.listdir(self.options.proc_root):
            if entry.isdigit():
                found = process_ticks(self.options.proc_root, int(entry))
                if found is not None and found[0] == name:
                    return int(entry)
        return None

    # -- protocol ---------------------------------------------------------------------------

    def check(self) -> Availability:
        if not self._label:
            return Availability.no("no service named ([probes.service] cgroup, unit or process)")
        self._path = self._resolve()
        if self._path is None:
            return Availability.no(f"service {self._label}: no cgroup-v2 directory found under "
                                   f"{self.options.cgroup_root}")
        return Availability.yes(f"service {self._label}: cgroup {self._path}")

    def sample(self) -> Sequence[Sample]:
        t = self._clock()
        if self._path is None or not os.path.exists(f"{self._path}/cgroup.procs"):
            self._path = self._resolve() if self._label else None
            if self._path is None:
                return [failed(NAME, f"service {self._label or '?'}: cgroup not found",
                               {"service": self._label}, t=t)]
        now = self._monotonic()
        counters = {"usage": _usage_usec(_read(f"{self._path}/cpu.stat"))}
        for resource in _PSI:
            counters[resource] = _psi_total(_read(f"{self._path}/{resource}.pressure"))
        pids = [int(p) for p in (_read(f"{self._path}/cgroup.procs") or "").split()]
        values: dict[str, float] = {PROCESS_COUNT: float(len(pids))}
        memory = _read(f"{self._path}/memory.current")
        if memory is not None and memory.strip().isdigit():
            values["memory_current_bytes"] = float(memory)
        elapsed = now - self._before_at if self._before_at is not None else None
        top = self._processes(pids, elapsed)
        if elapsed and elapsed > 0:
            usage, before = counters["usage"], self._before.get("usage")
            if usage is not None and before is not None:
                cores = max(0.0, usage - before) / 1e6 / elapsed
                values["cpu_cores"] = cores
                values[HOST_CPU] = min(1.0, cores / self._cpus)
            for resource in _PSI:
                total, before = counters[resource], self._before.get(resource)
                if total is not None and before is not None:
                    values[f"{resource}_pressure_some_ratio"] = min(
                        1.0, max(0.0, total - before) / 1e6 / elapsed)
            busiest = self._busiest_thread(pids, elapsed)
            if busiest is not None:
                values[SERVICE_BUSIEST_THREAD] = busiest
        self._before = {k: v for k, v in counters.items() if v is not None}
        self._before_at = now
        labels = {"service": self._label}
        return [Sample(t=t, probe=NAME, labels=labels, values=values), *[
            Sample(t=t, probe=NAME, labels={**labels, PROCESS_LABEL: str(pid), "process_name": comm,
                                            IN_SERVICE_LABEL: "1" if pid in pids else "0"},
                   values={PROCESS_CPU_CORES: cores}) for pid, comm, cores in top]]

    def close(self) -> None:
        pass

    # -- processes --------------------------------------------------------------------------

    def _processes(self, service_pids: list[int],
                   elapsed: float | None) -> list[tuple[int, str, float]]:
        """The top processes by CPU since the last pass: the service's first, then the host's."""
        if self.options.top_processes <= 0:
            return []
        ticks: dict[int, int] = {}
        used: list[tuple[float, int, str]] = []
        root = self.options.proc_root
        for entry in os.listdir(root):
            if not entry.isdigit():
                continue
            pid = int(entry)
            found = process_ticks(root, pid)
            if found is None:
                continue
            comm, now_ticks = found
            ticks[pid] = now_ticks
            before = self._ticks.get(pid)
            if elapsed and before is not None and now_ticks > before:
                used.append(((now_ticks - before) / self._hz / elapsed, pid, comm))
        self._ticks = ticks
        in_service = set(service_pids)
        mine = sorted((u for u in used if u[1] in in_service),
                      key=lambda u: -u[0])[:self.options.top_processes]
        others = sorted((u for u in used if u[1] not in in_service), key=lambda u: -u[0])
        chosen = mine + others[:self.options.top_processes]
        return [(pid, comm, cores) for cores, pid, comm in chosen if cores >= 0.01]

    def _busiest_thread(self, pids: list[int], elapsed: float) -> float | None:
        """The largest share of one core any thread of the service used since the last pass."""
        ticks: dict[tuple[int, int], int] = {}
        busiest: float | None = None
        for pid in pids[:64]:  # a bound: a service with thousands of processes costs no more
            root = f"{self.options.proc_root}/{pid}/task"
            try:
                tids = os.listdir(root)[:256]
            except OSError:
                continue
            for tid in tids:
                found = process_ticks(root, int(tid))
                if found is None:
                    continue
                ticks[(pid, int(tid))] = found[1]
                before = self._thread_ticks.get((pid, int(tid)))
                if before is not None:
                    share = (found[1] - before) / self._hz / elapsed
                    busiest = max(busiest or 0.0, min(1.0, share))
        self._thread_ticks = ticks
        return busiest


def options_for(name: str) -> dict[str, str]:
    """The probe options that ``diagnose --service NAME`` means: a systemd unit
    (``*.service``, ``*.scope``, ``*.slice``), a cgroup path (contains ``/``), else a
    process name or PID."""
    name = name.strip()
    if "/" in name:
        return {"cgroup": name}
    if name.endswith((".service", ".scope", ".slice")):
        return {"unit": name}
    return {"process": name}


def create(options: Mapping[str, Any]) -> ServiceProbe:
    """Entry point ``ai_bottleneck.probes: service``."""
    return ServiceProbe(parse_options(Options, options))
