"""A pynvml-shaped fake of NVML: the one fake in the project's tests.

It has the functions of the ``pynvml`` module that ai-bottleneck calls, as
methods, with scripted readings for any number of GPUs, and it raises the
real ``pynvml.NVMLError`` classes (``pynvml.NVMLError(code)`` gives the
matching subclass). It behaves like the library where that is known:

- utilization in percent, memory in bytes, power in milliwatts, clocks in MHz,
  PCIe throughput in KB/s (KiB/s), temperature in degrees Celsius;
- ``nvmlDeviceGetSamples(handle, NVML_GPU_UTILIZATION_SAMPLES, last_seen)``
  returns ``(value_type, samples)`` with only samples newer than
  ``last_seen`` (microsecond timestamps) and raises NVMLError_NotFound when
  there are none. The driver adds one sample per ``sample_period_seconds``
  (1/6 s by default) at the GPU's current ``utilization_percent``, starting
  empty; tests can also push explicit samples (``push_utilization``);
- ``nvmlDeviceGetMemoryInfo(handle)`` is the v1 call (``used`` includes the
  driver's reserve), ``nvmlDeviceGetMemoryInfo(handle, version=nvmlMemory_v2)``
  the v2 call (``reserved`` separate);
- GPM (Hopper and newer): ``nvmlGpmQueryDeviceSupport``, ``nvmlGpmSampleAlloc``,
  ``nvmlGpmSampleGet``, ``nvmlGpmMetricsGet`` (with the fake's own
  ``c_nvmlGpmMetricsGet_t``), ``nvmlGpmSampleFree``; metric values in percent;
- health (tests/fakes/fake_nvml_health.py): XID events through event sets
  (``fake.xid(i, 79)``), ECC counters, remapped rows, retired pages;
- MIG (tests/fakes/fake_nvml_mig.py): ``FakeGpu(mig=[FakeMigInstance(1), ...])``
  puts a GPU in MIG mode with those GPU instances;
- an old driver lacks C symbols (NVMLError_FunctionNotFound; the unversioned
  process call raises pynvml.NVMLLibraryMismatchError like the real wrapper);
  an old nvidia-ml-py lacks Python functions (AttributeError).

Build one in a test::

    from tests.fakes.fake_nvml import FakeClock, FakeGpu, FakeNvml, FakeProcess
    fake = FakeNvml.with_gpus(8)                       # 8 H100-like GPUs
    fake = FakeNvml.with_gpus(2, utilization_percent=95, gpm=None)
    fake = FakeNvml([FakeGpu(utilization_percent=10), FakeGpu(lost=True)])
    fake = FakeNvml(library_missing=True)              # nvmlInit: LibraryNotFound
    probe = GpuProbe(backend=fake)

Faults: ``fake.gpus[i].unsupported.append("nvmlDeviceGetPowerUsage")``
(NotSupported), ``fake.fail(i, "nvmlDeviceGetPowerUsage", code, times=1)``,
``fake.lose(i, after_calls=5)``, ``fake.recover(i)``,
``fake.remove_symbols("nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetSamples")``
(old driver), ``fake.remove_functions("nvmlDeviceGetCurrentClocksEventReasons")``
(old binding), ``gpm=None`` (GPM unsupported), ``init_error=code``.

File-driven mode, for other processes: with
``AI_BOTTLENECK_NVML_BACKEND="tests.fakes.fake_nvml:from_env"`` the GPU probe
builds its backend with ``from_env()``, whose readings come from the JSON file
named by ``AI_BOTTLENECK_FAKE_NVML``, re-read whenever it changes (one stat
per call), so a test or the scenario lab changes them live. The schema and the
writers (``write_state``, ``update_gpu``) are in tests/fakes/nvml_state.py and
are re-exported here.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pynvml

from tests.fakes.fake_nvml_health import HealthCalls
from tests.fakes.fake_nvml_mig import MIG_PARENT_UNSUPPORTED, FakeMigHandle, MigCalls
from tests.fakes.nvml_state import (
    STATE_ENV,
    FakeGpu,
    FakeMigInstance,
    FakeProcess,
    make_gpus,
    read_state,
    update_gpu,
    write_state,
)

__all__ = [
    "BACKEND_SPEC", "STATE_ENV", "FakeClock", "FakeGpmMetricsGet", "FakeGpmSample", "FakeGpu",
    "FakeHandle", "FakeMigInstance", "FakeNvml", "FakeProcess", "from_env", "make_gpus",
    "read_state", "update_gpu", "write_state",
]

BACKEND_SPEC = "tests.fakes.fake_nvml:from_env"

#: The GPM metric ids the fake knows, and their key in ``FakeGpu.gpm``.
GPM_KEYS = {
    pynvml.NVML_GPM_METRIC_SM_UTIL: "sm_util",
    pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: "sm_occupancy",
    pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: "tensor_util",
    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: "dram_bw_util",
}

_BUFFER_SAMPLES = 120  # the driver keeps a bounded ring of recent samples


def _err(code: int) -> Exception:
    return pynvml.NVMLError(code)  # type: ignore[no-any-return]


class FakeClock:
    """A clock a test moves by hand (seconds)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeHandle:
    """An opaque device handle, as the real library hands out."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"FakeHandle({self.index})"


class _Value:
    __slots__ = ("uiVal",)

    def __init__(self, value: int) -> None:
        self.uiVal = value


class _Sample:
    __slots__ = ("sampleValue", "timeStamp")

    def __init__(self, time_stamp: int, value: int) -> None:
        self.timeStamp = time_stamp
        self.sampleValue = _Value(value)


class _Struct:
    """Plain attribute bag standing in for a ctypes structure."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)

    def __getattr__(self, name: str) -> Any:  # only reached for fields it lacks
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__dict__})"


