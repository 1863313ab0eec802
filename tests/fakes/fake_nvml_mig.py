"""The fake NVML's MIG calls, mixed into ``FakeNvml`` (tests/fakes/fake_nvml.py).

A GPU whose ``FakeGpu.mig`` is a list of ``FakeMigInstance`` is in MIG mode.
Like the library: ``nvmlDeviceGetMigMode`` gives ``[current, pending]``;
``nvmlDeviceGetMaxMigDeviceCount`` 7 (H100); ``nvmlDeviceGetMigDeviceHandleByIndex``
a MIG device handle, NVMLError_NotFound for an empty slot; on a MIG handle the
ordinary device calls (UUID, name, memory) answer for the instance and the ones
NVML does not support on MIG devices raise NotSupported; on the parent in MIG
mode utilization and whole-GPU GPM samples are NotSupported, and
``nvmlGpmMigSampleGet(parent, gpu_instance_id, sample)`` samples one instance.
A lost parent loses its instances.
"""

from __future__ import annotations

from typing import Any

import pynvml

from tests.fakes.nvml_state import FakeGpu, FakeMigInstance

MAX_MIG_DEVICES = 7
#: Calls NVML does not answer for a MIG device handle.
MIG_DEVICE_UNSUPPORTED = frozenset({
    "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetSamples", "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetPowerManagementLimit",
    "nvmlDeviceGetTemperature", "nvmlDeviceGetTemperatureV", "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetPcieThroughput", "nvmlGpmSampleGet",
})
#: Calls NVML does not answer for a GPU in MIG mode (the instances have the figures).
MIG_PARENT_UNSUPPORTED = frozenset({
    "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetSamples", "nvmlGpmSampleGet",
})


def _err(code: int) -> Exception:
    return pynvml.NVMLError(code)  # type: ignore[no-any-return]


class FakeMigHandle:
    """A MIG device handle: the parent GPU's index and the MIG slot."""

    __slots__ = ("index", "slot")

    def __init__(self, index: int, slot: int) -> None:
        self.index = index
        self.slot = slot

    def __repr__(self) -> str:
        return f"FakeMigHandle({self.index}, {self.slot})"


class MigCalls:
    """NVML's MIG functions; expects FakeNvml's ``_device``, ``_check_device`` and
    ``_now_us``."""

    _device: Any
    _check_device: Any
    _now_us: Any

    def _mig_view(self, handle: FakeMigHandle, name: str) -> FakeGpu:
        """A MIG handle's instance, shaped as a FakeGpu for the ordinary device calls."""
        inst = self._instance(handle, name)
        return FakeGpu(name=inst.name, uuid=inst.uuid, memory_used_bytes=inst.memory_used_bytes,
                       memory_total_bytes=inst.memory_total_bytes, memory_reserved_bytes=0,
                       gpm=inst.gpm, unsupported=sorted(MIG_DEVICE_UNSUPPORTED))

    def _instance(self, handle: FakeMigHandle, name: str) -> FakeMigInstance:
        parent = self._check_device(handle.index, name)
        if parent.mig is None or handle.slot >= len(parent.mig):
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)  # MIG turned off since
        return parent.mig[handle.slot]  # type: ignore[no-any-return]

    def nvmlDeviceGetMigMode(self, device: Any) -> list[int]:
        gpu = self._device(device, "nvmlDeviceGetMigMode")
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if gpu.mig is not None else 0
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, device: Any) -> int:
        gpu = self._device(device, "nvmlDeviceGetMaxMigDeviceCount")
        return MAX_MIG_DEVICES if gpu.mig is not None else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: Any, index: int) -> FakeMigHandle:
        gpu = self._device(device, "nvmlDeviceGetMigDeviceHandleByIndex")
        if gpu.mig is None or not 0 <= index < MAX_MIG_DEVICES:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(gpu.mig):
            raise _err(pynvml.NVML_ERROR_NOT_FOUND)
        return FakeMigHandle(device.index, index)

    def nvmlDeviceGetGpuInstanceId(self, device: Any) -> int:
        if not isinstance(device, FakeMigHandle):
            self._device(device, "nvmlDeviceGetGpuInstanceId")
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._instance(device, "nvmlDeviceGetGpuInstanceId").gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, device: Any) -> int:
        if not isinstance(device, FakeMigHandle):
            self._device(device, "nvmlDeviceGetComputeInstanceId")
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._instance(device, "nvmlDeviceGetComputeInstanceId").compute_instance_id

    def nvmlGpmMigSampleGet(self, device: Any, gpuInstanceId: int, gpmSample: Any) -> Any:
        gpu = self._device(device, "nvmlGpmMigSampleGet")
        found = [m for m in gpu.mig or () if m.gpu_instance_id == gpuInstanceId]
        if not found or gpmSample.freed:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if found[0].gpm is None:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        gpmSample.index = (device.index, gpuInstanceId)
        gpmSample.taken_us = self._now_us()
        gpmSample.values = dict(found[0].gpm)
        return gpmSample
