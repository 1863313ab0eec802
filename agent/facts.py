"""What the classifier's rules ask of a window, derived once from its readings.

Pure: no I/O, no clock. See docs/classifier.md.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ai_bottleneck.capacity import Measured, Saturation, saturations
from ai_bottleneck.findings import Signal, above, below
from ai_bottleneck.path_use import PathUse, busier, window_uses
from ai_bottleneck.probes.vocabulary import DOWNLOAD_SECONDS, SERVER_SECONDS, UPLOAD_SECONDS
from ai_bottleneck.readings import GpuReading, HttpReading, Readings, ThroughputReading
from ai_bottleneck.thresholds import Thresholds
from ai_bottleneck.windows import ProbeState
from ai_bottleneck.words import bits, pct, secs, size

#: Bytes on the wire per payload byte over TCP/IP: headers take about 4% at a 1500-byte MTU
#: (52 of 1500 bytes) and the ACKs coming back about 2% more; rounded up.
WIRE_OVERHEAD_RATIO = 1.1


class Facts:
    """What the rules ask of a window, derived once from its readings."""

    def __init__(self, r: Readings, th: Thresholds) -> None:
        self.readings = r
        self.thresholds = th
        self.gpus = r.gpus
        gpu_state = r.probe("gpu").state
        #: No GPU data because this host has no usable GPU (a CPU-only host).
        self.no_gpu = not self.gpus and gpu_state in (ProbeState.UNAVAILABLE, ProbeState.ABSENT)
        #: GPU state unknowable in this window (probe failing or missing on a GPU host).
        self.gpu_blind = not self.gpus and not self.no_gpu
        busy = [g for g in self.gpus if g.busy is not None]
        self.top_gpu: GpuReading | None = max(busy, key=lambda g: g.busy or 0.0) if busy else None
        self.gpu_busy = self.top_gpu.busy if self.top_gpu else None
        activity = [a for g in self.gpus if (a := g.activity) is not None]
        self.gpu_activity = max(activity) if activity else None
        self.coarse_only = bool(self.gpus) and not any(g.gpm for g in self.gpus)
        g = self.top_gpu
        busy_threshold = (th.gpm_busy_ratio if g is not None and g.gpm
                          else th.gpu_busy_utilization_ratio)
        self.gpu_busy_threshold = busy_threshold
        self.gpu_saturated = self.gpu_busy is not None and self.gpu_busy >= busy_threshold
        #: True: GPU under-used or no GPU at all; None: cannot tell.
        self.gpu_under: bool | None = (
            True if self.no_gpu else
            None if self.gpu_busy is None else self.gpu_busy < th.gpu_low_utilization_ratio)
        self.host = r.host
        self.nics = [n for n in r.nics if not n.loopback]
        self.retransmit_ratio = r.tcp.retransmit_ratio if r.tcp else None
        self.working_http = [h for h in r.http
                             if h.calls > 0 or h.overload_answers or h.in_flight_seconds]
        self.down_http = [h for h in r.http if h.calls == 0 and h.failures > 0
                          and h.overload_answers * 2 < h.failures]
        self.worst = max(self.working_http, key=self._badness, default=None)
        self.slow = self.worst is not None and self._badness(self.worst) > 1.0
        self.latency_ok = self.worst is not None and not self.slow
        w = self.worst
        self.net_share = w.network_share if w is not None else None
        self.server_share = w.server_share if w is not None else None
        self.net_dominant = (self.net_share is not None
                             and self.net_share >= th.network_phase_dominant_ratio)
        self.server_dominant = (self.server_share is not None
                                and self.server_share >= th.server_phase_dominant_ratio)
        self.own_busy_share, self.own_bits_per_second = self._own_load()
        #: NIC directions full against the tightest capacity known (see ai_bottleneck.capacity).
        self.saturated_nics: list[Saturation] = saturations(
            self.nics, saturation_ratio=th.nic_saturation_ratio,
            plateau_min_samples=th.plateau_min_samples,
            idle_bits_per_second=th.nic_idle_bits_per_second,
            plateau_flat_ratio=th.plateau_flat_ratio, congestion=self.congestion(),
            measured=self._measured())

    def congestion(self) -> str | None:
        """A sign that the network path is congested, in words, or None."""
        rt = self.retransmit_ratio
        if rt is not None and rt > self.thresholds.retransmit_high_ratio:
            return f"TCP retransmits were {pct(rt, 1)}"
        if self.slow and self.net_dominant and self.net_share is not None:
            return f"requests spent {pct(self.net_share)} of their time on the network"
        return None

    def _measured(self) -> list[Measured]:
        """Recent throughput tests, newest first, as capacity candidates."""
        recent = sorted((t for t in self.readings.throughputs
                         if t.age_seconds <= self.thresholds.active_measurement_max_age_seconds),
                        key=lambda t: t.age_seconds)
        return [Measured(t.direction, t.bits_per_second,
                         f"{t.probe} {t.target} ({secs(t.age_seconds)} before the window end)",
                         t.probe) for t in recent]

    def _own_load(self) -> tuple[float, float]:
        """What the agent's own timed HTTP calls add to the readings: the share of the
        window the service spent on them at least (answered calls x the fastest call's
        server time, parallel calls overlapping), and the bits they moved with TCP/IP's
        overhead. A call to an inference endpoint runs the model, so an idle GPU serving
        only these calls shows their share as activity; they are not the service's load."""
        seconds = self.readings.window_seconds
        if not seconds:
            return 0.0, 0.0
        busy = bits = 0.0
        for h in self.readings.http:
            if h.calls and h.server_min_seconds is not None:
                busy += h.calls * h.server_min_seconds / max(1.0, h.concurrency or 1.0)
            if h.bytes_moved:
                bits += h.bytes_moved * 8 * WIRE_OVERHEAD_RATIO
        return min(1.0, busy / seconds), bits / seconds

    def _badness(self, h: HttpReading) -> float:
        """p95 over the objective (> 1 misses it); failures past the limit miss it too."""
        th = self.thresholds
        p95 = h.p95_seconds
        ratio = p95 / th.latency_objective_seconds if p95 is not None else 0.0
        if h.failures and h.failure_ratio >= th.http_failure_high_ratio:
            ratio = max(ratio, 1.0 + h.failure_ratio)
        return ratio

    # -- signals the rules share -------------------------------------------------

    def slow_signals(self) -> list[Signal]:
        w = self.worst
        if w is None or not self.slow:
            return []
        th = self.thresholds
        out = []
        p95 = w.p95_seconds
        if w.in_flight_worst and p95 is not None and p95 > th.latency_objective_seconds:
            out.append(Signal(above(p95 / th.latency_objective_seconds, 1.0, 2.0),
                              f"{w.target}: a call still running after {secs(p95)} at the "
                              f"window's end > objective {secs(th.latency_objective_seconds)}"
                              f" ({w.calls} finished)"))
        elif p95 is not None and p95 > th.latency_objective_seconds:
            out.append(Signal(above(p95 / th.latency_objective_seconds, 1.0, 2.0),
                              f"{w.target}: p95 request {secs(p95)} > objective "
                              f"{secs(th.latency_objective_seconds)} ({w.calls} calls)"))
        if w.failures and w.failure_ratio >= th.http_failure_high_ratio:
            how = (f"{w.overload_answers} answered 'too busy' (429/503/504)"
                   if w.overload_answers else (w.errors[0] if w.errors else "failed"))
            out.append(Signal(above(w.failure_ratio, th.http_failure_high_ratio),
                              f"{w.target}: {w.failures} of {w.calls + w.failures} calls "
                              f"failed ({how})"))
        return out

    def phase_text(self, h: HttpReading) -> str:
        if h.in_flight_worst and h.in_flight_seconds:
            net, server = h.in_flight_network_seconds, h.in_flight_server_seconds
            return (f"running for {secs(h.in_flight_seconds)} so far: network "
                    f"{secs(net or 0.0)}, server {secs(server or 0.0)}")
        if h.total is None:
            return ""
        parts = ", ".join(f"{k.removesuffix('_seconds')} {secs(v)}"
                          for k, v in sorted(h.phases.items(), key=lambda kv: -kv[1])
                          if v >= 0.05 * h.total.mean)
        return f"on average {secs(h.total.mean)} per request: {parts}" if parts else ""

    def gpu_text(self, g: GpuReading) -> str:
        assert g.busy is not None
        text = f"{g.title} {g.busy_signal} {pct(g.busy)}"
        if g.gpm and g.dram_active is not None and g.dram_active > (g.sm_active or 0.0):
            text = f"{g.title} memory-bandwidth activity {pct(g.busy)} (DRAM, GPM)"
        return text

    def gpu_under_signal(self) -> Signal | None:
        g = self.top_gpu
        if g is None or g.busy is None or not self.gpu_under:
            return None
        th = self.thresholds.gpu_low_utilization_ratio
        every = " on every GPU" if len(self.gpus) > 1 else ""
        return Signal(below(g.busy, th), f"{self.gpu_text(g)} (< {pct(th)}){every}")

    def network_signals(self, *, phases: bool) -> list[Signal]:
        """Positive network evidence: phases, a full NIC, retransmits, slow measurements."""
        th = self.thresholds
        out: list[Signal] = []
        w = self.worst
        if phases and w is not None and self.net_dominant and self.net_share is not None:
            out.append(Signal(above(self.net_share, th.network_phase_dominant_ratio),
                              f"{w.target}: network is {pct(self.net_share)} of request time "
                              f"({self.phase_text(w)})"))
        for sat in self.saturated_nics:
            out.append(Signal(above(min(sat.utilization, 1.0), th.nic_saturation_ratio),
                              f"{sat.nic} {sat.direction} at {pct(min(sat.utilization, 1.0))} "
                              f"of {bits(sat.capacity_bits_per_second)} ({sat.source})"))
        rt = self.retransmit_ratio
        if rt is not None and rt > th.retransmit_high_ratio:
            out.append(Signal(above(rt, th.retransmit_high_ratio, 5 * th.retransmit_high_ratio),
                              f"TCP retransmits {pct(rt, 1)} of sent segments "
                              f"(> {pct(th.retransmit_high_ratio)})"))
        for t, need, why in self.shortfalls():
            out.append(Signal(below(t.bits_per_second, need),
                              f"{t.probe} {t.target}: {bits(t.bits_per_second)}, under "
                              f"{pct(th.bandwidth_shortfall_ratio)} of {bits(need)} ({why}), "
                              f"measured {secs(t.age_seconds)} before the window end"))
        return out

    def shortfalls(self) -> list[tuple[ThroughputReading, float, str]]:
        """Recent throughput measurements far under what the service needs."""
        th = self.thresholds
        out = []
        needed = needed_bits_per_second(self.worst, th) if self.slow else None
        for t in self.readings.throughputs:
            if t.age_seconds > th.active_measurement_max_age_seconds:
                continue
            need, why = ((th.internal_bandwidth_min_bits_per_second, "internal minimum")
                         if t.internal else
                         (th.public_bandwidth_min_bits_per_second, "public minimum"))
            if needed is not None and needed[0] > need:
                need, why = needed[0], "what the requests need"
            if t.bits_per_second < th.bandwidth_shortfall_ratio * need:
                out.append((t, need, why))
        return out

    def cpu_signals(self) -> list[Signal]:
        h = self.host
        th = self.thresholds
        if h is None:
            return []
        out = []
        if h.cpu_pressure is not None and h.cpu_pressure >= th.cpu_pressure_high_ratio:
            out.append(Signal(above(h.cpu_pressure, th.cpu_pressure_high_ratio),
                              f"CPU pressure: tasks waited for a CPU {pct(h.cpu_pressure)} of "
                              f"the time (PSI some, >= {pct(th.cpu_pressure_high_ratio)})"))
        if h.cpu is not None and h.cpu >= th.cpu_saturated_ratio:
            out.append(Signal(above(h.cpu, th.cpu_saturated_ratio),
                              f"CPU {pct(h.cpu)} busy (>= {pct(th.cpu_saturated_ratio)})"))
        if h.busiest_core is not None and h.busiest_core >= th.cpu_saturated_ratio:
            out.append(Signal(above(h.busiest_core, th.cpu_saturated_ratio),
                              f"busiest core {pct(h.busiest_core)} busy "
                              f"(>= {pct(th.cpu_saturated_ratio)})"))
        return out

    @property
    def gpu_activity_beyond_own(self) -> float | None:
        """GPU activity less what the agent's own calls can explain."""
        if self.gpu_activity is None:
            return None
        return max(0.0, self.gpu_activity - self.own_busy_share)

    @property
    def nic_traffic_beyond_own(self) -> float | None:
        """The busiest NIC's traffic (rx + tx) less the agent's own calls' bytes."""
        traffic = max((n.traffic_bits_per_second for n in self.nics), default=None)
        if traffic is None:
            return None
        return max(0.0, traffic - self.own_bits_per_second)

    def load_present(self) -> bool:
        """Whether anything but the agent itself loads the host: the agent's own timed
        calls are not load (see _own_load)."""
        th = self.thresholds
        gpu = self.gpu_activity_beyond_own
        if gpu is not None and gpu >= th.gpu_idle_ratio:
            return True
        cpu = self.host.cpu if self.host is not None else None
        if cpu is not None and cpu >= th.cpu_idle_ratio:
            return True
        traffic = self.nic_traffic_beyond_own
        return traffic is not None and traffic >= th.nic_idle_bits_per_second

    def own_load_text(self) -> str | None:
        """The agent's own calls in words, when they show in the readings."""
        if self.own_busy_share <= 0 and self.own_bits_per_second <= 0:
            return None
        return (f"the agent's own timed calls account for up to {pct(self.own_busy_share)} of "
                f"the service's time and {bits(self.own_bits_per_second)} of traffic "
                "(not counted as load)")

    def context(self) -> list[str]:
        """One line per resource, for labels that explain what was ruled out."""
        out = []
        if self.top_gpu is not None and self.top_gpu.busy is not None:
            out.append(self.gpu_text(self.top_gpu))
        h = self.host
        if h is not None and h.cpu is not None:
            extra = f", busiest core {pct(h.busiest_core)}" if h.busiest_core is not None else ""
            out.append(f"CPU {pct(h.cpu)}{extra}")
        busiest = self.busiest_link()
        if busiest is not None:
            name, use = busiest
            out.append(f"{name} {use.direction} at {pct(use.ratio)} of {use.of_text()}")
        return out

    def busiest_link(self) -> tuple[str, PathUse] | None:
        """The NIC direction nearest what its path carries: against the capacity of a
        saturation found above (a plateau, a test), else the tightest rate known; the
        reports show the same figure (ai_bottleneck.path_use)."""
        found = [(n.name, u) for n in self.nics
                 if (u := busier(window_uses(n, self.saturated_nics))) is not None]
        return max(found, key=lambda p: p[1].ratio, default=None)

    def thin_pipe(self) -> str | None:
        """The thin link in front of the GPU, in words, when one was measured: payloads
        moving under the article's public minimum, a throughput test far under need, or
        a full NIC slower than the internal minimum."""
        th = self.thresholds
        rate = observed_transfer_rate(self.worst) if self.slow else None
        if rate is not None and rate < th.public_bandwidth_min_bits_per_second:
            return f"a link moving {bits(rate)}"
        for t, _, _ in self.shortfalls():
            return f"{t.probe} {t.target} at {bits(t.bits_per_second)}"
        for sat in self.saturated_nics:
            if sat.capacity_bits_per_second < th.internal_bandwidth_min_bits_per_second:
                return f"a full {bits(sat.capacity_bits_per_second)} path on {sat.nic}"
        return None