class FakeGpmSample:
    """What nvmlGpmSampleAlloc hands out: filled by nvmlGpmSampleGet."""

    def __init__(self) -> None:
        self.index: int | None = None
        self.taken_us: int | None = None
        self.values: dict[str, float] = {}
        self.freed = False


class _GpmMetric:
    __slots__ = ("metricId", "nvmlReturn", "value")

    def __init__(self) -> None:
        self.metricId = 0
        self.nvmlReturn = 0
        self.value = 0.0


class FakeGpmMetricsGet:
    """Shaped like pynvml.c_nvmlGpmMetricsGet_t."""

    def __init__(self) -> None:
        self.version = 0
        self.numMetrics = 0
        self.sample1: FakeGpmSample | None = None
        self.sample2: FakeGpmSample | None = None
        self.metrics = [_GpmMetric() for _ in range(pynvml.NVML_GPM_METRIC_MAX)]


class _GpuState:
    """What the driver keeps about a GPU beyond the scripted readings."""

    def __init__(self, now_us: int) -> None:
        self.calls = 0
        self.buffer: deque[_Sample] = deque(maxlen=_BUFFER_SAMPLES)
        self.next_sample_us = now_us
        self.faults: dict[str, list[Any]] = {}  # function -> [code, remaining or None]
        self.handle: FakeHandle | None = None
        self.xids_delivered = 0  # how many of the GPU's xid_events were handed out


