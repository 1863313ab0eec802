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

from ai_bottleneck.probes import nvml
from ai_bottleneck.probes.base import (
    Availability,
    Clock,
    Sample,
    failed,
    one_line,
    option_info,
    parse_options,
)
from ai_bottleneck.probes.gpm import GpmReader
from ai_bottleneck.probes.gpu_device import (
    Device,
    attach_errors,
    prime_sample_cursor,
    read_memory,
    read_utilization,
    read_value,
    text,
)
from ai_bottleneck.probes.gpu_health import HealthReader, fault_values
from ai_bottleneck.probes.gpu_mig import MigReader
from ai_bottleneck.probes.gpu_processes import ProcessReader
from ai_bottleneck.probes.k8s_pods import PodDirectory
from ai_bottleneck.probes.vocabulary import GPU_POWER, GPU_POWER_LIMIT, GPU_TEMPERATURE

NAME = "gpu"
log = logging.getLogger(__name__)

_START_RETRY_SECONDS = 30.0  # how often to retry NVML on a host where it failed to start

# Functions per value, newest first; older ones are fallbacks for older drivers.
_POWER_LIMIT = ("nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetPowerManagementLimit")
_TEMPERATURE = ("nvmlDeviceGetTemperature", "nvmlDeviceGetTemperatureV")
_CLOCKS_EVENT = ("nvmlDeviceGetCurrentClocksEventReasons",
                 "nvmlDeviceGetCurrentClocksThrottleReasons")
_PROCESSES = ("nvmlDeviceGetComputeRunningProcesses",
              "nvmlDeviceGetComputeRunningProcesses_v2")

_FLAGS = tuple((f"clocks_event_{name}_flag", bit) for name, bit in nvml.CLOCKS_EVENT_REASONS)
_KIB = 1024.0  # NVML's PCIe "KB/s" are KiB/s


@dataclass(frozen=True)
class Options:
    timeout_seconds: float = field(default=5.0, metadata=option_info(
        min=0.1, max=120, doc="longest one pass over all GPUs may take"))
    sample_buffer: bool = field(default=True, metadata=option_info(
        doc="average utilization over the driver's samples since the previous pass, so "
            "bursts between passes count; false reads only the driver's latest value"))
    gpm: bool = field(default=True, metadata=option_info(
        doc="read GPM metrics (SM activity and occupancy, tensor and DRAM activity) on GPUs "
            "that have them (Hopper and newer)"))
    pcie: bool = field(default=True, metadata=option_info(
        doc="read PCIe rx/tx throughput; NVML measures each over 20 ms, so this adds about "
            "40 ms per GPU per pass"))
    processes: bool = field(default=True, metadata=option_info(
        doc="list compute processes and the GPU memory each uses"))
    max_processes: int = field(default=32, metadata=option_info(
        min=1, max=1024, doc="process series per GPU, the ones using the most memory; the "
        "rest are folded into one series with pid \"other\""))
    proc_root: str = field(default="/proc", metadata=option_info(
        doc="where the host's /proc is (\"/host/proc\" in a container that mounts it): "
            "each GPU process's cgroup names its container, pod or service"))
    pod_logs_root: str = field(default="/var/log/pods", metadata=option_info(
        doc="the kubelet's pod log directory; its names (and the containers directory "
            "beside it) give pod, namespace and container names"))
    mig: bool = field(default=True, metadata=option_info(
        doc="on GPUs in MIG mode, one sample per GPU instance (memory, GPM metrics)"))
    health: bool = field(default=True, metadata=option_info(
        doc="watch XID error events and read ECC counters, row remapping and retired pages"))


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
        self._devices: list[Device] | None = None
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
                                   + attach_errors(failed_devices))
        names = Counter(d.labels.get("name", "unknown GPU") for d in attached)
        summary = ", ".join(f"{n}x {name}" for name, n in names.items())
        if failed_devices:
            return Availability.yes(f"{len(attached)} of {len(devices)} GPU(s) readable: "
                                    f"{summary}; {attach_errors(failed_devices)}")
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
            self._devices = [Device(i, self.options.sample_buffer) for i in range(count)]
            for dev in self._devices:
                self._attach(dev)
            return None
        self._nvml.stop()
        self._start_error = error
        self._retry_at = now + _START_RETRY_SECONDS
        log.debug("gpu: NVML unavailable: %s", error)
        return error

    def _attach(self, dev: Device) -> None:
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
        labels = {"gpu": str(dev.index), "uuid": text(uuid) if uuid is not None else ""}
        if name is not None:
            labels["name"] = text(name)
        bus_id = getattr(pci, "busId", None) if pci is not None else None
        if bus_id:
            labels["pci_bus_id"] = text(bus_id)
        dev.labels = labels
        if max_mhz is not None and max_mhz > 0:
            dev.sm_clock_max_hertz = float(max_mhz) * 1e6
        dev.handle = handle
        dev.error = ""
        prime_sample_cursor(self._nvml, dev)
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

    def _read(self, dev: Device, t: float, pids: set[int]) -> list[Sample]:
        handle = dev.handle
        values: dict[str, float] = {}
        read_utilization(self._nvml, dev, values)
        read_memory(self._nvml, dev, values)
        power = self._value(dev, "power", ("nvmlDeviceGetPowerUsage",), handle)
        if power is not None:
            values[GPU_POWER] = power / 1000.0
        limit = self._value(dev, "power_limit", _POWER_LIMIT, handle)
        if limit is not None:
            values[GPU_POWER_LIMIT] = limit / 1000.0
        temperature = self._value(dev, "temperature", _TEMPERATURE, handle, nvml.TEMPERATURE_GPU)
        if temperature is not None:
            values[GPU_TEMPERATURE] = float(temperature)
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

    def _value(self, dev: Device, key: str, functions: Sequence[str], *args: Any) -> Any:
        """One reading, or None. Unsupported: remembered, not asked again. GPU-fatal: raised."""
        return read_value(self._nvml, dev, key, functions, *args)

    def _read_processes(self, dev: Device, values: dict[str, float], t: float,
                        pids: set[int]) -> list[Sample]:
        processes = self._value(dev, "processes", _PROCESSES, dev.handle)
        if processes is None:
            return []
        pids.update(int(proc.pid) for proc in processes)
        samples, totals = self._processes.samples(dev.error_labels, processes, t, NAME)
        values.update(totals)
        return samples

    def _drop_gpm(self, dev: Device) -> None:
        if dev.gpm is not None:
            dev.gpm.close()
            dev.gpm = None
        if dev.mig is not None:
            dev.mig.close()
            dev.mig = None


def create(options: Mapping[str, Any]) -> GpuProbe:
    """Entry point ``ai_bottleneck.probes: gpu``."""
    return GpuProbe(parse_options(Options, options))
