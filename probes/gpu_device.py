"""One GPU as the GPU probe keeps it, and the readings that need more than one call:
utilization from the driver's sample buffer, memory (v2, else v1), and the rule for
a value a GPU does not give (absent, not asked again) or a GPU that is gone (raised).
Split from probes/gpu.py, which runs the passes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ai_bottleneck.probes import nvml
from ai_bottleneck.probes.gpm import GpmReader
from ai_bottleneck.probes.gpu_health import HealthReader
from ai_bottleneck.probes.gpu_mig import MigReader

_MEMORY_V2 = "nvmlDeviceGetMemoryInfo_v2"  # the C symbol behind version=nvmlMemory_v2
_ABSENT_FOR_GOOD = frozenset({nvml.NOT_SUPPORTED, nvml.NO_PERMISSION})


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
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip("\x00 ")


def read_value(session: nvml.NvmlSession, dev: Device, key: str, functions: Sequence[str],
               *args: Any) -> Any:
    """One reading, or None. Unsupported: remembered, not asked again. GPU-fatal: raised."""
    if key in dev.absent:
        return None
    try:
        return session.call_first(functions, *args)
    except nvml.FunctionMissing:
        dev.absent.add(key)
        return None
    except nvml.NVMLError as exc:
        if nvml.is_gpu_fatal(exc):
            raise
        code = nvml.error_code(exc)
        if code in _ABSENT_FOR_GOOD:
            dev.absent.add(key)
        session.log_once(f"{key}:{dev.index}:{code}", "gpu %d: %s: %s; left out",
                            dev.index, key, nvml.describe(exc))
        return None

def read_utilization(session: nvml.NvmlSession, dev: Device, values: dict[str, float]) -> None:
    if dev.sample_buffer:
        try:
            value_type, samples = session.call(
                "nvmlDeviceGetSamples", dev.handle, nvml.GPU_UTILIZATION_SAMPLES, dev.cursor)
        except nvml.FunctionMissing:
            dev.sample_buffer = False
        except nvml.NVMLError as exc:
            code = nvml.error_code(exc)
            if nvml.is_gpu_fatal(exc):
                raise
            if code != nvml.NOT_FOUND:  # NOT_FOUND: no sample since the last pass
                if code in _ABSENT_FOR_GOOD:
                    dev.sample_buffer = False
                session.log_once(f"samples:{dev.index}:{code}",
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
                values["utilization_ratio"] = total / count / 100.0
                values["utilization_samples"] = float(count)
                return
    rates = read_value(session, dev, "utilization", ("nvmlDeviceGetUtilizationRates",), dev.handle)
    if rates is not None:
        ratio = nvml.percent_ratio(rates.gpu)
        if ratio is not None:
            values["utilization_ratio"] = ratio

def read_memory(session: nvml.NvmlSession, dev: Device, values: dict[str, float]) -> None:
    memory = None
    v2 = False
    if not session.is_missing(_MEMORY_V2) and "memory" not in dev.absent:
        try:
            memory = session.call_variant(_MEMORY_V2, "nvmlDeviceGetMemoryInfo",
                                             dev.handle, version=nvml.MEMORY_V2)
            v2 = True
        except nvml.FunctionMissing:
            pass
        except TypeError:  # an nvidia-ml-py without the version argument
            session.mark_missing(_MEMORY_V2, "this nvidia-ml-py is old")
        except nvml.NVMLError as exc:
            if nvml.is_gpu_fatal(exc):
                raise
            if nvml.error_code(exc) == nvml.ARGUMENT_VERSION_MISMATCH:
                session.mark_missing(_MEMORY_V2, "the NVIDIA driver does not know version 2")
    if memory is None:
        memory = read_value(session, dev, "memory", ("nvmlDeviceGetMemoryInfo",), dev.handle)
        if memory is None:
            return
    values["memory_used_bytes"] = float(memory.used)
    values["memory_total_bytes"] = float(memory.total)
    if v2:
        values["memory_reserved_bytes"] = float(memory.reserved)