def memory_text(g: GpuReading) -> str:
    assert g.memory_used_ratio is not None
    return _memory_text(g.title, g.memory_used_ratio, g.memory_used_bytes or 0,
                        g.memory_total_bytes or 0)


@functools.lru_cache(maxsize=256)
def _memory_text(title: str, ratio: float, used: float, total: float) -> str:
    # Kept: a GPU's memory often stays the same for hours (servers reserve it up front),
    # and every window's warnings or evidence say it for every GPU.
    return f"{title} memory {pct(ratio)} used ({size(used)} of {size(total)})"


# -- bandwidth arithmetic ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Need:
    """The bandwidth that brings a request's transfer under the latency objective."""

    direction: str          # "upload" or "download"
    payload_bytes: float
    budget_seconds: float   # objective minus the server's time
    concurrency: int
    per_call_bits_per_second: float

    @property
    def total_bits_per_second(self) -> float:
        return self.per_call_bits_per_second * self.concurrency


def transfer(h: HttpReading | None) -> tuple[str, float, float] | None:
    """(direction, payload bytes, mean seconds) of the larger transfer phase."""
    if h is None:
        return None
    up = h.phases.get(UPLOAD_SECONDS)
    down = h.phases.get(DOWNLOAD_SECONDS)
    if up is not None and h.request_bytes and (down is None or up >= down):
        return "upload", h.request_bytes, up
    if down is not None and h.response_bytes:
        return "download", h.response_bytes, down
    return None


def need(h: HttpReading | None, th: Thresholds) -> Need | None:
    moved = transfer(h)
    if moved is None or h is None:
        return None
    direction, payload, _ = moved
    objective = th.latency_objective_seconds
    budget = objective - h.phases.get(SERVER_SECONDS, 0.0)
    if budget < 0.1 * objective:
        budget = objective  # the server alone uses the objective up; say what the link needs
    concurrency = max(1, round(h.concurrency or 1))
    return Need(direction, payload, budget, concurrency, payload * 8 / budget)


def needed_bits_per_second(h: HttpReading | None, th: Thresholds) -> tuple[float, Need] | None:
    n = need(h, th)
    return None if n is None else (n.total_bits_per_second, n)


def observed_transfer_rate(h: HttpReading | None) -> float | None:
    """How fast the requests' payloads actually moved, all concurrent calls together."""
    moved = transfer(h)
    if moved is None or h is None or moved[2] <= 0:
        return None
    return moved[1] * 8 / moved[2] * max(1, round(h.concurrency or 1))
