"""GPU probe: every NVIDIA GPU on the host, through NVML.

Each ``sample()`` gives one Sample per GPU (labels ``gpu``, ``uuid``, ``name``,
``pci_bus_id``) and one per compute process on it (labels ``gpu``, ``uuid``,
``pid``, ``process_name``). A GPU that cannot be read gives a failed Sample
(labels ``gpu``, ``uuid``) and the other GPUs go on. docs/probes.md lists
every value with its unit.

Utilization comes from the driver's sample buffer where it can: every call
asks for the samples newer than the last one seen, so activity between two
calls is averaged in rather than missed. On Hopper and newer GPUs the probe
also reads GPM metrics (SM activity, occupancy, tensor and DRAM activity)
between two GPM samples taken a pass apart; ``gpm_available`` says whether
they were read, or only NVML's coarse "a kernel was running" utilization.

A value the GPU does not support is absent, never 0, and is not asked for
again; a function the driver or binding lacks falls back to an older one or
is left out, logged once (probes/nvml.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ai_bottleneck.options import bounds, parse_options
from ai_bottleneck.probes import nvml
from ai_bottleneck.probes.base import Availability, Clock, failed
from ai_bottleneck.probes.gpm import GpmReader
from ai_bottleneck.probes.gpu_health import HealthReader, fault_values
from ai_bottleneck.probes.gpu_mig import MigReader
from ai_bottleneck.probes.gpu_processes import ProcessReader
from ai_bottleneck.probes.k8s_pods import PodDirectory
from ai_bottleneck.samples import Sample, one_line

NAME = "gpu"
log = logging.getLogger(__name__)

_START_RETRY_SECONDS = 30.0  # how often to retry NVML on a host where it failed to start

# Functions per value, newest first; older ones are fallbacks for older drivers.
_POWER_LIMIT = ("nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetPowerManagementLimit")
_TEMPERATURE = ("nvmlDeviceGetTemperature", "nvmlDeviceGetTemperatureV")
_CLOCKS_EVENT = ("nvmlDeviceGetCurrentClocksEventReasons",
                 "nvmlDeviceGetCurrentClocksThrottleReasons")
_MEMORY_V2 = "nvmlDeviceGetMemoryInfo_v2"  # the C symbol behind version=nvmlMemory_v2
_PROCESSES = ("nvmlDeviceGetComputeRunningProcesses",
              "nvmlDeviceGetComputeRunningProcesses_v2")

_FLAGS = tuple((f"clocks_event_{name}_flag", bit) for name, bit in nvml.CLOCKS_EVENT_REASONS)
_ABSENT_FOR_GOOD = frozenset({nvml.NOT_SUPPORTED, nvml.NO_PERMISSION})
_KIB = 1024.0  # NVML's PCIe "KB/s" are KiB/s


@dataclass(frozen=True)
class Options:
    timeout_seconds: float = field(default=5.0, metadata=bounds(
        min=0.1, max=120, doc="longest one pass over all GPUs may take"))
    sample_buffer: bool = field(default=True, metadata=bounds(
        doc="average utilization over the driver's samples since the previous pass, so "
            "bursts between passes count; false reads only the driver's latest value"))
    gpm: bool = field(default=True, metadata=bounds(
        doc="read GPM metrics (SM activity and occupancy, tensor and DRAM activity) on GPUs "
            "that have them (Hopper and newer)"))
    pcie: bool = field(default=True, metadata=bounds(
        doc="read PCIe rx/tx throughput; NVML measures each over 20 ms, so this adds about "
            "40 ms per GPU per pass"))
    processes: bool = field(default=True, metadata=bounds(
        doc="list compute processes and the GPU memory each uses"))
    max_processes: int = field(default=32, metadata=bounds(
        min=1, max=1024, doc="process series per GPU, the ones using the most memory; the "
        "rest are folded into one series with pid \"other\""))
    proc_root: str = field(default="/proc", metadata=bounds(
        doc="where the host's /proc is (\"/host/proc\" in a container that mounts it): "
            "each GPU process's cgroup names its container, pod or service"))
    pod_logs_root: str = field(default="/var/log/pods", metadata=bounds(
        doc="the kubelet's pod log directory; its names (and the containers directory "
            "beside it) give pod, namespace and container names"))
    mig: bool = field(default=True, metadata=bounds(
        doc="on GPUs in MIG mode, one sample per GPU instance (memory, GPM metrics)"))
    health: bool = field(default=True, metadata=bounds(
        doc="watch XID error events and read ECC counters, row remapping and retired pages"))


class _Device:
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


def _attach_errors(devices: Sequence[_Device]) -> str:
    """``GPU 0, 1: <error>; GPU 2: <other error>``: devices grouped by their error."""
    by_error: dict[str, list[str]] = {}
    for dev in devices:
        by_error.setdefault(dev.error or "cannot be read", []).append(str(dev.index))
    return "; ".join(f"GPU {', '.join(ids)}: {error}" for error, ids in by_error.items())


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip("\x00 ")


class GpuProbe:
    """Samples every GPU NVML sees. ``backend``: a pynvml-shaped object (tests)."""

    name = NAME
    active = False
    interval_seconds: float | None = None

    def __init__(self, options: Options | None = None, *, backend: Any | None = None,
                 clock: Clock = time.time, monotonic: Clock = time.monotonic) -> None:
        self.options = options or Options()
        self.timeout_seconds = self.options.timeout_seconds
        self._nvml = nvml.NvmlSession(backend)
        self._clock = clock
        self._monotonic = monotonic
        self._busy = threading.Lock()
        self._devices: list[_Device] | None = None
        self._start_error: str | None = None
        self._retry_at = 0.0
        self._processes = ProcessReader(
            self._nvml, proc_root=self.options.proc_root,
            pods=PodDirectory(self.options.pod_logs_root, monotonic=monotonic),
            max_processes=self.options.max_processes)

    # -- protocol -------------------------------------------------------------------------

    def check(self) -> Availability:
        with self._busy:
            started_before = self._devices is not None
            error = self._start(retry_now=True)
            devices = self._devices
            for dev in devices if started_before and devices else ():
                if dev.handle is None:  # failed to attach earlier: it may be back
                    self._attach(dev)
        if error is not None:
            return Availability.no(error)
        if not devices:
            return Availability.no("NVML found no NVIDIA GPU on this host")
        attached = [d for d in devices if d.handle is not None]
        failed_devices = [d for d in devices if d.handle is None]
        if not attached:
            # Counting GPUs is not reading them: every GPU failed to attach.
            return Availability.no(f"NVML sees {len(devices)} GPU(s) but none can be read: "
                                   + _attach_errors(failed_devices))
        names = Counter(d.labels.get("name", "unknown GPU") for d in attached)
        summary = ", ".join(f"{n}x {name}" for name, n in names.items())
        if failed_devices:
            return Availability.yes(f"{len(attached)} of {len(devices)} GPU(s) readable: "
                                    f"{summary}; {_attach_errors(failed_devices)}")
        return Availability.yes(f"{len(devices)} GPU(s): {summary}")

    def sample(self) -> Sequence[Sample]:
        if not self._busy.acquire(blocking=False):
            return [failed(NAME, "the previous NVML read has not returned yet (driver hung?)",
                           t=self._clock())]
        try:
            return self._sample_all()
        finally:
            self._busy.release()

    def close(self) -> None:
        if not self._busy.acquire(timeout=self.timeout_seconds):
            log.warning("gpu: a sample is still inside NVML; leaving NVML to shut down at exit")
            return
        try:
            for dev in self._devices or ():
                self._drop_gpm(dev)
                if dev.health is not None:
                    dev.health.close()
            self._devices = None
            self._nvml.stop()
        finally:
            self._busy.release()

    # -- start and device discovery -------------------------------------------------------

    def _start(self, retry_now: bool = False) -> str | None:
        """Start NVML and list the GPUs once; the reason when that is not possible."""
        if self._devices is not None:
            return None
        now = self._monotonic()
        if self._start_error is not None and not retry_now and now < self._retry_at:
            return self._start_error
        try:
            self._nvml.start()
            count = int(self._nvml.call("nvmlDeviceGetCount"))
        except nvml.NvmlUnavailable as exc:
            error = str(exc)
        except nvml.FunctionMissing:
            error = "this NVML cannot count GPUs (nvmlDeviceGetCount is missing)"
        except nvml.NVMLError as exc:
            error = f"NVML cannot count GPUs: {nvml.describe(exc)}"
        else:
            self._start_error = None
            self._devices = [_Device(i, self.options.sample_buffer) for i in range(count)]
            for dev in self._devices:
                self._attach(dev)
            return None
        self._nvml.stop()
        self._start_error = error
        self._retry_at = now + _START_RETRY_SECONDS
        log.debug("gpu: NVML unavailable: %s", error)
        return error

    def _attach(self, dev: _Device) -> None:
        """Get the handle and the facts that do not change (name, uuid, bus id, max clock)."""
        try:
            handle = self._nvml.call("nvmlDeviceGetHandleByIndex", dev.index)
            uuid = self._static("nvmlDeviceGetUUID", handle)
            name = self._static("nvmlDeviceGetName", handle)
            pci = self._static("nvmlDeviceGetPciInfo", handle)
            max_mhz = self._static("nvmlDeviceGetMaxClockInfo", handle, nvml.CLOCK_SM)
        except (nvml.NVMLError, nvml.FunctionMissing) as exc:
            dev.error = nvml.describe(exc)
            dev.fault = fault_values(exc)
            return
        # A new dict, never changed afterwards: samples already out keep theirs.
        labels = {"gpu": str(dev.index), "uuid": _text(uuid) if uuid is not None else ""}
        if name is not None:
            labels["name"] = _text(name)
        bus_id = getattr(pci, "busId", None) if pci is not None else None
        if bus_id:
            labels["pci_bus_id"] = _text(bus_id)
        dev.labels = labels
        if max_mhz is not None and max_mhz > 0:
            dev.sm_clock_max_hertz = float(max_mhz) * 1e6
        dev.handle = handle
        dev.error = ""
        try:
            if self.options.gpm:
                dev.gpm = GpmReader.open(self._nvml, handle, dev.index, self._monotonic)
            if dev.health is not None:  # kept across a lost GPU: it remembers past XIDs
                dev.health.handle = handle
            elif self.options.health:
                dev.health = HealthReader(self._nvml, handle, dev.index)
            if self.options.mig:
                dev.mig = MigReader.open(self._nvml, handle, labels, dev.index,
                                         self._monotonic, gpm=self.options.gpm)
        except nvml.NVMLError as exc:  # the GPU went away between calls
            self._drop_gpm(dev)
            dev.handle = None
            dev.error = nvml.describe(exc)
            dev.fault = fault_values(exc)

    def _static(self, function: str, *args: Any) -> Any:
        try:
            return self._nvml.call(function, *args)
        except nvml.FunctionMissing:
            return None
        except nvml.NVMLError as exc:
            if nvml.is_gpu_fatal(exc):
                raise
            return None

    # -- one pass -------------------------------------------------------------------------

    def _sample_all(self) -> list[Sample]:
        t = self._clock()
        error = self._start()
        if error is not None:
            return [failed(NAME, error, t=t)]
        devices = self._devices or []
        if not devices:
            return [failed(NAME, "NVML found no NVIDIA GPU on this host", t=t)]
        out: list[Sample] = []
        pids: set[int] = set()
        for dev in devices:
            if dev.handle is None:
                self._attach(dev)
                if dev.handle is None:
                    out.append(Sample(t=t, probe=NAME, labels=dev.error_labels,
                                      values=dev.fault, error=one_line(dev.error)))
                    continue
            try:
                out.extend(self._read(dev, t, pids))
            except nvml.NVMLError as exc:  # GPU-fatal: this GPU only
                out.append(Sample(t=t, probe=NAME, labels=dev.error_labels,
                                  values=fault_values(exc), error=nvml.describe(exc)))
            except Exception as exc:  # a bug or a broken backend: still one GPU, one line
                self._nvml.log_once(f"bug:{type(exc).__name__}", "gpu: reading GPU %d failed",
                                    dev.index, level=logging.ERROR)
                out.append(failed(NAME, f"reading the GPU failed: {one_line(exc)}",
                                  dev.error_labels, t=t))
        self._processes.forget_except(pids)
        return out

    def _read(self, dev: _Device, t: float, pids: set[int]) -> list[Sample]:
        handle = dev.handle
        values: dict[str, float] = {}
        self._read_utilization(dev, values)
        self._read_memory(dev, values)
        power = self._value(dev, "power", ("nvmlDeviceGetPowerUsage",), handle)
        if power is not None:
            values["power_watts"] = power / 1000.0
        limit = self._value(dev, "power_limit", _POWER_LIMIT, handle)
        if limit is not None:
            values["power_limit_watts"] = limit / 1000.0
        temperature = self._value(dev, "temperature", _TEMPERATURE, handle, nvml.TEMPERATURE_GPU)
        if temperature is not None:
            values["temperature_celsius"] = float(temperature)
        sm_clock = self._value(dev, "sm_clock", ("nvmlDeviceGetClockInfo",), handle,
                               nvml.CLOCK_SM)
        if sm_clock is not None:
            values["sm_clock_hertz"] = sm_clock * 1e6
        if dev.sm_clock_max_hertz is not None:
            values["sm_clock_max_hertz"] = dev.sm_clock_max_hertz
        reasons = self._value(dev, "clocks_event", _CLOCKS_EVENT, handle)
        if reasons is not None:
            bits = int(reasons)
            values["clocks_event_reasons_bitmask"] = float(bits)
            for key, bit in _FLAGS:
                values[key] = 1.0 if bits & bit else 0.0
        if self.options.pcie:
            rx = self._value(dev, "pcie_rx", ("nvmlDeviceGetPcieThroughput",), handle,
                             nvml.PCIE_UTIL_RX_BYTES)
            if rx is not None:
                values["pcie_rx_bytes_per_second"] = rx * _KIB
            tx = self._value(dev, "pcie_tx", ("nvmlDeviceGetPcieThroughput",), handle,
                             nvml.PCIE_UTIL_TX_BYTES)
            if tx is not None:
                values["pcie_tx_bytes_per_second"] = tx * _KIB
        gpm = dev.gpm
        values["gpm_available"] = 1.0 if gpm is not None and gpm.read(values) else 0.0
        if gpm is not None and gpm.closed:
            dev.gpm = None
        if dev.health is not None:
            dev.health.read(values, partial(self._value, dev))
        processes = self._read_processes(dev, values, t, pids) if self.options.processes else []
        instances = dev.mig.read(t, NAME, partial(self._value, dev)) if dev.mig else []
        return [Sample(t=t, probe=NAME, labels=dev.labels, values=values), *instances,
                *processes]

    def _value(self, dev: _Device, key: str, functions: Sequence[str], *args: Any) -> Any:
        """One reading, or None. Unsupported: remembered, not asked again. GPU-fatal: raised."""
        if key in dev.absent:
            return None
        try:
            return self._nvml.call_first(functions, *args)
        except nvml.FunctionMissing:
            dev.absent.add(key)
            return None
        except nvml.NVMLError as exc:
            if nvml.is_gpu_fatal(exc):
                raise
            code = nvml.error_code(exc)
            if code in _ABSENT_FOR_GOOD:
                dev.absent.add(key)
            self._nvml.log_once(f"{key}:{dev.index}:{code}", "gpu %d: %s: %s; left out",
                                dev.index, key, nvml.describe(exc))
            return None

    def _read_utilization(self, dev: _Device, values: dict[str, float]) -> None:
        if dev.sample_buffer:
            try:
                value_type, samples = self._nvml.call(
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
                    self._nvml.log_once(f"samples:{dev.index}:{code}",
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
        rates = self._value(dev, "utilization", ("nvmlDeviceGetUtilizationRates",), dev.handle)
        if rates is not None:
            ratio = nvml.percent_ratio(rates.gpu)
            if ratio is not None:
                values["utilization_ratio"] = ratio

    def _read_memory(self, dev: _Device, values: dict[str, float]) -> None:
        memory = None
        v2 = False
        if not self._nvml.is_missing(_MEMORY_V2) and "memory" not in dev.absent:
            try:
                memory = self._nvml.call_variant(_MEMORY_V2, "nvmlDeviceGetMemoryInfo",
                                                 dev.handle, version=nvml.MEMORY_V2)
                v2 = True
            except nvml.FunctionMissing:
                pass
            except TypeError:  # an nvidia-ml-py without the version argument
                self._nvml.mark_missing(_MEMORY_V2, "this nvidia-ml-py is old")
            except nvml.NVMLError as exc:
                if nvml.is_gpu_fatal(exc):
                    raise
                if nvml.error_code(exc) == nvml.ARGUMENT_VERSION_MISMATCH:
                    self._nvml.mark_missing(_MEMORY_V2, "the NVIDIA driver does not know version 2")
        if memory is None:
            memory = self._value(dev, "memory", ("nvmlDeviceGetMemoryInfo",), dev.handle)
            if memory is None:
                return
        values["memory_used_bytes"] = float(memory.used)
        values["memory_total_bytes"] = float(memory.total)
        if v2:
            values["memory_reserved_bytes"] = float(memory.reserved)

    def _read_processes(self, dev: _Device, values: dict[str, float], t: float,
                        pids: set[int]) -> list[Sample]:
        processes = self._value(dev, "processes", _PROCESSES, dev.handle)
        if processes is None:
            return []
        pids.update(int(proc.pid) for proc in processes)
        samples, totals = self._processes.samples(dev.error_labels, processes, t, NAME)
        values.update(totals)
        return samples

    def _drop_gpm(self, dev: _Device) -> None:
        if dev.gpm is not None:
            dev.gpm.close()
            dev.gpm = None
        if dev.mig is not None:
            dev.mig.close()
            dev.mig = None


def create(options: Mapping[str, Any]) -> GpuProbe:
    """Entry point ``ai_bottleneck.probes: gpu``."""
    return GpuProbe(parse_options(Options, options))
