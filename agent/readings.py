"""Per-resource readings of one window: the numbers the classifier's rules read
(reader.py computes them from a Window).

A value a source did not give stays None here too, never 0, so a rule can tell
"GPU idle" from "GPU not measured".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ai_bottleneck.capacity import Capacity
from ai_bottleneck.engine_signals import EngineReading
from ai_bottleneck.probes.vocabulary import NETWORK_PHASES, SERVER_SECONDS
from ai_bottleneck.series import Stats
from ai_bottleneck.windows import ProbeStatus


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
    temperature_celsius: float | None = None  # peak in the window
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
    #: The tightest known rate of each direction (link speed, declared, shaped).
    rx_capacity: Capacity | None = None
    tx_capacity: Capacity | None = None
    #: Each direction's throughput over the window (for the plateau check).
    rx_stats: Stats | None = None
    tx_stats: Stats | None = None

    def capacity(self, direction: str) -> Capacity | None:
        return self.rx_capacity if direction == "rx" else self.tx_capacity

    def stats(self, direction: str) -> Stats | None:
        return self.rx_stats if direction == "rx" else self.tx_stats

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
    #: The longest call still running at the window's end (a lower bound on its time),
    #: and how much of that was the network's and the server's so far.
    in_flight_seconds: float | None = None
    in_flight_network_seconds: float | None = None
    in_flight_server_seconds: float | None = None
    in_flight_calls: int = 0

    @property
    def failure_ratio(self) -> float:
        n = self.calls + self.failures
        return self.failures / n if n else 0.0

    @property
    def in_flight_worst(self) -> bool:
        """Whether the call still running took longer than every finished one: then it is
        the window's slowest call, and its phases so far say where the time goes."""
        return bool(self.in_flight_seconds) and (
            self.total is None or (self.in_flight_seconds or 0.0) > self.total.max)

    @property
    def p95_seconds(self) -> float | None:
        """p95 request time, raised to the running call's elapsed time when that is longer
        (a lower bound: the call is not over)."""
        p95 = self.total.p95 if self.total is not None else None
        if self.in_flight_worst:
            return max(p95 or 0.0, self.in_flight_seconds or 0.0)
        return p95

    @property
    def network_seconds(self) -> float | None:
        found = [self.phases[p] for p in NETWORK_PHASES if p in self.phases]
        return sum(found) if found else None

    @property
    def network_share(self) -> float | None:
        if self.in_flight_worst and self.in_flight_network_seconds is not None:
            return min(1.0, self.in_flight_network_seconds / (self.in_flight_seconds or 1.0))
        net = self.network_seconds
        if net is None or self.total is None or self.total.mean <= 0:
            return None
        return min(1.0, net / self.total.mean)

    @property
    def server_share(self) -> float | None:
        if self.in_flight_worst and self.in_flight_server_seconds is not None:
            return min(1.0, self.in_flight_server_seconds / (self.in_flight_seconds or 1.0))
        server = self.phases.get(SERVER_SECONDS)
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
    direction: str = "rx"      # from this host's side: "tx" for iperf3 send, else "rx"

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
    engines: tuple[EngineReading, ...] = ()  # model servers' own metrics (probe engine)

    def probe(self, name: str) -> ProbeStatus:
        return self.status[name]
