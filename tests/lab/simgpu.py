"""A simulated GPU for the scenario lab, driven by the work the lab service really does.

The lab has no GPU, so the inference service computes on this instead: a request takes one
of ``gpu_slots`` compute slots for ``compute_seconds`` (a sleep: the GPU is another device,
it does not load the host CPU), and holds ``memory_per_request_bytes`` of device memory
from the moment it is handed to the GPU (queued or computing) until it finishes, on top of
``memory_base_bytes`` (the loaded model). An allocation that would pass
``memory_total_bytes`` fails the way PyTorch fails: an OOM line in the service log and an
error for that request.

The state is published as a JSON file that the fake NVML backend reads on each call, so the
agent's GPU probe sees utilization and memory that follow the load:
- utilization: the share of the last ``UTILIZATION_PERIOD_SECONDS`` during which at least
  one slot was busy (what NVML's ``utilization.gpu`` means: "a kernel was running");
- sm_active: the mean share of slots busy over the same period, published as GPM's SM
  utilization when the simulated card has GPM (``h100``; the ``a100`` has none, like the
  real one, so the agent gets only the coarse signal): a GPU with one of four slots busy
  shows 100% utilization but 25% SM activity;
- memory used: base + memory held by requests in flight, also as the service process's
  per-process memory.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 1024**3
UTILIZATION_PERIOD_SECONDS = 1.0
PUBLISH_INTERVAL_SECONDS = 0.1


@dataclass(frozen=True)
class GpuModel:
    """What NVML would say about the simulated card. ``gpm``: whether it has GPM metrics
    (Hopper and newer); without them the agent sees only the coarse utilization."""

    name: str
    uuid: str
    power_idle_watts: float
    power_limit_watts: float
    gpm: bool


GPU_MODELS = {
    # The article's "big GPU behind a thin pipe".
    "a100": GpuModel("NVIDIA A100-SXM4-80GB", "GPU-1ab0a100-0000-4000-8000-000000000000",
                     55.0, 400.0, gpm=False),
    "h100": GpuModel("NVIDIA H100 80GB HBM3", "GPU-1ab0h100-0000-4000-8000-000000000000",
                     70.0, 700.0, gpm=True),
}
DEFAULT_GPU_MODEL = "h100"
# The simulated kernel mix, as shares of SM activity: what GPM would report beside it.
SM_OCCUPANCY_PER_SM_ACTIVE = 0.5
TENSOR_ACTIVE_PER_SM_ACTIVE = 0.7
DRAM_ACTIVE_PER_SM_ACTIVE = 0.4
IDLE_TEMPERATURE_CELSIUS = 34.0
FULL_LOAD_TEMPERATURE_CELSIUS = 71.0


@dataclass(frozen=True)
class GpuParams:
    compute_seconds: float = 0.05
    gpu_slots: int = 1
    memory_base_bytes: int = 16 * GIB
    memory_per_request_bytes: int = GIB // 2
    memory_total_bytes: int = 80 * GIB


@dataclass(frozen=True)
class GpuState:
    """One published reading. ``in_flight``, ``busy_slots`` and ``oom_total`` are lab
    bookkeeping, published beside the NVML view for tests and the scenario runner."""

    utilization_percent: int
    sm_active_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    in_flight: int
    busy_slots: int
    oom_total: int
    pid: int  # the process "using" the GPU: the service
    model: GpuModel = GPU_MODELS[DEFAULT_GPU_MODEL]


@dataclass(frozen=True)
class ComputeTiming:
    queue_seconds: float
    compute_seconds: float


class GpuOutOfMemory(Exception):
    """The allocation for a request does not fit; the message is PyTorch's wording."""


def oom_message(tried_bytes: int, total_bytes: int, free_bytes: int, used_bytes: int) -> str:
    """PyTorch's CUDA OOM wording, which log-based OOM detection must recognise."""
    return (
        f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
        f"{tried_bytes / GIB:.2f} GiB. GPU 0 has a total capacity of {total_bytes / GIB:.2f} GiB"
        f" of which {max(free_bytes, 0) / GIB:.2f} GiB is free. Including non-PyTorch memory, "
        f"this process has {used_bytes / GIB:.2f} GiB memory in use."
    )


