"""A run's key numbers, from the classifier's own per-window readings.

Every figure here is an aggregate across a stated set of windows of a value
the classifier already read for each window (ai_bottleneck.reader): nothing
is re-derived from raw samples or from the JSON forms. ``mean`` is the mean
of the per-window values, ``max`` the highest window; counts are sums over
the windows. The reports (terminal, HTML, live page) render these objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ai_bottleneck import gpu_faults, gpu_workloads
from ai_bottleneck.capacity import Saturation
from ai_bottleneck.engine_signals import EngineReading
from ai_bottleneck.path_use import busier, window_uses
from ai_bottleneck.pipeline import WindowResult
from ai_bottleneck.readings import GpuReading, HttpReading, NicReading, Readings


@dataclass
class Agg:
    """One value across windows: mean of the window values and the highest window."""

    values: list[float] = field(default_factory=list)

    def add(self, v: float | None) -> None:
        if v is not None and not math.isnan(v):
            self.values.append(float(v))

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def max(self) -> float | None:
        return max(self.values) if self.values else None

    @property
    def last(self) -> float | None:
        return self.values[-1] if self.values else None

    @property
    def count(self) -> int:
        return len(self.values)

    def __bool__(self) -> bool:
        return bool(self.values)


@dataclass
class GpuFigures:
    id: str
    name: str | None = None
    windows: int = 0
    busy: Agg = field(default_factory=Agg)
    gpm: bool = False                       # SM activity read in some window
    utilization: Agg = field(default_factory=Agg)
    sm_active: Agg = field(default_factory=Agg)
    memory_used_bytes: Agg = field(default_factory=Agg)   # window peaks
    memory_total_bytes: float | None = None
    memory_used_ratio: Agg = field(default_factory=Agg)
    power_watts: Agg = field(default_factory=Agg)
    power_limit_watts: float | None = None
    temperature_celsius: Agg = field(default_factory=Agg)  # window peaks
    # clock-event reason -> windows it held the clocks back in
    throttled: dict[str, int] = field(default_factory=dict)
    oom_events: float = 0.0

    def add(self, g: GpuReading) -> None:
        self.windows += 1
        self.name = g.name or self.name
        self.busy.add(g.busy)
        self.gpm = self.gpm or g.gpm
        self.utilization.add(g.utilization)
        self.sm_active.add(g.sm_active)
        self.memory_used_bytes.add(g.memory_used_bytes)
        self.memory_total_bytes = g.memory_total_bytes or self.memory_total_bytes
        self.memory_used_ratio.add(g.memory_used_ratio)
        self.power_watts.add(g.power_watts)
        self.power_limit_watts = g.power_limit_watts or self.power_limit_watts
        self.temperature_celsius.add(g.temperature_celsius)
        for reason, _share in g.slowdowns:
            self.throttled[reason] = self.throttled.get(reason, 0) + 1
        self.oom_events += g.oom_events

    @property
    def title(self) -> str:
        return f"GPU {self.id}" + (f" ({self.name})" if self.name else "")


@dataclass
class HostFigures:
    windows: int = 0
    cpu: Agg = field(default_factory=Agg)
    busiest_core: Agg = field(default_factory=Agg)
    cpu_pressure: Agg = field(default_factory=Agg)
    io_pressure: Agg = field(default_factory=Agg)
    memory_used_ratio: Agg = field(default_factory=Agg)


@dataclass
class UseAgainst:
    """A NIC's busier-direction use over the windows where it was against one kind of
    capacity (ai_bottleneck.path_use): its ratios and each window's capacity."""

    direction: str
    basis: str
    use: Agg = field(default_factory=Agg)
    capacities: list[float] = field(default_factory=list)

    @property
    def windows(self) -> int:
        return self.use.count


@dataclass
class NicFigures:
    name: str
    windows: int = 0
    rx_bits_per_second: Agg = field(default_factory=Agg)
    tx_bits_per_second: Agg = field(default_factory=Agg)
    link_bits_per_second: float | None = None
    #: Each direction's share of its path's capacity (ai_bottleneck.path_use: the figure
    #: the evidence quotes where the classifier found the path full), and the busier one's.
    rx_use: Agg = field(default_factory=Agg)
    tx_use: Agg = field(default_factory=Agg)
    use: Agg = field(default_factory=Agg)
    #: What the busier direction's use was against: (direction, basis) -> its windows.
    against: dict[tuple[str, str], UseAgainst] = field(default_factory=dict)

    def add(self, n: NicReading, saturations: Iterable[Saturation] = ()) -> None:
        self.windows += 1
        self.rx_bits_per_second.add(n.rx_bits_per_second)
        self.tx_bits_per_second.add(n.tx_bits_per_second)
        self.link_bits_per_second = n.link_bits_per_second or self.link_bits_per_second
        uses = window_uses(n, saturations)
        self.rx_use.add(uses["rx"].ratio if "rx" in uses else None)
        self.tx_use.add(uses["tx"].ratio if "tx" in uses else None)
        top = busier(uses)
        if top is not None:
            self.use.add(top.ratio)
            group = self.against.setdefault((top.direction, top.basis),
                                            UseAgainst(top.direction, top.basis))
            group.use.add(top.ratio)
            if top.capacity_bits_per_second is not None:
                group.capacities.append(top.capacity_bits_per_second)

    def main_against(self) -> UseAgainst | None:
        """The capacity the busier direction was against in the most windows."""
        return max(self.against.values(), key=lambda g: g.windows, default=None)


