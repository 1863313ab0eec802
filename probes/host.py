"""Host probe: CPU utilization (overall and busiest core), memory, load and
pressure stall information, from a handful of small /proc files.

It reads /proc directly rather than through psutil's helpers, for two
reasons: ``psutil.cpu_percent`` keeps its "previous reading" in module-wide
state shared by every caller in the process (two callers steal each other's
intervals), and psutil's /proc root is a global rather than something one
probe instance can be given. The figures are the ones psutil computes (the
same busy/idle split, the same memory formula); the tests check them against
psutil on the real machine.

Rates need two readings: the first ``sample()`` primes the state and returns
what a single reading can give (memory, load, PSI from the kernel's 10-second
average); CPU utilization appears from the second on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from ai_bottleneck.probes.base import (
    Availability,
    Clock,
    Sample,
    clean_values,
    failed,
    parse_options,
)
from ai_bottleneck.probes.procfs import (
    PsiLine,
    busy_ratio,
    parse_cpu_ticks,
    parse_load1,
    parse_meminfo,
    parse_psi,
    read_optional,
    read_text,
)
from ai_bottleneck.probes.vocabulary import (
    CPU_MODES,
    HOST_BUSIEST_CORE,
    HOST_CPU,
    HOST_CPU_COUNT,
    HOST_MEMORY_USED,
    cpu_seconds_total,
    pressure_seconds_total,
    pressure_value,
)

T = TypeVar("T")

PROBE_NAME = "host"
PSI_RESOURCES = ("cpu", "io", "memory")
PSI_KINDS = ("some", "full")
# /proc/stat counts in USER_HZ ticks (100 on every Linux architecture in use).
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Options:
    """The host probe has no options: each pass reads six small /proc files."""


@dataclass(frozen=True, slots=True)
class _PsiReading:
    total_microseconds: int
    at: float  # monotonic seconds


class _Unreadable(Exception):
    """A /proc file could not be read or parsed; the message is one line naming it."""


def _parse_memory(text: str) -> dict[str, int]:
    return parse_meminfo(text, ("MemTotal", "MemAvailable"))


def _parsed(path: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(read_text(path))
    except OSError as exc:
        raise _Unreadable(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _Unreadable(f"{path}: {exc}") from None


def create(options: Mapping[str, Any]) -> HostProbe:
    """Entry point ``ai_bottleneck.probes: host``."""
    return HostProbe(parse_options(Options, options))


class HostProbe:
    """Samples of probe ``host`` (no labels); see docs/probes.md for every value."""

    name = PROBE_NAME
    active = False
    interval_seconds: float | None = None
    timeout_seconds = 2.0

    def __init__(self, options: Options | None = None, *, proc_root: str | Path = "/proc",
                 clock: Clock = time.monotonic, wall_clock: Clock = time.time) -> None:
        self.options = options or Options()
        root = str(Path(proc_root))  # plain strings: pathlib costs more than the reads
        self._stat, self._meminfo, self._loadavg = (
            f"{root}/stat", f"{root}/meminfo", f"{root}/loadavg")
        self._pressure_files = {r: f"{root}/pressure/{r}" for r in PSI_RESOURCES}
        self._clock = clock
        self._wall_clock = wall_clock
        self._cpu_before: dict[str, tuple[int, ...]] | None = None
        self._psi_before: dict[tuple[str, str], _PsiReading] = {}
        self._cpu_count: int | None = None

    def check(self) -> Availability:
        try:
            _parsed(self._stat, parse_cpu_ticks)
        except _Unreadable as exc:
            return Availability.no(f"{exc}: no CPU utilization without it")
        missing = [r for r in PSI_RESOURCES
                   if read_optional(self._pressure_files[r]) is None]
        if missing:
            return Availability.yes(
                f"no pressure stall information for {', '.join(missing)} "
                "(kernel without PSI, or booted with psi=0): those values stay absent")
        return Availability.yes("cpu, memory, load and pressure stall information")

    def sample(self) -> Sequence[Sample]:
        t = self._wall_clock()
        values: dict[str, float | None] = {}
        problems: list[str] = []
        # _cpu first: load1_per_cpu divides by the CPU count it finds
        parts: list[Callable[[], dict[str, float | None]]] = [
            self._cpu, self._memory, self._load,
            *(partial(self._pressure, r) for r in PSI_RESOURCES)]
        for part in parts:
            try:
                values.update(part())
            except _Unreadable as exc:
                problems.append(str(exc))
        clean = clean_values(values)
        if not clean and problems:
            return [failed(PROBE_NAME, "; ".join(problems), t=t)]
        return [Sample(t=t, probe=PROBE_NAME, values=clean)]

    def close(self) -> None:
        self._cpu_before = None
        self._psi_before.clear()

    # --- parts: each returns its values or raises _Unreadable -----------------

    def _cpu(self) -> dict[str, float | None]:
        self._cpu_count = None
        try:
            now = _parsed(self._stat, parse_cpu_ticks)
        except _Unreadable:
            self._cpu_before = None
            raise
        before, self._cpu_before = self._cpu_before, now
        cores = [name for name in now if name != "cpu"]
        self._cpu_count = len(cores) or None
        out: dict[str, float | None] = {HOST_CPU_COUNT: self._cpu_count}
        # All CPUs' time per mode, as the kernel counts it (Prometheus rebuilds exact
        # utilization over any range from these; the ratios cover one pass).
        ticks_per_second = _TICKS_PER_SECOND or 100
        for mode, ticks in zip(CPU_MODES, now["cpu"], strict=True):
            out[cpu_seconds_total(mode)] = ticks / ticks_per_second
        if before is None:
            return out
        out[HOST_CPU] = busy_ratio(before["cpu"], now["cpu"])
        # A core that went offline or came online in between has no interval to speak of.
        per_core = [busy_ratio(before[c], now[c]) for c in cores if c in before]
        known = [r for r in per_core if r is not None]
        out[HOST_BUSIEST_CORE] = max(known) if known else None
        return out

    def _memory(self) -> dict[str, float | None]:
        info = _parsed(self._meminfo, _parse_memory)
        total, available = info.get("MemTotal"), info.get("MemAvailable")
        if not total or available is None:  # MemAvailable exists since Linux 3.14
            return {}
        return {HOST_MEMORY_USED: min(1.0, max(0.0, (total - available) / total))}

    def _load(self) -> dict[str, float | None]:
        load1 = _parsed(self._loadavg, parse_load1)
        return {"load1_per_cpu": load1 / self._cpu_count if self._cpu_count else None}

    def _pressure(self, resource: str) -> dict[str, float | None]:
        path = self._pressure_files[resource]
        text = read_optional(path)
        if text is None:  # no PSI in this kernel, or disabled: absent, never zero
            return {}
        at = self._clock()
        try:
            lines = parse_psi(text)
        except ValueError as exc:
            raise _Unreadable(f"{path}: {exc}") from None
        out: dict[str, float | None] = {}
        for kind in PSI_KINDS:
            line = lines.get(kind)
            if line is not None:
                out[pressure_seconds_total(resource, kind)] = line.total_microseconds / 1e6
                out[pressure_value(resource, kind)] = self._stall_ratio(
                    resource, kind, line, at)
        return out

    def _stall_ratio(self, resource: str, kind: str, line: PsiLine, at: float) -> float:
        """Share of wall time stalled since the previous sample, exact from the
        ``total`` counter; the kernel's 10-second average on the first sample or
        when the counter cannot be used (went backwards, no time passed)."""
        key = (resource, kind)
        before = self._psi_before.get(key)
        self._psi_before[key] = _PsiReading(line.total_microseconds, at)
        ratio = line.avg10_percent / 100.0
        if before is not None and at > before.at:
            stalled = line.total_microseconds - before.total_microseconds
            if stalled >= 0:
                ratio = stalled / 1e6 / (at - before.at)
        return min(1.0, max(0.0, ratio))
