"""Per-resource readings of one window: the numbers the classifier's rules read.

Pure functions of a Window. A value a source did not give stays None here
too, never 0, so a rule can tell "GPU idle" from "GPU not measured".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ai_bottleneck.windows import ProbeStatus, SeriesWindow, Stats, Window

#: HTTP phases that are the network's time, not the server's.
NETWORK_PHASES = ("dns_seconds", "connect_seconds", "tls_seconds", "upload_seconds",
                  "download_seconds")
#: Clock-event reasons that are not a slowdown (idle clocks, user-set clocks).
BENIGN_CLOCK_EVENTS = frozenset({"gpu_idle", "applications_clocks_setting",
                                 "display_clock_setting", "sync_boost"})
#: The same reasons as NVML clock-event bits (nvmlClocksEventReason*: GpuIdle 0x1,
#: ApplicationsClocksSetting 0x2, SyncBoost 0x10, DisplayClockSetting 0x100).
BENIGN_CLOCK_BITS = 0x1 | 0x2 | 0x10 | 0x100
#: Answers that mean "too busy, come back later": queueing made visible.
OVERLOAD_STATUSES = frozenset({429.0, 503.0, 504.0})


def _mean(sw: SeriesWindow, name: str) -> float | None:
    return sw.mean(name)


def _max(sw: SeriesWindow, name: str) -> float | None:
    st = sw.stats(name)
    return None if st is None else st.max


@dataclass(frozen=True, slots=True)
class GpuReading:
    id: str
    name: str | None
    samples: int
    utilization: float | None = None      # coarse: share of time a kernel ran
    sm_active: float | None = None        # GPM: share of SMs doing work
    dram_active: float | None = None      # GPM: share of memory bandwidth in use
    memory_used_bytes: float | None = None   # peak in the window
    memory_total_bytes: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    oom_events: float = 0.0
    slowdowns: tuple[tuple[str, float], ...] = ()  # (reason, share of samples)

    @property
    def gpm(self) -> bool:
        return self.sm_active is not None

    @property
    def busy(self) -> float | None:
        """How saturated the GPU is: GPM SM (or DRAM) activity where read, else the
        coarse utilization. DRAM counts because memory-bound work (LLM decoding)
        saturates the GPU with SMs only partly active."""
        if self.sm_active is not None:
            return max(self.sm_active, self.dram_active or 0.0)
        return self.utilization

    @property
    def activity(self) -> float | None:
        """Whether anything runs at all: the largest of every activity signal."""
        seen = [v for v in (self.utilization, self.sm_active, self.dram_active) if v is not None]
        return max(seen) if seen else None

    @property
    def busy_signal(self) -> str:
        return "SM activity" if self.gpm else "utilization (coarse)"

    @property
    def memory_used_ratio(self) -> float | None:
        if self.memory_used_bytes is None or not self.memory_total_bytes:
            return None
        return self.memory_used_bytes / self.memory_total_bytes

    @property
    def title(self) -> str:
        return f"GPU {self.id}" + (f" ({self.name})" if self.name else "")


@dataclass(frozen=True, slots=True)
class HostReading:
    samples: int
    cpu: float | None = None
    busiest_core: float | None = None
    cpu_pressure: float | None = None
    io_pressure: float | None = None
    memory_pressure: float | None = None
    memory_used_ratio: float | None = None
    cpu_count: float | None = None


@dataclass(frozen=True, slots=True)
class NicReading:
    name: str
    samples: int
    rx_bits_per_second: float | None = None
    tx_bits_per_second: float | None = None
    link_bits_per_second: float | None = None
    rx_utilization: float | None = None
    tx_utilization: float | None = None
    drops_per_second: float | None = None

    @property
    def loopback(self) -> bool:
        return self.name == "lo"

    @property
    def traffic_bits_per_second(self) -> float:
        return (self.rx_bits_per_second or 0.0) + (self.tx_bits_per_second or 0.0)

    @property
    def peak(self) -> tuple[str, float] | None:
        """The busier direction and its share of the link, when the link speed is known."""
        pairs = [(d, u) for d, u in (("rx", self.rx_utilization), ("tx", self.tx_utilization))
                 if u is not None]
        return max(pairs, key=lambda p: p[1]) if pairs else None


@dataclass(frozen=True, slots=True)
class TcpReading:
    retransmit_ratio: float | None = None
    retransmits_per_second: float | None = None


@dataclass(frozen=True, slots=True)
class HttpReading:
    target: str
    calls: int
    failures: int
    errors: tuple[str, ...] = ()
    total: Stats | None = None
    phases: dict[str, float] = field(default_factory=dict)  # mean seconds per phase
    request_bytes: float | None = None
    response_bytes: float | None = None
    concurrency: float | None = None
    overload_answers: int = 0       # 429/503/504 among the failures
    server_errors: int = 0          # any 5xx among the failures
    server_min_seconds: float | None = None  # the fastest answered call's server time
    bytes_moved: float | None = None         # request + response bytes of the answered calls

    @property
    def failure_ratio(self) -> float:
        n = self.calls + self.failures
        return self.failures / n if n else 0.0

    @property
    def network_seconds(self) -> float | None:
        found = [self.phases[p] for p in NETWORK_PHASES if p in self.phases]
        return sum(found) if found else None

    @property
    def network_share(self) -> float | None:
        net = self.network_seconds
        if net is None or self.total is None or self.total.mean <= 0:
            return None
        return min(1.0, net / self.total.mean)

    @property
    def server_share(self) -> float | None:
        server = self.phases.get("server_seconds")
        if server is None or self.total is None or self.total.mean <= 0:
            return None
        return min(1.0, server / self.total.mean)


@dataclass(frozen=True, slots=True)
class ThroughputReading:
    probe: str                 # iperf3 or download
    target: str
    bits_per_second: float
    age_seconds: float         # from the measurement to the end of this window
    retransmits: float | None = None

    @property
    def internal(self) -> bool:
        return self.probe == "iperf3"


@dataclass(frozen=True, slots=True)
class Readings:
    gpus: tuple[GpuReading, ...]
    host: HostReading | None
    nics: tuple[NicReading, ...]
    tcp: TcpReading | None
    http: tuple[HttpReading, ...]
    throughputs: tuple[ThroughputReading, ...]
    oom_events: float
    load_failures: float
    event_sources: tuple[str, ...]
    status: dict[str, ProbeStatus]
    gpu_errors: tuple[str, ...] = ()
    window_seconds: float | None = None

    def probe(self, name: str) -> ProbeStatus:
        return self.status[name]


def _slowdowns(sw: SeriesWindow) -> list[tuple[str, float]]:
    out = []
    for name in sw.ok_samples[-1].values:
        if name.startswith("clocks_event_") and name.endswith("_flag"):
            reason = name[len("clocks_event_"):-len("_flag")]
            if reason not in BENIGN_CLOCK_EVENTS and sw.any_nonzero(name):
                out.append((reason, _mean(sw, name) or 0.0))
    return out


def _gpu_readings(window: Window) -> tuple[list[GpuReading], list[str]]:
    devices: dict[str, list[SeriesWindow]] = {}
    errors: list[str] = []
    for sw in window.of("gpu"):
        if "pid" in sw.labels:
            continue  # a process on a GPU, not a GPU
        dev = sw.labels.get("uuid") or sw.labels.get("gpu")
        if dev is None:
            errors.extend(sw.errors(1))  # the whole probe failed (no device named)
            continue
        if "mig" in sw.labels:  # a MIG instance is a GPU of its own to the rules
            dev += "/mig" + sw.labels["mig"]
        devices.setdefault(dev, []).append(sw)
    out: list[GpuReading] = []
    for group in devices.values():
        for sw in group:
            for e in sw.errors(1):
                errors.append(f"GPU {sw.labels.get('gpu', '?')}: {e}")
        measured = [sw for sw in group if sw.count]
        if not measured:
            continue
        sw = max(measured, key=lambda s: s.count)
        bitmask = sw.values("clocks_event_reasons_bitmask")
        # Nothing but idle or user-set clocks in the bitmask: no need to read every flag.
        quiet = bool(bitmask) and not any(int(v) & ~BENIGN_CLOCK_BITS for v in bitmask)
        slowdowns = [] if quiet else _slowdowns(sw)
        oom = sum(v for v in (sw.increase("oom_events_total"),
                              sw.increase("load_failure_events_total")) if v)
        out.append(GpuReading(
            id=(sw.labels.get("gpu") or sw.labels.get("uuid", "?"))
            + (f" MIG instance {sw.labels['mig']}" if "mig" in sw.labels else ""),
            name=sw.labels.get("name"),
            samples=sw.count,
            utilization=_mean(sw, "utilization_ratio"),
            sm_active=_mean(sw, "sm_active_ratio"),
            dram_active=_mean(sw, "dram_active_ratio"),
            memory_used_bytes=_max(sw, "memory_used_bytes"),
            memory_total_bytes=sw.last("memory_total_bytes"),
            power_watts=_mean(sw, "power_watts"),
            power_limit_watts=sw.last("power_limit_watts"),
            oom_events=oom,
            slowdowns=tuple(sorted(slowdowns, key=lambda p: -p[1])),
        ))
    return out, errors


def _host_reading(window: Window) -> HostReading | None:
    measured = [sw for sw in window.of("host") if sw.count]
    if not measured:
        return None
    sw = max(measured, key=lambda s: s.count)
    return HostReading(
        samples=sw.count,
        cpu=_mean(sw, "cpu_utilization_ratio"),
        busiest_core=_mean(sw, "cpu_busiest_core_ratio"),
        cpu_pressure=_mean(sw, "cpu_pressure_some_ratio"),
        io_pressure=_mean(sw, "io_pressure_some_ratio"),
        memory_pressure=_mean(sw, "memory_pressure_some_ratio"),
        memory_used_ratio=_max(sw, "memory_used_ratio"),
        cpu_count=sw.last("cpu_count"),
    )


def _utilization(sw: SeriesWindow, direction: str, link: float | None) -> float | None:
    given = _mean(sw, f"{direction}_utilization_ratio")
    if given is not None:
        return given
    bits = _mean(sw, f"{direction}_bits_per_second")
    if bits is None or not link:
        return None
    return bits / link


def _nic_readings(window: Window) -> tuple[list[NicReading], TcpReading | None]:
    nics: list[NicReading] = []
    tcp: TcpReading | None = None
    for sw in window.of("nic"):
        if not sw.count:
            continue
        if sw.labels.get("scope") == "host":
            tcp = TcpReading(retransmit_ratio=_mean(sw, "tcp_retransmit_ratio"),
                             retransmits_per_second=_mean(sw, "tcp_retransmits_per_second"))
            continue
        name = sw.labels.get("nic")
        if name is None:
            continue
        link = sw.last("link_speed_bits_per_second")
        drops = [v for v in (_mean(sw, "rx_drops_per_second"),
                             _mean(sw, "tx_drops_per_second")) if v is not None]
        nics.append(NicReading(
            name=name, samples=sw.count,
            rx_bits_per_second=_mean(sw, "rx_bits_per_second"),
            tx_bits_per_second=_mean(sw, "tx_bits_per_second"),
            link_bits_per_second=link,
            rx_utilization=_utilization(sw, "rx", link),
            tx_utilization=_utilization(sw, "tx", link),
            drops_per_second=sum(drops) if drops else None,
        ))
    return nics, tcp


def _http_readings(window: Window) -> list[HttpReading]:
    targets: dict[str, list[SeriesWindow]] = {}
    for sw in window.of("http"):
        targets.setdefault(sw.labels.get("target", "?"), []).append(sw)
    out = []
    for target, group in targets.items():
        calls = sum(sw.count for sw in group)
        failures = sum(sw.failures for sw in group)
        if calls == 0 and failures == 0:
            continue  # only skipped
        statuses = [v for sw in group for v in sw.failed_values("status")]
        errors = tuple(dict.fromkeys(e for sw in group for e in sw.errors()))
        reading = HttpReading(
            target=target, calls=calls, failures=failures, errors=errors[:3],
            overload_answers=sum(1 for s in statuses if s in OVERLOAD_STATUSES),
            server_errors=sum(1 for s in statuses if 500 <= s < 600))
        measured = [sw for sw in group if sw.count]
        if measured:
            sw = max(measured, key=lambda s: s.count)
            phases = {p: m for p in (*NETWORK_PHASES, "server_seconds")
                      if (m := _mean(sw, p)) is not None}
            server = sw.stats("server_seconds")
            moved = [st.sum for name in ("request_bytes", "response_bytes")
                     if (st := sw.stats(name)) is not None]
            reading = HttpReading(
                target=target, calls=calls, failures=failures, errors=reading.errors,
                total=sw.stats("total_seconds"), phases=phases,
                request_bytes=_mean(sw, "request_bytes"),
                response_bytes=_mean(sw, "response_bytes"),
                concurrency=_max(sw, "concurrency"),
                overload_answers=reading.overload_answers, server_errors=reading.server_errors,
                server_min_seconds=server.min if server is not None else None,
                bytes_moved=sum(moved) if moved else None)
        out.append(reading)
    return out


def _throughputs(window: Window) -> list[ThroughputReading]:
    out = []
    for sw in (*window.of("iperf3"), *window.of("download"), *window.carried):
        if sw.probe not in ("iperf3", "download") or not sw.count:
            continue
        bps = _mean(sw, "bits_per_second")
        if bps is None:
            continue
        target = sw.labels.get("target") or sw.labels.get("url") or "?"
        direction = sw.labels.get("direction")
        out.append(ThroughputReading(
            probe=sw.probe, target=f"{target} ({direction})" if direction else target,
            bits_per_second=bps, age_seconds=max(0.0, window.end - sw.last_t),
            retransmits=(st.sum if (st := sw.stats("retransmits")) else None)))
    return out


def _events(window: Window, gpus: Sequence[GpuReading]) -> tuple[float, float, list[str]]:
    oom = load = 0.0
    sources: list[str] = []
    for sw in window.of("oom"):
        if not sw.count:
            continue
        source = sw.labels.get("source", "oom")
        o = (st.sum if (st := sw.stats("oom_events")) else sw.increase("oom_events_total")) or 0
        f = ((st.sum if (st := sw.stats("load_failure_events")) else
              sw.increase("load_failure_events_total")) or 0)
        if o or f:
            sources.append(source)
        oom += o
        load += f
    for g in gpus:
        if g.oom_events:
            oom += g.oom_events
            sources.append(f"GPU {g.id}")
    return oom, load, sources


def read(window: Window) -> Readings:
    gpus, gpu_errors = _gpu_readings(window)
    nics, tcp = _nic_readings(window)
    oom, load, sources = _events(window, gpus)
    status = window.statuses()
    for name in ("gpu", "host", "nic", "http"):
        if name not in status:
            status[name] = window.status(name)
    return Readings(
        gpus=tuple(gpus), host=_host_reading(window), nics=tuple(nics), tcp=tcp,
        http=tuple(_http_readings(window)), throughputs=tuple(_throughputs(window)),
        oom_events=oom, load_failures=load, event_sources=tuple(sources), status=status,
        gpu_errors=tuple(gpu_errors),
        window_seconds=window.end - window.start if window.end > window.start else None)


def summary(r: Readings) -> dict[str, Any]:
    """Key numbers per resource for reports and the exporter (units in the names)."""
    out: dict[str, Any] = {}
    if r.gpus:
        out["gpu"] = {g.id: _drop_none({
            "name": g.name, "busy_ratio": g.busy, "busy_signal": "sm_active" if g.gpm
            else "utilization", "utilization_ratio": g.utilization,
            "sm_active_ratio": g.sm_active, "dram_active_ratio": g.dram_active,
            "memory_used_bytes": g.memory_used_bytes,
            "memory_total_bytes": g.memory_total_bytes,
            "memory_used_ratio": g.memory_used_ratio, "power_watts": g.power_watts})
            for g in r.gpus}
    if r.host is not None:
        h = r.host
        out["host"] = _drop_none({
            "cpu_utilization_ratio": h.cpu, "cpu_busiest_core_ratio": h.busiest_core,
            "cpu_pressure_some_ratio": h.cpu_pressure, "io_pressure_some_ratio": h.io_pressure,
            "memory_used_ratio": h.memory_used_ratio})
    if r.nics:
        out["nic"] = {n.name: _drop_none({
            "rx_bits_per_second": n.rx_bits_per_second,
            "tx_bits_per_second": n.tx_bits_per_second,
            "link_speed_bits_per_second": n.link_bits_per_second,
            "rx_utilization_ratio": n.rx_utilization,
            "tx_utilization_ratio": n.tx_utilization}) for n in r.nics}
    if r.tcp is not None and r.tcp.retransmit_ratio is not None:
        out["tcp"] = {"retransmit_ratio": r.tcp.retransmit_ratio}
    if r.http:
        out["http"] = {h.target: _drop_none({
            "calls": h.calls, "failures": h.failures,
            "p95_total_seconds": h.total.p95 if h.total else None,
            "mean_total_seconds": h.total.mean if h.total else None,
            **{f"mean_{k}": v for k, v in h.phases.items()},
            "network_share_ratio": h.network_share, "server_share_ratio": h.server_share,
            "request_bytes": h.request_bytes}) for h in r.http}
    if r.throughputs:
        out["throughput"] = {f"{t.probe} {t.target}": {
            "bits_per_second": t.bits_per_second, "age_seconds": t.age_seconds}
            for t in r.throughputs}
    if r.oom_events or r.load_failures:
        out["events"] = {"oom_events": r.oom_events, "load_failure_events": r.load_failures}
    return out


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}
