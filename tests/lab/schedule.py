"""The lab's scenarios as data: phases with their expected label, the service's parameters,
the load and the link rate. The scenario runner plays them; score.py grades the agent
against ``Scenario.timeline``.

Phase lengths scale with the agent's window: ``ci_scenarios()`` gives each phase three
windows (after the guard band of one window at each transition one window per phase is
scored; enough to see the label, not to measure it well) and ``full_scenarios()`` twelve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tests.lab.placement import Placement
from tests.lab.score import TimedPhase
from tests.lab.service import ServiceParams
from tests.lab.simgpu import DEFAULT_GPU_MODEL, GIB

FAST_LINK_BITS_PER_SECOND = 1e9  # "fast link": far above anything the lab sends
ARTICLE_LINK_BITS_PER_SECOND = 5e6  # the article's thin pipe: 5 Mbit/s
ARTICLE_UPLOAD_BYTES = 5_000_000  # 5 MB per upload
ARTICLE_CLIENTS = 10

CI_WINDOW_SECONDS = 5.0
CI_WINDOWS_PER_PHASE = 3
FULL_WINDOW_SECONDS = 10.0
FULL_WINDOWS_PER_PHASE = 12


@dataclass(frozen=True)
class LoadParams:
    """Arguments of load.run_load for one phase (the phase gives the duration)."""

    clients: int
    payload_bytes: int
    rate_per_client: float | None = None  # None: closed loop
    ramp_seconds: float = 0.0
    timeout_seconds: float = 30.0
    max_requests: int = 100_000

    def run_load_kwargs(self, duration_seconds: float) -> dict[str, Any]:
        return {"clients": self.clients, "payload_bytes": self.payload_bytes,
                "rate_per_client": self.rate_per_client, "ramp_seconds": self.ramp_seconds,
                "timeout_seconds": self.timeout_seconds, "max_requests": self.max_requests,
                "duration_seconds": duration_seconds}


@dataclass(frozen=True)
class Phase:
    name: str
    duration_seconds: float
    expected_label: str
    service: ServiceParams
    load: LoadParams | None  # None: no traffic
    # Rate of the link from the clients into the service's namespace (tbf). The runner
    # sets it at the phase start when the service runs in a namespace; None: unshaped.
    link_rate_bits_per_second: float | None = FAST_LINK_BITS_PER_SECOND
    description: str = ""
    #: Rate from the service's namespace back to the clients (its answers), when it
    #: differs from the link rate; None: the link rate.
    link_rate_out_bits_per_second: float | None = None
    #: A limit on uploads one hop beyond the agent's host (inside the service's
    #: namespace, invisible to the agent's tc); None: no such hop.
    hop_rate_in_bits_per_second: float | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    phases: tuple[Phase, ...]
    description: str = ""
    gpu_model: str = DEFAULT_GPU_MODEL  # the service's --gpu-model
    #: Extra tables of the agent's config ("{nic}" in a key or value: the lab's NIC).
    agent_tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Run an iperf3 server in the service's namespace and point the agent's iperf3
    #: probe at it (an internal link the agent measures).
    iperf3_peer: bool = False
    #: The agent's own timed call: body size and time limit, when not the settings'.
    probe_body_bytes: int | None = None
    probe_timeout_seconds: float | None = None
    #: Run the service in a cgroup of its own beside other work (tests/lab/placement.py);
    #: the agent's service probe then judges the GPU process's cgroup. None: as it runs.
    placement: Placement | None = None

    @property
    def duration_seconds(self) -> float:
        return sum(p.duration_seconds for p in self.phases)

    @property
    def needs_shaped_link(self) -> bool:
        """True when a phase needs a rate-limited link (the service in a namespace)."""
        return any((p.link_rate_bits_per_second is not None
                   and p.link_rate_bits_per_second < FAST_LINK_BITS_PER_SECOND)
                   or p.link_rate_out_bits_per_second is not None
                   or p.hop_rate_in_bits_per_second is not None
                   for p in self.phases)

    def timeline(self, start: float) -> list[TimedPhase]:
        """The phases back to back from unix time ``start``."""
        out = []
        t = start
        for p in self.phases:
            out.append(TimedPhase(p.name, p.expected_label, t, t + p.duration_seconds))
            t += p.duration_seconds
        return out


# ---- service settings per regime (what the simulated model and GPU do) ----

IDLE_SERVICE = ServiceParams(compute_seconds=0.05, gpu_slots=2, memory_base_bytes=16 * GIB,
                             memory_per_request_bytes=GIB // 2, memory_total_bytes=80 * GIB)
# Long GPU steps: 6 closed-loop clients keep both slots busy all the time.
GPU_HEAVY_SERVICE = replace(IDLE_SERVICE, compute_seconds=0.25)
# A small model whose requests need CPU pre-processing: two pool workers keep both host
# cores busy while the GPU computes 10 ms per request (about 10% busy).
CPU_HEAVY_SERVICE = replace(IDLE_SERVICE, compute_seconds=0.01, cpu_seconds=0.2)
# A nearly full GPU (70 of 80 GiB for the model): each request in flight holds 2 GiB, so
# the sixth concurrent request does not fit. Offered load (24 req/s) is above what four
# 0.3 s slots serve (13 req/s), so requests queue, memory grows and allocations fail.
VRAM_TIGHT_SERVICE = replace(IDLE_SERVICE, compute_seconds=0.3, gpu_slots=4,
                             memory_base_bytes=70 * GIB, memory_per_request_bytes=2 * GIB)
# Moderate work: about half the time a kernel runs, answers well within a second.
BALANCED_SERVICE = replace(IDLE_SERVICE, compute_seconds=0.1)


def _phases(window_seconds: float, windows: int) -> Mapping[str, Phase]:
    d = window_seconds * windows
    return {
        "idle": Phase(
            "idle", d, "idle", IDLE_SERVICE, None,
            description="model loaded, no requests"),
        "gpu_bound": Phase(
            "gpu_bound", d, "gpu_bound", GPU_HEAVY_SERVICE,
            LoadParams(clients=6, payload_bytes=200_000),
            description="compute-heavy requests at a concurrency that saturates the "
                        "simulated GPU, fast link"),
        "network_bound": Phase(
            "network_bound", d, "network_bound", IDLE_SERVICE,
            LoadParams(clients=ARTICLE_CLIENTS, payload_bytes=ARTICLE_UPLOAD_BYTES,
                       timeout_seconds=max(120.0, d + 10)),
            link_rate_bits_per_second=ARTICLE_LINK_BITS_PER_SECOND,
            description="the article's case: 10 clients uploading 5 MB each through a "
                        "5 Mbit/s tbf-limited veth into the service's namespace, GPU mostly "
                        "idle"),
        "cpu_bound": Phase(
            "cpu_bound", d, "cpu_bound", CPU_HEAVY_SERVICE,
            LoadParams(clients=4, payload_bytes=100_000),
            description="the service's pre-processing burns the host CPU (real CPU load on "
                        "this machine) while the GPU idles"),
        "vram_bound": Phase(
            "vram_bound", d, "vram_bound", VRAM_TIGHT_SERVICE,
            LoadParams(clients=12, payload_bytes=100_000, rate_per_client=2.0,
                       ramp_seconds=min(window_seconds, d / 3)),
            description="concurrency grows until the simulated GPU memory runs out and "
                        "OOM errors appear in the log"),
        "balanced": Phase(
            "balanced", d, "balanced", BALANCED_SERVICE,
            LoadParams(clients=4, payload_bytes=200_000, rate_per_client=1.5),
            description="moderate load served within the latency objective"),
    }


# ---- network evidence beyond the NIC: the limit is not the link speed ----

#: Answers of 3 MB (an image, a long generated document) sent back through an egress
#: shaped to 8 Mbit/s: three clients and the agent share it, so each answer takes
#: about 12 s, longer than a window, while the NIC reports 10 Gbit/s.
BIG_ANSWER_BYTES = 3_000_000
EGRESS_BITS_PER_SECOND = 8e6
#: An internal hop one step away carrying bulk uploads at 40 Mbit/s: far under the
#: article's 1 Gbit/s between front end and GPU workers; the agent's iperf3 test and
#: the path's plateau show it, its own small calls still answer in time.
HOP_BITS_PER_SECOND = 40e6
#: A plan that sells 20 Mbit/s behind a NIC that reports 10 Gbit/s, declared in [links].
PURCHASED_BITS_PER_SECOND = 20e6


def _network_scenarios(window_seconds: float, windows: int) -> dict[str, Scenario]:
    d = window_seconds * windows
    # The agent's own call to a service answering 3 MB takes as long as the clients'.
    long_call = max(60.0, 4 * window_seconds)
    return {
        "egress_big_answers": Scenario("egress_big_answers", (Phase(
            "network_bound", d, "network_bound",
            replace(IDLE_SERVICE, response_bytes=BIG_ANSWER_BYTES),
            LoadParams(clients=3, payload_bytes=10_000, timeout_seconds=max(120.0, d + 10)),
            link_rate_out_bits_per_second=EGRESS_BITS_PER_SECOND,
            description="3 MB answers through an egress shaped to 8 Mbit/s on the far side "
                        "of the link: each answer takes longer than a window"),),
            "big answers through a shaped egress; calls in flight at the window's end",
            probe_body_bytes=10_000, probe_timeout_seconds=long_call),
        "internal_hop": Scenario("internal_hop", (Phase(
            "network_bound", d, "network_bound", IDLE_SERVICE,
            LoadParams(clients=4, payload_bytes=4_000_000, timeout_seconds=max(120.0, d + 10)),
            hop_rate_in_bits_per_second=HOP_BITS_PER_SECOND,
            description="bulk 4 MB uploads through a 40 Mbit/s hop one step beyond the "
                        "agent's host (no shaper it can see); its iperf3 test measures the "
                        "path"),),
            "a saturated internal hop with bulk traffic; the agent's own calls are small",
            iperf3_peer=True, probe_body_bytes=2_000),
        "purchased_rate": Scenario("purchased_rate", (Phase(
            "network_bound", d, "network_bound", IDLE_SERVICE,
            LoadParams(clients=6, payload_bytes=1_000_000, timeout_seconds=max(120.0, d + 10)),
            hop_rate_in_bits_per_second=PURCHASED_BITS_PER_SECOND,
            description="uploads filling a 20 Mbit/s plan whose limit sits at the provider; "
                        "the NIC reports 10 Gbit/s and [links] declares the plan"),),
            "a purchased rate declared in [links] behind a NIC that reports 10 Gbit/s",
            agent_tables={"links.nics.{nic}": {"bits_per_second": "20Mbit"}},
            probe_body_bytes=2_000),
    }


#: The scenarios of network evidence beyond the NIC (issue: a saturated path one hop
#: away, a purchased rate, calls still in flight).
NETWORK_SCENARIOS = ("egress_big_answers", "internal_hop", "purchased_rate")


# ---- a shared host: whose CPU load is it (the service's own cgroup) ----

#: The starved service's CPU limit: its two pre-processing workers want two cores and get
#: this many, so its tasks wait for a CPU most of the time (cgroup PSI) while the host has
#: CPU to spare.
STARVED_SERVICE_CORES = 0.3


def _shared_host_scenarios(window_seconds: float, windows: int) -> dict[str, Scenario]:
    d = window_seconds * windows
    return {
        "busy_host_idle_service": Scenario("busy_host_idle_service", (Phase(
            "idle", d, "idle", IDLE_SERVICE, None,
            description="model loaded, no requests, while unrelated processes in another "
                        "cgroup burn every CPU of the host"),),
            "an idle service on a host saturated by other work: the service's cgroup is "
            "idle, the host load is named as context",
            placement=Placement(other_burners=-1)),
        "starved_service": Scenario("starved_service", (Phase(
            "cpu_bound", d, "cpu_bound", CPU_HEAVY_SERVICE,
            LoadParams(clients=4, payload_bytes=100_000),
            description=f"requests needing CPU pre-processing while the service's cgroup "
                        f"is capped at {STARVED_SERVICE_CORES:g} CPUs"),),
            "a service starved of CPU by its own cgroup's limit while the host has CPU to "
            "spare: its cgroup's CPU pressure names it",
            placement=Placement(service_cores=STARVED_SERVICE_CORES)),
    }


#: The scenarios of a shared host, judged on the service's own cgroup.
SHARED_HOST_SCENARIOS = ("busy_host_idle_service", "starved_service")


def build_scenarios(window_seconds: float, windows_per_phase: int) -> dict[str, Scenario]:
    """Every scenario, with each phase ``windows_per_phase`` windows long."""
    if window_seconds <= 0 or windows_per_phase < 1:
        raise ValueError("window_seconds > 0 and windows_per_phase >= 1 are required")
    phases = _phases(window_seconds, windows_per_phase)
    scenarios = {name: Scenario(name, (phase,), phase.description)
                 for name, phase in phases.items()}
    scenarios["transitions"] = Scenario(
        "transitions",
        (phases["idle"], phases["network_bound"], phases["gpu_bound"],
         replace(phases["idle"], name="idle_again")),
        "idle -> network_bound -> gpu_bound -> idle in one run, to measure detection and "
        "reset latency")
    scenarios.update(_network_scenarios(window_seconds, windows_per_phase))
    scenarios.update(_shared_host_scenarios(window_seconds, windows_per_phase))
    return scenarios


def ci_scenarios() -> dict[str, Scenario]:
    return build_scenarios(CI_WINDOW_SECONDS, CI_WINDOWS_PER_PHASE)


def full_scenarios() -> dict[str, Scenario]:
    return build_scenarios(FULL_WINDOW_SECONDS, FULL_WINDOWS_PER_PHASE)