class _Absent:
    """Class attribute that makes a function look absent from an old binding."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        raise AttributeError(self.name)


class FakeNvml(HealthCalls, MigCalls):
    """pynvml-shaped fake for any number of GPUs. See the module docstring."""

    c_nvmlGpmMetricsGet_t = FakeGpmMetricsGet

    def __init__(self, gpus: Sequence[FakeGpu] = (), *, library_missing: bool = False,
                 init_error: int | None = None, missing_symbols: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic,
                 state_path: str | os.PathLike[str] | None = None) -> None:
        self.gpus: list[FakeGpu] = list(gpus)
        self.library_missing = library_missing
        self.init_error = init_error
        self.missing_symbols: set[str] = set(missing_symbols)
        self.clock = clock
        self.init_count = 0
        self.calls: dict[str, int] = {}
        self.gpm_samples_live: set[int] = set()  # ids of allocated, not yet freed samples
        self._removed: set[str] = set()
        self._health_init()
        self._states = [_GpuState(self._now_us()) for _ in self.gpus]
        self._path = Path(state_path) if state_path is not None else None
        self._file_key: tuple[int, int, int] | None = None
        if self._path is not None:
            self._refresh(required=True)

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def with_gpus(cls, count: int, *, clock: Callable[[], float] = time.monotonic,
                  **readings: Any) -> FakeNvml:
        """``count`` GPUs (distinct uuids and bus ids), each with ``readings``."""
        return cls(make_gpus(count, **readings), clock=clock)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *,
                  clock: Callable[[], float] = time.monotonic) -> FakeNvml:
        return cls(clock=clock, state_path=path)

    # -- fault injection --------------------------------------------------------------------

    def fail(self, index: int, function: str, code: int, times: int | None = None) -> None:
        """Make ``function`` on GPU ``index`` raise NVMLError(code), ``times`` times or always."""
        self._states[index].faults[function] = [code, times]

    def lose(self, index: int, after_calls: int = 0) -> None:
        """GPU ``index`` falls off the bus after ``after_calls`` more calls on it."""
        self.gpus[index].lose_after_calls = self._states[index].calls + after_calls

    def recover(self, index: int) -> None:
        self.gpus[index].lost = False
        self.gpus[index].lose_after_calls = None

    def remove_symbols(self, *names: str) -> None:
        """An older driver: these C functions are missing (NVMLError_FunctionNotFound)."""
        self.missing_symbols.update(names)

    def remove_functions(self, *names: str) -> None:
        """An older nvidia-ml-py: these Python functions do not exist (AttributeError)."""
        self._removed.update(names)
        cls = type(self)
        self.__class__ = type(cls.__name__, (cls,), {n: _Absent(n) for n in names})

    def push_utilization(self, index: int, percents: Sequence[int]) -> None:
        """Put explicit utilization samples into GPU ``index``'s driver buffer, now."""
        state = self._states[index]
        now = self._now_us()
        base = now - len(percents) + 1
        if state.buffer:
            base = max(base, state.buffer[-1].timeStamp + 1)
        for k, value in enumerate(percents):
            state.buffer.append(_Sample(base + k, int(value)))
        period = self.gpus[index].sample_period_seconds
        if period:
            state.next_sample_us = max(state.next_sample_us,
                                       base + len(percents) + int(period * 1e6))

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not defined here: module constants come from the
        # real pynvml; functions the fake does not implement do not exist.
        if name.startswith("_") or name in self._removed:
            raise AttributeError(name)
        value = getattr(pynvml, name, None)
        if value is None or callable(value):
            raise AttributeError(name)
        return value

    # -- internals --------------------------------------------------------------------------

    def _now_us(self) -> int:
        return int(self.clock() * 1e6)

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _library(self, name: str, symbol: str | None = None) -> None:
        if self._path is not None:
            self._refresh()
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.missing_symbols and (symbol or name) in self.missing_symbols:
            raise _err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        if self.init_count <= 0:
            raise _err(pynvml.NVML_ERROR_UNINITIALIZED)

    def _device(self, handle: FakeHandle, name: str, symbol: str | None = None) -> FakeGpu:
        # _library's checks inlined: this runs on every per-GPU call of a benchmark pass
        if self._path is not None:
            self._refresh()
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.missing_symbols and (symbol or name) in self.missing_symbols:
            raise _err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        if self.init_count <= 0:
            raise _err(pynvml.NVML_ERROR_UNINITIALIZED)
        if type(handle) is FakeMigHandle:
            return self._mig_view(handle, name)
        return self._check_device(handle.index, name)

    def _check_device(self, index: int, name: str) -> FakeGpu:
        if index >= len(self.gpus):  # the state file dropped this GPU
            raise _err(pynvml.NVML_ERROR_GPU_IS_LOST)
        gpu = self.gpus[index]
        state = self._states[index]
        state.calls += 1
        if gpu.lost or (gpu.lose_after_calls is not None and state.calls > gpu.lose_after_calls):
            gpu.lost = True
            raise _err(pynvml.NVML_ERROR_GPU_IS_LOST)
        if state.faults:
            fault = state.faults.get(name)
            if fault is not None:
                code, remaining = fault
                if remaining is not None:
                    if remaining <= 1:
                        del state.faults[name]
                    else:
                        fault[1] = remaining - 1
                raise _err(code)
        if gpu.unsupported and name in gpu.unsupported:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if gpu.mig is not None and name in MIG_PARENT_UNSUPPORTED:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    def _refresh(self, required: bool = False) -> None:
        assert self._path is not None
        try:
            st = os.stat(self._path)
        except OSError:
            if required:
                raise
            return  # keep the last state; the writer replaces the file atomically
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._file_key:
            return
        try:
            state = json.loads(self._path.read_text(encoding="utf-8"))
            gpus = [FakeGpu.from_json(g) for g in state.get("gpus", [])]
        except (OSError, ValueError, TypeError):
            if required:
                raise
            return
        self._file_key = key
        self.gpus = gpus
        self.library_missing = bool(state.get("library_missing", False))
        self.init_error = state.get("init_error")
        self.missing_symbols = set(state.get("missing_symbols", []))
        while len(self._states) < len(gpus):
            self._states.append(_GpuState(self._now_us()))

    def _generate(self, gpu: FakeGpu, state: _GpuState) -> None:
        """The driver's sampler: one sample per period at the current utilization."""
        period = gpu.sample_period_seconds
        if not period:
            return
        period_us = max(1, int(period * 1e6))
        now = self._now_us()
        if now - state.next_sample_us > period_us * _BUFFER_SAMPLES:
            state.next_sample_us = now - period_us * _BUFFER_SAMPLES
        value = round(gpu.utilization_percent)
        while state.next_sample_us <= now:
            state.buffer.append(_Sample(state.next_sample_us, value))
            state.next_sample_us += period_us

    # -- library ----------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        if self._path is not None:
            self._refresh()
        self._count("nvmlInit")
        if self.library_missing:
            raise _err(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        if self.init_error is not None:
            raise _err(self.init_error)
        self.init_count += 1

    def nvmlShutdown(self) -> None:
        self._count("nvmlShutdown")
        if self.init_count <= 0:
            raise _err(pynvml.NVML_ERROR_UNINITIALIZED)
        self.init_count -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._library("nvmlDeviceGetCount", "nvmlDeviceGetCount_v2")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._library("nvmlDeviceGetHandleByIndex", "nvmlDeviceGetHandleByIndex_v2")
        if not 0 <= index < len(self.gpus):
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        state = self._states[index]
        if state.handle is None:
            state.handle = FakeHandle(index)
        self._check_device(index, "nvmlDeviceGetHandleByIndex")
        return state.handle

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        self._library("nvmlSystemGetProcessName")
        for gpu in self.gpus:
            for proc in gpu.processes:
                if proc.pid == pid:
                    return proc.name
        raise _err(pynvml.NVML_ERROR_NOT_FOUND)

    # -- static device facts ----------------------------------------------------------------

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return self._device(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        return self._device(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetPciInfo(self, handle: FakeHandle) -> _Struct:
        gpu = self._device(handle, "nvmlDeviceGetPciInfo", "nvmlDeviceGetPciInfo_v3")
        domain, bus, rest = gpu.pci_bus_id.split(":")
        device = rest.split(".")[0]
        # ctypes char arrays come back as bytes
        return _Struct(busId=gpu.pci_bus_id.encode(),
                       busIdLegacy=gpu.pci_bus_id[4:].encode(),
                       domain=int(domain, 16), bus=int(bus, 16), device=int(device, 16),
                       pciDeviceId=0x233010DE, pciSubSystemId=0x16C110DE)

    def nvmlDeviceGetMaxClockInfo(self, handle: FakeHandle, clock_type: int) -> int:
        gpu = self._device(handle, "nvmlDeviceGetMaxClockInfo")
        if clock_type in (pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_GRAPHICS):
            return gpu.sm_clock_max_mhz
        raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)

    # -- live readings ----------------------------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> _Struct:
        gpu = self._device(handle, "nvmlDeviceGetUtilizationRates")
        return _Struct(gpu=round(gpu.utilization_percent),
                       memory=round(gpu.memory_utilization_percent))

    def nvmlDeviceGetSamples(self, handle: FakeHandle, sampling_type: int,
                             last_seen_time_stamp: int) -> tuple[int, list[_Sample]]:
        gpu = self._device(handle, "nvmlDeviceGetSamples")
        if sampling_type != pynvml.NVML_GPU_UTILIZATION_SAMPLES:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)  # the fake keeps only utilization
        state = self._states[handle.index]
        self._generate(gpu, state)
        newer = [s for s in state.buffer if s.timeStamp > last_seen_time_stamp]
        if not newer:
            raise _err(pynvml.NVML_ERROR_NOT_FOUND)
        return pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, newer

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle, version: int | None = None) -> _Struct:
        if not version:
            gpu = self._device(handle, "nvmlDeviceGetMemoryInfo")
            used = gpu.memory_used_bytes + gpu.memory_reserved_bytes
            return _Struct(total=gpu.memory_total_bytes,
                           free=max(0, gpu.memory_total_bytes - used), used=used)
        gpu = self._device(handle, "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo_v2")
        if version != pynvml.nvmlMemory_v2:
            raise _err(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        free = gpu.memory_total_bytes - gpu.memory_used_bytes - gpu.memory_reserved_bytes
        return _Struct(version=version, total=gpu.memory_total_bytes,
                       reserved=gpu.memory_reserved_bytes, free=max(0, free),
                       used=gpu.memory_used_bytes)

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        return self._device(handle, "nvmlDeviceGetPowerUsage").power_milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeHandle) -> int:
        return self._device(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_milliwatts

    def nvmlDeviceGetPowerManagementLimit(self, handle: FakeHandle) -> int:
        return self._device(handle, "nvmlDeviceGetPowerManagementLimit").power_limit_milliwatts

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        gpu = self._device(handle, "nvmlDeviceGetTemperature")
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature_celsius

    def nvmlDeviceGetTemperatureV(self, handle: FakeHandle, sensor: int,
                                  version: int = pynvml.nvmlTemperature_v1) -> int:
        gpu = self._device(handle, "nvmlDeviceGetTemperatureV")
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature_celsius

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, clock_type: int) -> int:
        gpu = self._device(handle, "nvmlDeviceGetClockInfo")
        if clock_type in (pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_GRAPHICS):
            return gpu.sm_clock_mhz
        raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        return self._device(handle, "nvmlDeviceGetCurrentClocksEventReasons").clocks_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:
        gpu = self._device(handle, "nvmlDeviceGetCurrentClocksThrottleReasons")
        return gpu.clocks_event_reasons

    def nvmlDeviceGetPcieThroughput(self, handle: FakeHandle, counter: int) -> int:
        gpu = self._device(handle, "nvmlDeviceGetPcieThroughput")
        if counter == pynvml.NVML_PCIE_UTIL_RX_BYTES:
            return gpu.pcie_rx_kilobytes_per_second
        if counter == pynvml.NVML_PCIE_UTIL_TX_BYTES:
            return gpu.pcie_tx_kilobytes_per_second
        raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def _processes(self, gpu: FakeGpu) -> list[_Struct]:
        none = 0xFFFFFFFF  # NVML's "not in a MIG instance"
        return [_Struct(pid=p.pid, usedGpuMemory=p.used_memory_bytes,
                        gpuInstanceId=none if p.gpu_instance_id is None else p.gpu_instance_id,
                        computeInstanceId=none if p.gpu_instance_id is None else 0)
                for p in gpu.processes]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[_Struct]:
        try:
            gpu = self._device(handle, "nvmlDeviceGetComputeRunningProcesses",
                               "nvmlDeviceGetComputeRunningProcesses_v3")
        except pynvml.NVMLError_FunctionNotFound:
            # what the real unversioned wrapper does on an older driver
            raise pynvml.NVMLLibraryMismatchError("unversioned function called") from None
        return self._processes(gpu)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: FakeHandle) -> list[_Struct]:
        return self._processes(self._device(handle, "nvmlDeviceGetComputeRunningProcesses_v2"))

    # -- GPM ------------------------------------------------------------------------------

    def nvmlGpmQueryDeviceSupport(self, handle: FakeHandle) -> _Struct:
        gpu = self._device(handle, "nvmlGpmQueryDeviceSupport")
        return _Struct(version=pynvml.NVML_GPM_SUPPORT_VERSION,
                       isSupportedDevice=int(gpu.gpm is not None))

    def nvmlGpmSampleAlloc(self) -> FakeGpmSample:
        self._library("nvmlGpmSampleAlloc")
        sample = FakeGpmSample()
        self.gpm_samples_live.add(id(sample))
        return sample

    def nvmlGpmSampleFree(self, sample: FakeGpmSample) -> None:
        self._library("nvmlGpmSampleFree")
        if sample.freed or id(sample) not in self.gpm_samples_live:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        sample.freed = True
        self.gpm_samples_live.discard(id(sample))

    def nvmlGpmSampleGet(self, handle: FakeHandle, sample: FakeGpmSample) -> FakeGpmSample:
        gpu = self._device(handle, "nvmlGpmSampleGet")
        if gpu.gpm is None:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if sample.freed:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        sample.index = handle.index
        sample.taken_us = self._now_us()
        sample.values = dict(gpu.gpm)
        return sample

    def nvmlGpmMetricsGet(self, metrics_get: FakeGpmMetricsGet) -> FakeGpmMetricsGet:
        self._library("nvmlGpmMetricsGet")
        if metrics_get.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
            raise _err(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        first, second = metrics_get.sample1, metrics_get.sample2
        if (first is None or second is None or first.taken_us is None
                or second.taken_us is None or first.index != second.index
                or second.taken_us < first.taken_us):
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        for i in range(metrics_get.numMetrics):
            metric = metrics_get.metrics[i]
            key = GPM_KEYS.get(metric.metricId)
            value = second.values.get(key) if key is not None else None
            if value is None:
                metric.nvmlReturn, metric.value = pynvml.NVML_ERROR_NOT_SUPPORTED, 0.0
            else:
                metric.nvmlReturn, metric.value = pynvml.NVML_SUCCESS, float(value)
        return metrics_get


def from_env() -> FakeNvml:
    """The backend factory named by AI_BOTTLENECK_NVML_BACKEND in subprocesses."""
    path = os.environ.get(STATE_ENV)
    if not path:
        raise ValueError(f"{STATE_ENV} must name the fake NVML state file")
    return FakeNvml.from_file(path)


