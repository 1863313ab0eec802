"""Where the lab's service runs, for the scenarios of a shared host: real cgroups (v2,
under a slice the lab makes), the service and its workers moved into one, other work
burning the host's CPU from another, and a CPU limit (``cpu.max``, or the v1 cpu
controller's quota on hybrid hosts) that starves the service.

The agent is told nothing: with no service named it takes the cgroups of the processes
holding GPU memory, and the simulated GPU names the service's PID as that process.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.cgroups import cgroup2_root, made_slice

#: One core's worth of unrelated work: a CPU loop bounded in time, at the lowest priority
#: (a batch job's), so it takes every cycle nothing else wants: the host reads saturated,
#: and the service's own CPU steps (the simulated GPU's timing runs on the CPU too) are
#: not slowed by it, as a real GPU's kernels would not be.
_BURN = ("import os, time\nos.nice(19)\nend = time.time() + {seconds}\n"
         "while time.time() < end: pass\n")


@dataclass(frozen=True)
class Placement:
    """A scenario's cgroups: the service capped at ``service_cores`` CPUs (None: no cap),
    and ``other_burners`` processes of other work, one core each, in a cgroup of their
    own (0 < n: that many; -1: one per CPU of the host)."""

    service_cores: float | None = None
    other_burners: int = 0

    def burners(self) -> int:
        return (psutil.cpu_count() or 1) if self.other_burners < 0 else self.other_burners


@dataclass
class Placed:
    """What the runner needs: the v2 hierarchy the agent reads, the processes of other
    work (name -> pid, for the lab's CPU account), and how the cap was set."""

    cgroup_root: Path | None = None
    processes: dict[str, int] = field(default_factory=dict)
    service_cgroup: str = ""
    cap: str = ""


@contextlib.contextmanager
def placed(placement: Placement | None, service_pid: int,
           seconds: float) -> Iterator[Placed]:
    """Put the service (``service_pid`` and its descendants) in ``<slice>/service``, start
    the burners in ``<slice>/other`` (they end by themselves after ``seconds``), cap the
    service. Everything is undone on exit, also on failure."""
    if placement is None:
        yield Placed()
        return
    burners: list[subprocess.Popen[bytes]] = []
    with cgroup2_root() as root, made_slice(root, prefix="aiblab") as made:
        try:
            service = psutil.Process(service_pid)
            made.move("service", [service_pid, *(c.pid for c in service.children(
                recursive=True))])
            result = Placed(root, service_cgroup=made.path_of("service"))
            if placement.service_cores is not None:
                result.cap = made.limit_cpu("service", placement.service_cores)
            for i in range(placement.burners()):
                p = subprocess.Popen([sys.executable, "-c", _BURN.format(seconds=seconds)],
                                     stdin=subprocess.DEVNULL)
                burners.append(p)
                made.move("other", [p.pid])
                result.processes[f"other_work_{i}"] = p.pid
            yield result
        finally:
            for p in burners:
                p.kill()
                p.wait(timeout=10)