def publish(path: Path, state: GpuState) -> None:
    """Write ``state`` as the fake NVML's state file (``AI_BOTTLENECK_FAKE_NVML``; schema in
    tests/fakes/fake_nvml.py, file-driven mode). The one place that knows that schema.
    Keys the fake does not know are ignored by it: the lab's bookkeeping goes in ``lab``.
    Written to a temporary file and renamed over the old one: a reader never sees half."""
    model = state.model
    sm = state.sm_active_percent / 100
    used = min(state.memory_used_bytes, state.memory_total_bytes)
    gpu: dict[str, Any] = {
        "name": model.name,
        "uuid": model.uuid,
        "pci_bus_id": "00000000:07:00.0",
        "utilization_percent": state.utilization_percent,
        "memory_utilization_percent": round(100 * sm * DRAM_ACTIVE_PER_SM_ACTIVE, 1),
        "memory_used_bytes": used,
        "memory_total_bytes": state.memory_total_bytes,
        "memory_reserved_bytes": 0,  # the lab's accounting is exact: used is all there is
        "power_milliwatts": int(1000 * (model.power_idle_watts
                                        + (model.power_limit_watts - model.power_idle_watts)
                                        * sm)),
        "power_limit_milliwatts": int(1000 * model.power_limit_watts),
        "temperature_celsius": round(IDLE_TEMPERATURE_CELSIUS + sm * (
            FULL_LOAD_TEMPERATURE_CELSIUS - IDLE_TEMPERATURE_CELSIUS)),
        "gpm": {"sm_util": state.sm_active_percent,
                "sm_occupancy": round(state.sm_active_percent * SM_OCCUPANCY_PER_SM_ACTIVE, 1),
                "tensor_util": round(state.sm_active_percent * TENSOR_ACTIVE_PER_SM_ACTIVE, 1),
                "dram_bw_util": round(state.sm_active_percent * DRAM_ACTIVE_PER_SM_ACTIVE, 1),
                } if model.gpm else None,
        "processes": [{"pid": state.pid, "name": "python3", "used_memory_bytes": used}],
    }
    document = {
        "gpus": [gpu],
        "lab": {"in_flight": state.in_flight, "busy_slots": state.busy_slots,
                "oom_total": state.oom_total, "sm_active_percent": state.sm_active_percent,
                "memory_wanted_bytes": state.memory_used_bytes},
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(document), encoding="utf-8")
    os.replace(tmp, path)