@dataclass
class TargetFigures:
    """One HTTP target: ``answered`` and ``failed`` add up to the calls made."""

    target: str
    windows: int = 0
    answered: int = 0
    failed: int = 0
    p95_seconds: Agg = field(default_factory=Agg)
    mean_seconds: Agg = field(default_factory=Agg)
    phases: dict[str, Agg] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return self.answered + self.failed

    def add(self, h: HttpReading) -> None:
        self.windows += 1
        self.answered += h.calls
        self.failed += h.failures
        # A call still running at the window's end counts as a lower bound, as in the
        # classifier's evidence (HttpReading.p95_seconds).
        self.p95_seconds.add(h.p95_seconds)
        if h.total is not None:
            self.mean_seconds.add(h.total.mean)
        for p, v in h.phases.items():
            self.phases.setdefault(p, Agg()).add(v)
        for e in h.errors:
            if e not in self.errors and len(self.errors) < 3:
                self.errors.append(e)


@dataclass
class ThroughputFigures:
    probe: str
    target: str
    bits_per_second: Agg = field(default_factory=Agg)


@dataclass
class EngineFigures:
    """One model server (probe engine): its window means and peaks, and the p95
    latencies it reported (each window's worst interval)."""

    engine: str
    target: str
    running: Agg = field(default_factory=Agg)
    waiting: Agg = field(default_factory=Agg)
    kv_usage: Agg = field(default_factory=Agg)       # window peaks
    preemptions: float = 0.0
    queue_p95: Agg = field(default_factory=Agg)
    ttft_p95: Agg = field(default_factory=Agg)
    inter_token_p95: Agg = field(default_factory=Agg)

    def add(self, e: EngineReading) -> None:
        self.running.add(e.running)
        self.waiting.add(e.waiting)
        self.kv_usage.add(e.kv_usage)
        self.preemptions += e.preemptions or 0.0
        self.queue_p95.add(e.queue_p95)
        self.ttft_p95.add(e.ttft_p95)
        self.inter_token_p95.add(e.inter_token_p95)


@dataclass
class RunFigures:
    """Key numbers over ``windows`` windows from ``start`` to ``end``."""

    windows: int
    start: float | None
    end: float | None
    gpus: list[GpuFigures]
    host: HostFigures | None
    nics: list[NicFigures]
    retransmit_ratio: Agg
    targets: list[TargetFigures]
    throughputs: list[ThroughputFigures]
    oom_events: float
    load_failures: float
    unread: int          # windows without typed readings (none from this version)
    engines: list[EngineFigures] = field(default_factory=list)
    #: GPU memory by workload (pod, container, service or process): peak, largest first.
    gpu_workloads: list[tuple[str, float]] = field(default_factory=list)
    #: GPUs whose health was not ok in some window: (gpu, worst state and reason).
    gpu_health: list[tuple[str, str]] = field(default_factory=list)


def run_figures(results: Sequence[WindowResult]) -> RunFigures:
    gpus: dict[str, GpuFigures] = {}
    nics: dict[str, NicFigures] = {}
    targets: dict[str, TargetFigures] = {}
    throughputs: dict[str, ThroughputFigures] = {}
    engines: dict[str, EngineFigures] = {}
    host = HostFigures()
    retransmits = Agg()
    oom = load = 0.0
    unread = 0
    seen_throughput: set[tuple[str, str, float]] = set()
    for r in results:
        rd: Readings | None = r.readings
        if rd is None:
            unread += 1
            continue
        for g in rd.gpus:
            gpus.setdefault(g.id, GpuFigures(g.id)).add(g)
        if rd.host is not None:
            h = rd.host
            host.windows += 1
            host.cpu.add(h.cpu)
            host.busiest_core.add(h.busiest_core)
            host.cpu_pressure.add(h.cpu_pressure)
            host.io_pressure.add(h.io_pressure)
            host.memory_used_ratio.add(h.memory_used_ratio)
        for n in rd.nics:
            nics.setdefault(n.name, NicFigures(n.name)).add(n, r.saturations)
        if rd.tcp is not None:
            retransmits.add(rd.tcp.retransmit_ratio)
        for t in rd.http:
            targets.setdefault(t.target, TargetFigures(t.target)).add(t)
        for tp in rd.throughputs:
            # A measurement is carried into later windows: count each one once.
            key = (tp.probe, tp.target, r.end - tp.age_seconds)
            if key in seen_throughput:
                continue
            seen_throughput.add(key)
            throughputs.setdefault(f"{tp.probe} {tp.target}",
                                   ThroughputFigures(tp.probe, tp.target)
                                   ).bits_per_second.add(tp.bits_per_second)
        for e in rd.engines:
            engines.setdefault(e.target, EngineFigures(e.engine, e.target)).add(e)
        oom += rd.oom_events
        load += rd.load_failures
    return RunFigures(
        windows=len(results), start=results[0].start if results else None,
        end=results[-1].end if results else None,
        gpus=[gpus[k] for k in sorted(gpus, key=_natural)],
        host=host if host.windows else None,
        nics=[nics[k] for k in sorted(nics)], retransmit_ratio=retransmits,
        targets=[targets[k] for k in sorted(targets)],
        throughputs=[throughputs[k] for k in sorted(throughputs)],
        oom_events=oom, load_failures=load, unread=unread,
        gpu_workloads=gpu_workloads.run_peaks([r.summary for r in results]),
        gpu_health=gpu_faults.run_health([r.summary for r in results]),
        engines=[engines[k] for k in sorted(engines)])


def _natural(key: str) -> tuple[int, str]:
    return (int(key), "") if key.isdigit() else (1 << 30, key)


def select(results: Iterable[WindowResult], since: float | None = None,
           until: float | None = None) -> list[WindowResult]:
    """The windows that overlap [since, until)."""
    return [r for r in results
            if (since is None or r.end > since) and (until is None or r.start < until)]
