"""Service probe: the CPU, pressure and memory of the service under diagnosis, from its
cgroup (v2), and which processes use the CPU.

The host probe's figures are the whole host's: on a shared host they blame the
service for other work. This probe reads the service's own cgroup-v2 files
(``cpu.stat``, ``cpu.pressure``, ``memory.pressure``, ``io.pressure``,
``memory.current``) so the rules can judge the service (agent/service_cpu.py),
and each pass names the processes using the most CPU, the service's and the
host's, from ``/proc/<pid>/stat`` deltas. The service is a cgroup path, a systemd
unit or a container ID (found in the cgroup tree), or a PID or process name (its
cgroup). With none named, the service is the processes holding GPU memory: the agent
hands the probe the PIDs the gpu probe saw (``follow``), and the probe measures their
cgroups, those of their own (probes/service_cgroups.py: not the root, not the agent's);
the service label names the cgroups chosen, so a recording replays the same.

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
from ai_bottleneck.probes.service_cgroups import (
    describe,
    find_container,
    find_unit,
    hierarchy,
    own_cgroups,
    process_cgroup,
)
from ai_bottleneck.probes.vocabulary import (
    HOST_CPU,
    IN_SERVICE_LABEL,
    OTHER_PROCESSES,
    PROCESS_COUNT,
    PROCESS_CPU_CORES,
    PROCESS_LABEL,
    SERVICE_BUSIEST_THREAD,
)

NAME = "service"
_PSI = ("cpu", "memory", "io")
#: The options that name the service; at most one of them is given.
NAMING_KEYS = ("unit", "cgroup", "container", "process")
#: The service label while the service is the GPU processes' cgroups.
GPU_PROCESSES = "GPU processes"
_MAX_PIDS = 4096  # processes read per pass: a service of thousands costs no more
_MAX_CGROUPS = 256  # cgroups below the service's read per pass, for the same reason


@dataclass(frozen=True)
class Options:
    cgroup: str = field(default="", metadata=option_info(
        doc="the service's cgroup-v2 path, under cgroup_root (system.slice/vllm.service)"))
    unit: str = field(default="", metadata=option_info(
        doc="a systemd unit; its cgroup is found under cgroup_root"))
    container: str = field(default="", metadata=option_info(
        doc="a container ID (12 to 64 hex digits); its cgroup is found under cgroup_root"))
    process: str = field(default="", metadata=option_info(
        doc="a process name or PID; the service is that process's cgroup"))
    gpu_processes: bool = field(default=True, metadata=option_info(
        doc="with no service named, the service is the processes holding GPU memory (their "
            "cgroups of their own); false: no service, judged host-wide"))
    cgroup_root: str = field(default="/sys/fs/cgroup", metadata=option_info(
        doc="where the cgroup-v2 hierarchy is mounted (or its hybrid-layout parent, with "
            "the v2 tree in unified/)"))
    proc_root: str = field(default="/proc", metadata=option_info(doc="where /proc is"))
    top_processes: int = field(default=5, metadata=option_info(
        min=0, max=50, doc="processes named per pass, by CPU, the service's and the host's"))

    def __post_init__(self) -> None:
        named = [k for k in NAMING_KEYS if getattr(self, k)]
        if len(named) > 1:
            raise ValueError(f"name the service one way: {' and '.join(named)} are both set")
        if self.container and not (12 <= len(self.container) <= 64 and all(
                c in "0123456789abcdefABCDEF" for c in self.container)):
            raise ValueError(f"container: {self.container!r} is not a container ID "
                             "(12 to 64 hex digits)")


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


def _counters(path: str) -> dict[str, float | None]:
    """A cgroup's CPU time and pressure stall totals (microseconds)."""
    out = {"usage": _usage_usec(_read(f"{path}/cpu.stat"))}
    for resource in _PSI:
        out[resource] = _psi_total(_read(f"{path}/{resource}.pressure"))
    return out


