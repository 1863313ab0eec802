"""The gpu probe's per-GPU state and the readings that need more than one NVML call:
utilization (driver sample buffer, else the latest value) and memory (version 2
where the driver and binding have it).

A value the GPU does not support is remembered in ``Device.absent`` and not asked
for again; errors that end the GPU's pass (``nvml.is_gpu_fatal``) are raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ai_bottleneck.probes import nvml
from ai_bottleneck.probes.gpm import GpmReader
from ai_bottleneck.probes.gpu_health import HealthReader
from ai_bottleneck.probes.gpu_mig import MigReader
from ai_bottleneck.probes.vocabulary import GPU_MEMORY_TOTAL, GPU_MEMORY_USED, GPU_UTILIZATION

#: Answers that will not change while the probe runs: the value is left out for good.
ABSENT_FOR_GOOD = frozenset({nvml.NOT_SUPPORTED, nvml.NO_PERMISSION})
MEMORY_V2 = "nvmlDeviceGetMemoryInfo_v2"  # the C symbol behind version=nvmlMemory_v2


class Device:
    """What the probe keeps about one GPU between passes."""

    __slots__ = ("absent", "cursor", "error", "fault", "gpm", "handle", "health", "index",
                 "labels", "mig", "sample_buffer", "sm_clock_max_hertz")

    def __init__(self, index: int, sample_buffer: bool) -> None:
        self.index = index
        self.handle: Any = None
        self.labels: dict[str, str] = {"gpu": str(index), "uuid": ""}
        self.error = ""
        self.absent: set[str] = set()  # values this GPU does not give; not asked again
        self.cursor = 0  # newest driver sample timestamp seen (microseconds)
        self.sample_buffer = sample_buffer
        self.sm_clock_max_hertz: float | None = None
        self.gpm: GpmReader | None = None
        self.health: HealthReader | None = None
        self.mig: MigReader | None = None
        self.fault: dict[str, float] = {}  # health values of the attach failure

    @property
    def error_labels(self) -> dict[str, str]:
        return {"gpu": self.labels["gpu"], "uuid": self.labels["uuid"]}


def attach_errors(devices: Sequence[Device]) -> str:
    """``GPU 0, 1: <error>; GPU 2: <other error>``: devices grouped by their error."""
    by_error: dict[str, list[str]] = {}
    for dev in devices:
        by_error.setdefault(dev.error or "cannot be read", []).append(str(dev.index))
    return "; ".join(f"GPU {', '.join(ids)}: {error}" for error, ids in by_error.items())


def text(value: Any) -> str:
    """An NVML string (bytes or str, NUL-padded) as text."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip("\x00 ")


def read_value(lib: nvml.NvmlSession, dev: Device, key: str, functions: Sequence[str],
               *args: Any) -> Any:
    """One reading, or None. Unsupported: remembered, not asked again. GPU-fatal: raised."""
    if key in dev.absent:
        return None
    try:
        return lib.call_first(functions, *args)
    except nvml.FunctionMissing:
        dev.absent.add(key)
        return None
    except nvml.NVMLError as exc:
        if nvml.is_gpu_fatal(exc):
            raise
        code = nvml.error_code(exc)
        if code in ABSENT_FOR_GOOD:
            dev.absent.add(key)
        lib.log_once(f"{key}:{dev.index}:{code}", "gpu %d: %s: %s; left out",
                            dev.index, key, nvml.describe(exc))
        return None

def prime_sample_cursor(lib: nvml.NvmlSession, dev: Device) -> None:
    """Start the sample cursor at the newest sample the driver holds when the GPU is
    attached, so the first pass averages only what happened since, not the seconds of
    buffer from before the agent started (or before a lost GPU came back)."""
    if not dev.sample_buffer:
        return
    try:
        _, samples = lib.call(
            "nvmlDeviceGetSamples", dev.handle, nvml.GPU_UTILIZATION_SAMPLES, 0)
    except nvml.FunctionMissing:
        dev.sample_buffer = False
        return
    except nvml.NVMLError:
        return  # empty buffer, or an error read_utilization will report on its pass
    dev.cursor = max((int(s.timeStamp) for s in samples), default=0)


def read_utilization(lib: nvml.NvmlSession, dev: Device, values: dict[str, float]) -> None:
    """``utilization_ratio``: the mean of the driver's samples since the last pass where
    the sample buffer answers, else the latest value."""
    if dev.sample_buffer:
        try:
            value_type, samples = lib.call(
                "nvmlDeviceGetSamples", dev.handle, nvml.GPU_UTILIZATION_SAMPLES, dev.cursor)
        except nvml.FunctionMissing:
            dev.sample_buffer = False
        except nvml.NVMLError as exc:
            code = nvml.error_code(exc)
            if nvml.is_gpu_fatal(exc):
                raise
            if code != nvml.NOT_FOUND:  # NOT_FOUND: no sample since the last pass
                if code in ABSENT_FOR_GOOD:
                    dev.sample_buffer = False
                lib.log_once(f"samples:{dev.index}:{code}",
                                    "gpu %d: driver sample buffer: %s; using the latest "
                                    "utilization instead", dev.index, nvml.describe(exc))
        else:
            field_name = nvml.SAMPLE_VALUE_FIELDS.get(value_type, "uiVal")
            total = 0.0
            count = 0
            newest = dev.cursor
            for s in samples:
                newest = max(newest, int(s.timeStamp))
                value = getattr(s.sampleValue, field_name, None)
                if value is not None and 0 <= value <= 100:  # drop driver glitches
                    total += value
                    count += 1
            dev.cursor = newest
            if count:
                values[GPU_UTILIZATION] = total / count / 100.0
                values["utilization_samples"] = float(count)
                return
    rates = read_value(lib, dev, "utilization", ("nvmlDeviceGetUtilizationRates",), dev.handle)
    if rates is not None:
        ratio = nvml.percent_ratio(rates.gpu)
        if ratio is not None:
            values[GPU_UTILIZATION] = ratio

def read_memory(lib: nvml.NvmlSession, dev: Device, values: dict[str, float]) -> None:
    """Memory used and total, and reserved where NVML's version 2 call answers."""
    memory = None
    v2 = False
    if not lib.is_missing(MEMORY_V2) and "memory" not in dev.absent:
        try:
            memory = lib.call_variant(MEMORY_V2, "nvmlDeviceGetMemoryInfo",
                                             dev.handle, version=nvml.MEMORY_V2)
            v2 = True
        except nvml.FunctionMissing:
            pass
        except TypeError:  # an nvidia-ml-py without the version argument
            lib.mark_missing(MEMORY_V2, "this nvidia-ml-py is old")
        except nvml.NVMLError as exc:
            if nvml.is_gpu_fatal(exc):
                raise
            if nvml.error_code(exc) == nvml.ARGUMENT_VERSION_MISMATCH:
                lib.mark_missing(MEMORY_V2, "the NVIDIA driver does not know version 2")
    if memory is None:
        memory = read_value(lib, dev, "memory", ("nvmlDeviceGetMemoryInfo",), dev.handle)
        if memory is None:
            return
    values[GPU_MEMORY_USED] = float(memory.used)
    values[GPU_MEMORY_TOTAL] = float(memory.total)
    if v2:
        values["memory_reserved_bytes"] = float(memory.reserved)
