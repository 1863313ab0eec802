"""The lab's scenarios as data: phases with their expected label, the service's parameters,
the load and the link rate. The scenario runner plays them; score.py grades the agent
against ``Scenario.timeline``.

Phase lengths scale with the agent's window: ``ci_scenarios()`` gives each phase three
windows (after the guard band of one window at each transition one window per phase is
scored; enough to see the label, not to measure it well) and ``full_scenarios()`` twelve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

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


@dataclass(frozen=True)
class Scenario:
    name: str
    phases: tuple[Phase, ...]
    description: str = ""
    gpu_model: str = DEFAULT_GPU_MODEL  # the service's --gpu-model

    @property
    def duration_seconds(self) -> float:
        return sum(p.duration_seconds for p in self.phases)

    @property
    def needs_shaped_link(self) -> bool:
        """True when a phase needs a rate-limited link (the service in a namespace)."""
        return any(p.link_rate_bits_per_second is not None
                   and p.link_rate_bits_per_second < FAST_LINK_BITS_PER_SECOND
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
    return scenarios


def ci_scenarios() -> dict[str, Scenario]:
    return build_scenarios(CI_WINDOW_SECONDS, CI_WINDOWS_PER_PHASE)


def full_scenarios() -> dict[str, Scenario]:
    return build_scenarios(FULL_WINDOW_SECONDS, FULL_WINDOWS_PER_PHASE)