def _procs(paths: Sequence[str]) -> list[int]:
    """The processes of the cgroups and of the cgroups below them (a unit's or a pod's
    processes may sit in child cgroups), at most _MAX_PIDS from _MAX_CGROUPS cgroups."""
    pids: list[int] = []
    todo = list(paths)
    visited = 0
    while todo and len(pids) < _MAX_PIDS and visited < _MAX_CGROUPS:
        path = todo.pop()
        visited += 1
        pids += [int(p) for p in (_read(f"{path}/cgroup.procs") or "").split() if p.isdigit()]
        try:
            todo += [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
    return sorted(set(pids))[:_MAX_PIDS]


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
        self._paths: list[str] | None = None
        o = self.options
        self._label = o.unit or o.cgroup or o.container or o.process
        self._root = hierarchy(o.cgroup_root) or o.cgroup_root.rstrip("/")
        # The agent's own cgroup, as this process sees it (never judged as the service).
        self._agent_cgroup = process_cgroup("/proc", "self") or "/"
        self._gpu_pids: frozenset[int] = frozenset()
        self._before: dict[str, dict[str, float]] = {}
        self._ticks: dict[int, int] = {}
        self._thread_ticks: dict[tuple[int, int], int] = {}
        self._before_at: float | None = None

    # -- which cgroup -----------------------------------------------------------------------

    def _resolve(self) -> str | None:
        o = self.options
        root = self._root
        if o.cgroup:
            path = f"{root}/{o.cgroup.strip('/')}"
        elif o.unit:
            path = find_unit(root, o.unit) or ""
        elif o.container:
            path = find_container(root, o.container) or ""
        elif o.process:
            pid = int(o.process) if o.process.isdigit() else self._find_process(o.process)
            found = process_cgroup(o.proc_root, pid) if pid else None
            path = f"{root}{found}".rstrip("/") if found else ""
        else:
            return None
        return path if path and os.path.exists(f"{path}/cgroup.procs") else None

    def _current(self) -> tuple[list[str] | None, str]:
        """The cgroups measured this pass and the service label: the named service's
        (None when it is not found), else the GPU processes' own ([] when none)."""
        if self._label:
            if self._paths is None or not os.path.exists(f"{self._paths[0]}/cgroup.procs"):
                path = self._resolve()
                self._paths = [path] if path is not None else None
            return self._paths, self._label
        found = own_cgroups(self.options.proc_root, self._gpu_pids, self._agent_cgroup)
        return [f"{self._root}{p}" for p in found], f"{GPU_PROCESSES} ({describe(found)})"

    @property
    def follows(self) -> str | None:
        """The probe whose samples this one needs: the gpu probe's, when no service is
        named (its process samples say which PIDs hold GPU memory)."""
        return None if self._label else "gpu"

    def follow(self, samples: Sequence[Sample]) -> None:
        """The agent's hand-over after every round: the PIDs holding GPU memory, from the
        gpu probe's process samples (a round without gpu samples changes nothing)."""
        gpu = [s for s in samples if s.probe == "gpu" and s.ok]
        if gpu:
            self._gpu_pids = frozenset(
                int(pid) for s in gpu if (pid := s.labels.get(PROCESS_LABEL, OTHER_PROCESSES))
                != OTHER_PROCESSES and pid.isdigit())

    def _find_process(self, name: str) -> int | None:
        for entry in os.listdir(self.options.proc_root):
            if entry.isdigit():
                found = process_ticks(self.options.proc_root, int(entry))
                if found is not None and found[0] == name:
                    return int(entry)
        return None

    # -- protocol ---------------------------------------------------------------------------

    def check(self) -> Availability:
        if self._label:
            path = self._resolve()
            self._paths = [path] if path is not None else None
            if path is None:
                return Availability.no(f"service {self._label}: no cgroup-v2 directory found "
                                       f"under {self.options.cgroup_root}")
            return Availability.yes(f"service {self._label}: cgroup {path}")
        unnamed = "no service named ([service] unit, cgroup, container or process)"
        if not self.options.gpu_processes:
            return Availability.no(unnamed)
        if not os.path.exists(f"{self._root}/cgroup.procs"):
            return Availability.no(f"{unnamed}, and no cgroup-v2 hierarchy at "
                                   f"{self.options.cgroup_root} to find the GPU processes in")
        return Availability.yes(f"{unnamed}: the service is the processes holding GPU memory, "
                                "where they run in cgroups of their own")

    def sample(self) -> Sequence[Sample]:
        t = self._clock()
        paths, label = self._current()
        if paths is None:
            return [failed(NAME, f"service {label}: cgroup not found", {"service": label}, t=t)]
        if not paths:
            # No GPU process in a cgroup of its own: nothing to judge apart from the host.
            self._before, self._before_at = {}, None
            return []
        now = self._monotonic()
        counters = {path: _counters(path) for path in paths}
        pids = _procs(paths)
        values: dict[str, float] = {PROCESS_COUNT: float(len(pids))}
        memory = [_read(f"{path}/memory.current") for path in paths]
        if all(m is not None and m.strip().isdigit() for m in memory):
            values["memory_current_bytes"] = float(sum(int(m or 0) for m in memory))
        same = set(self._before) == set(paths)
        elapsed = now - self._before_at if self._before_at is not None and same else None
        top = self._processes(pids, now - self._before_at if self._before_at else None)
        if elapsed and elapsed > 0:
            used = [(c["usage"], self._before[p].get("usage")) for p, c in counters.items()]
            if all(u is not None and b is not None for u, b in used):
                cores = sum(max(0.0, (u or 0.0) - (b or 0.0)) for u, b in used) / 1e6 / elapsed
                values["cpu_cores"] = cores
                values[HOST_CPU] = min(1.0, cores / self._cpus)
            for resource in _PSI:
                # Stall shares of several cgroups do not add up: the worst one speaks.
                stalls = [max(0.0, total - before) for p, c in counters.items()
                          if (total := c[resource]) is not None
                          and (before := self._before[p].get(resource)) is not None]
                if stalls:
                    values[f"{resource}_pressure_some_ratio"] = min(
                        1.0, max(stalls) / 1e6 / elapsed)
            busiest = self._busiest_thread(pids, elapsed)
            if busiest is not None:
                values[SERVICE_BUSIEST_THREAD] = busiest
        self._before = {p: {k: v for k, v in c.items() if v is not None}
                        for p, c in counters.items()}
        self._before_at = now
        labels = {"service": label}
        mine = set(pids)
        return [Sample(t=t, probe=NAME, labels=labels, values=values), *[
            Sample(t=t, probe=NAME, labels={**labels, PROCESS_LABEL: str(pid), "process_name": comm,
                                            IN_SERVICE_LABEL: "1" if pid in mine else "0"},
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
    """The probe options that ``--service NAME`` means: a systemd unit (``*.service``,
    ``*.scope``, ``*.slice``), a cgroup path (contains ``/``), a container ID (12 to 64
    hex digits; a PID has at most 7 digits), else a process name or PID."""
    name = name.strip()
    if "/" in name:
        return {"cgroup": name}
    if name.endswith((".service", ".scope", ".slice")):
        return {"unit": name}
    if 12 <= len(name) <= 64 and all(c in "0123456789abcdefABCDEF" for c in name):
        return {"container": name}
    return {"process": name}


def create(options: Mapping[str, Any]) -> ServiceProbe:
    """Entry point ``ai_bottleneck.probes: service``."""
    return ServiceProbe(parse_options(Options, options))
