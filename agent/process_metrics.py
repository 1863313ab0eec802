"""The agent's own ``process_*`` metrics and the exposition format a scraper asks for.

Every exporter serves the same six ``process_*`` families (the names, help texts and
units prometheus_client's ProcessCollector uses, so dashboards and alerts written
for one work for the other). They are read here from /proc rather than through
prometheus_client: importing that package at all loads its push gateway, WSGI and
ASGI servers, ``urllib.request`` and ``hashlib``, about 2 MB of the agent's resident
memory for six lines of text (tests/test_process_metrics.py compares the two).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

#: The two formats the endpoint writes (docs/endpoint.md).
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_GAUGE, _COUNTER = "gauge", "counter"
# (name, kind, help), in the order the lines are written.
_FAMILIES = (
    ("process_virtual_memory_bytes", _GAUGE, "Virtual memory size in bytes."),
    ("process_resident_memory_bytes", _GAUGE, "Resident memory size in bytes."),
    ("process_start_time_seconds", _GAUGE,
     "Start time of the process since unix epoch in seconds."),
    ("process_cpu_seconds_total", _COUNTER, "Total user and system CPU time spent in seconds."),
    ("process_open_fds", _GAUGE, "Number of open file descriptors."),
    ("process_max_fds", _GAUGE, "Maximum number of open file descriptors."),
)


def wants_openmetrics(accept: str) -> bool:
    """Whether an Accept header asks for OpenMetrics 1.0 (Prometheus does, first).

    A media range of ``application/openmetrics-text`` with no version, or a version
    of 1.0.0 or later, is answered with OpenMetrics 1.0.0, the one version written;
    everything else (text/plain, ``*/*``, nothing) gets text format 0.0.4.
    """
    for item in accept.split(","):
        media, *params = item.split(";")
        if media.strip().lower() != "application/openmetrics-text":
            continue
        version = ""
        for param in params:
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "version":
                version = value.strip()
        if not version or _at_least_one(version):
            return True
    return False


def _at_least_one(version: str) -> bool:
    major = version.split(".", 1)[0]
    return major.isdigit() and int(major) >= 1


class ProcessMetrics:
    """Reads the process_* figures of one process (this one unless told) from /proc.

    Where /proc cannot be read (not Linux, a restricted mount) the families are
    left out, as prometheus_client's collector does, rather than written as zero.
    """

    def __init__(self, proc: str | Path = "/proc", pid: int | str = "self"):
        base = Path(proc) / str(pid)
        # The three files read at each scrape, as strings made once.
        self._stat, self._fd, self._limits = (str(base / name) for name in ("stat", "fd", "limits"))
        self._ticks = float(os.sysconf("SC_CLK_TCK"))
        self._pagesize = os.sysconf("SC_PAGESIZE")
        self._boot = _boot_time(Path(proc) / "stat")

    def values(self) -> dict[str, float]:
        """Each family's value by name; families that cannot be read are missing."""
        out: dict[str, float] = {}
        if self._boot is None:
            return out
        # Each read on its own: what one cannot read leaves only its families out.
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(self._stat, "rb") as f:
                fields = f.read().rsplit(b")", 1)[-1].split()
            out["process_virtual_memory_bytes"] = float(fields[20])
            out["process_resident_memory_bytes"] = float(fields[21]) * self._pagesize
            out["process_start_time_seconds"] = float(fields[19]) / self._ticks + self._boot
            out["process_cpu_seconds_total"] = (float(fields[11]) + float(fields[12])) / self._ticks
        with contextlib.suppress(OSError):
            out["process_open_fds"] = float(len(os.listdir(self._fd)))
        with contextlib.suppress(OSError, IndexError, ValueError):  # "unlimited": no figure
            out["process_max_fds"] = _max_fds(self._limits)
        return out

    def render(self, openmetrics: bool = False) -> str:
        """The families in text format 0.0.4 or OpenMetrics 1.0 (without ``# EOF``)."""
        values = self.values()
        out: list[str] = []
        for name, kind, help_text in _FAMILIES:
            if name not in values:
                continue
            family = name.removesuffix("_total") if openmetrics else name
            out.append(f"# HELP {family} {help_text}\n# TYPE {family} {kind}\n"
                       f"{name} {values[name]!r}\n")
        return "".join(out)


def _boot_time(stat: Path) -> float | None:
    try:
        with stat.open("rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _max_fds(limits: str) -> float:
    with open(limits, "rb") as f:
        text = f.read()
    for line in text.splitlines():
        if line.startswith(b"Max open files"):
            return float(line.split()[3])
    raise ValueError("no open-files limit")