def read_published(path: Path) -> dict[str, Any]:
    """The GPU entry of a published file with the lab's bookkeeping merged in (for tests,
    the runner and /health)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    return {**document["gpus"][0], **document["lab"]}


class SimGpu:
    """Compute slots and device memory shared by the service's request threads."""

    def __init__(
        self,
        params: GpuParams,
        log_oom: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        max_queue_seconds: float = 120.0,
    ):
        self._params = params
        self._log_oom = log_oom
        self._clock = clock
        self._sleep = sleep
        self._max_queue_seconds = max_queue_seconds
        self._cond = threading.Condition()
        self._busy = 0
        self._in_flight = 0
        self._held_bytes = 0
        self._oom_total = 0
        # Integrals over time of "any slot busy" and "slots busy", advanced on every change,
        # so utilization over any period is a difference of two readings.
        self._last_change = clock()
        self._any_busy_seconds = 0.0
        self._slot_busy_seconds = 0.0

    @property
    def params(self) -> GpuParams:
        return self._params

    def configure(self, params: GpuParams) -> None:
        with self._cond:
            self._advance()
            self._params = params
            self._cond.notify_all()  # more slots may free waiting requests

    def _advance(self) -> None:
        now = self._clock()
        dt = max(now - self._last_change, 0.0)
        if self._busy:
            self._any_busy_seconds += dt
            self._slot_busy_seconds += self._busy * dt
        self._last_change = now

    def run(self) -> ComputeTiming:
        """Allocate, wait for a slot, compute, free. Raises GpuOutOfMemory when the
        allocation does not fit, TimeoutError when no slot frees in time."""
        with self._cond:
            p = self._params
            used = p.memory_base_bytes + self._held_bytes
            wanted = p.memory_per_request_bytes
            if used + wanted > p.memory_total_bytes:
                self._oom_total += 1
                message = oom_message(wanted, p.memory_total_bytes,
                                      p.memory_total_bytes - used, used)
                self._log_oom(message)
                raise GpuOutOfMemory(message)
            self._held_bytes += wanted
            self._in_flight += 1
        try:
            return self._compute()
        finally:
            with self._cond:
                self._held_bytes -= wanted
                self._in_flight -= 1

    def _compute(self) -> ComputeTiming:
        queued = self._clock()
        with self._cond:
            if not self._cond.wait_for(lambda: self._busy < self._params.gpu_slots,
                                       timeout=self._max_queue_seconds):
                raise TimeoutError(f"no GPU slot free after {self._max_queue_seconds:g}s")
            self._advance()
            self._busy += 1
            seconds = self._params.compute_seconds
        started = self._clock()
        try:
            self._sleep(seconds)
        finally:
            with self._cond:
                self._advance()
                self._busy -= 1
                self._cond.notify()
        return ComputeTiming(started - queued, self._clock() - started)

    def counters(self) -> tuple[float, float, float]:
        """(now, seconds any slot was busy, slot-seconds busy), cumulative."""
        with self._cond:
            self._advance()
            return self._last_change, self._any_busy_seconds, self._slot_busy_seconds

    def instant(self) -> tuple[int, int, int, int]:
        """(memory used, in flight, busy slots, OOMs so far) right now."""
        with self._cond:
            return (self._params.memory_base_bytes + self._held_bytes, self._in_flight,
                    self._busy, self._oom_total)


class Publisher:
    """Publishes a SimGpu's state every ``interval`` seconds from a daemon thread, with
    utilization averaged over the last ``period`` seconds."""

    def __init__(self, gpu: SimGpu, path: Path, *, model: GpuModel = GPU_MODELS[DEFAULT_GPU_MODEL],
                 interval: float = PUBLISH_INTERVAL_SECONDS,
                 period: float = UTILIZATION_PERIOD_SECONDS):
        self._gpu = gpu
        self._model = model
        self._path = path
        self._interval = interval
        self._period = period
        self._history: deque[tuple[float, float, float]] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="simgpu-publisher", daemon=True)

    @property
    def path(self) -> Path:
        return self._path

    def state(self) -> GpuState:
        now, any_busy, slot_busy = self._gpu.counters()
        self._history.append((now, any_busy, slot_busy))
        # Keep the newest reading at least one period old as the baseline.
        while len(self._history) > 2 and self._history[1][0] <= now - self._period:
            self._history.popleft()
        t0, any0, slot0 = self._history[0]
        elapsed = now - t0
        params = self._gpu.params
        if elapsed > 1e-6:
            utilization = min(max((any_busy - any0) / elapsed, 0.0), 1.0)
            sm_active = min(max((slot_busy - slot0) / (elapsed * params.gpu_slots), 0.0), 1.0)
        else:
            utilization = sm_active = 0.0
        used, in_flight, busy, ooms = self._gpu.instant()
        return GpuState(
            utilization_percent=math.floor(utilization * 100 + 0.5),
            sm_active_percent=round(sm_active * 100, 1),
            memory_used_bytes=used,
            memory_total_bytes=params.memory_total_bytes,
            in_flight=in_flight,
            busy_slots=busy,
            oom_total=ooms,
            pid=os.getpid(),
            model=self._model,
        )

    def publish_now(self) -> None:
        publish(self._path, self.state())

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.publish_now()
            self._stop.wait(self._interval)

    def start(self) -> None:
        self.publish_now()  # the file exists before anyone is told the service is up
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
