"""Who uses the host's CPU while a lab scenario plays.

The lab's idle and balanced phases expect a host that only the lab loads, and a real CPU
load is the cpu_bound phase's whole point, so other work on a shared machine (a 2-core CI
runner, a developer's laptop) changes what the agent must answer. The runner waits for a
quiet host before a scenario and accounts, per phase, for the CPU the agent, the service
and the load generator used and for ``other``, everything else; a run in which other work
took a tenth of the host is *disturbed*.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping

import psutil

#: How long the runner waits for the host to calm down before a scenario, and what "calm"
#: is (host CPU over one second). Other work on a shared machine loads the CPU that the idle
#: and balanced phases expect quiet; the wait makes a run start from a quiet host when one
#: can be had, and the measured background is reported beside the score either way.
QUIET_WAIT_SECONDS = 20.0
QUIET_CPU_RATIO = 0.15
#: Other work's share of the host CPU (beyond the agent, the service and the load) from
#: which a run counts as disturbed: the idle rule allows 20% host CPU in all, and one busy
#: core on a 2-core host reads as a saturated core.
DISTURBED_OTHER_CPU = 0.10


def wait_for_quiet_host(max_wait: float = QUIET_WAIT_SECONDS,
                        quiet: float = QUIET_CPU_RATIO) -> float:
    """Wait (bounded) until host CPU over one second is under ``quiet``; return the last
    reading."""
    deadline = time.monotonic() + max_wait
    busy = psutil.cpu_percent(interval=1.0) / 100
    while busy >= quiet and time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=1.0) / 100
    return busy


class CpuMeter:
    """Who used the host's CPU: the agent, the service (with its pool workers), this process
    (the load generator) and everything else, so a phase that reads busier than the lab
    made it can be explained."""

    def __init__(self, processes: Mapping[str, int]) -> None:
        """``processes``: name -> pid, each counted with its children, except this process
        (whose children are the service and the agent), counted alone."""
        self._processes = {name: psutil.Process(pid) for name, pid in processes.items()}
        self._cpus = psutil.cpu_count() or 1
        self._last = self._read()

    def _read(self) -> tuple[float, dict[str, float]]:
        host = psutil.cpu_times()
        used = {"host": sum(host) - host.idle - getattr(host, "iowait", 0.0)}
        for name, process in self._processes.items():
            try:
                t = process.cpu_times()
                seconds = t.user + t.system
                if process.pid != os.getpid():
                    seconds += t.children_user + t.children_system
                    for child in process.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            c = child.cpu_times()
                            seconds += c.user + c.system
            except psutil.Error:
                seconds = 0.0
            used[name] = seconds
        return time.monotonic(), used

    def shares(self) -> dict[str, float]:
        """Each user's share of the host's CPU since the previous call (1.0: all cores)."""
        (t0, before), (t1, after) = self._last, self._read()
        self._last = (t1, after)
        capacity = max(t1 - t0, 1e-6) * self._cpus
        out = {name: round(max(after[name] - before.get(name, 0.0), 0.0) / capacity, 3)
               for name in after}
        out["other"] = round(max(out["host"] - sum(v for k, v in out.items() if k != "host"),
                                 0.0), 3)
        return out
