"""MIG (Multi-Instance GPU) instances of one GPU: one sample per GPU instance.

Where a GPU runs in MIG mode (``nvmlDeviceGetMigMode``), its work happens in
instances the whole-GPU figures do not separate (NVML gives no utilization for a
GPU in MIG mode). The GPU probe keeps one ``MigReader`` per such GPU: it lists
the MIG devices once (``nvmlDeviceGetMaxMigDeviceCount``,
``nvmlDeviceGetMigDeviceHandleByIndex``), one per GPU instance (compute
instances of one GPU instance share its memory and its GPM counters), and each
pass reads the instance's memory and, where the driver offers it, its GPM
metrics (``nvmlGpmMigSampleGet`` on the parent GPU). Samples carry the GPU's
labels plus ``mig`` (the GPU instance id), ``mig_uuid`` and the instance's
``name`` (with its profile, e.g. ``... MIG 3g.40gb``). Instances are listed at
attach: re-partitioning a GPU needs it idle, and the agent picks the new layout
up when the GPU is next attached (after a loss) or the agent restarts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ai_bottleneck.probes import nvml
from ai_bottleneck.probes.base import Clock, Sample
from ai_bottleneck.probes.gpm import GpmReader
from ai_bottleneck.probes.vocabulary import (
    GPU_MEMORY_TOTAL,
    GPU_MEMORY_USED,
    MIG_LABEL,
)

#: ``value(key, functions, *args)`` of probes/gpu.py: a reading or None; raises only
#: NVMLError for a GPU that is gone.
ValueReader = Callable[..., Any]
_NO_DEVICE = frozenset({nvml.NOT_FOUND, nvml.INVALID_ARGUMENT})  # an empty MIG slot


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip("\x00 ")


class MigInstance:
    __slots__ = ("gpm", "gpu_instance_id", "handle", "labels")

    def __init__(self, handle: Any, gpu_instance_id: int, labels: dict[str, str]) -> None:
        self.handle = handle
        self.gpu_instance_id = gpu_instance_id
        self.labels = labels
        self.gpm: GpmReader | None = None


class MigReader:
    """The MIG instances of one GPU. Build with ``open``."""

    def __init__(self, instances: list[MigInstance]) -> None:
        self.instances = instances

    @classmethod
    def open(cls, session: nvml.NvmlSession, handle: Any, gpu_labels: dict[str, str],
             index: int, monotonic: Clock, *, gpm: bool) -> MigReader | None:
        """The GPU's MIG instances, or None where MIG is off or unknown to this GPU or
        driver. Raises NVMLError only for GPU-fatal errors."""
        try:
            current, _pending = session.call("nvmlDeviceGetMigMode", handle)
            if int(current) != nvml.MIG_ENABLED:
                return None
            slots = int(session.call("nvmlDeviceGetMaxMigDeviceCount", handle))
        except nvml.FunctionMissing:
            return None
        except nvml.NVMLError as exc:
            if nvml.is_gpu_fatal(exc):
                raise
            return None  # NotSupported: a GPU without MIG
        instances: dict[int, MigInstance] = {}
        reader = cls([])
        try:
            for slot in range(slots):
                found = _instance(session, handle, slot, gpu_labels)
                if found is not None and found.gpu_instance_id not in instances:
                    instances[found.gpu_instance_id] = found
                    reader.instances.append(found)
                    if gpm:
                        found.gpm = GpmReader.open(session, handle, index, monotonic,
                                                   gpu_instance_id=found.gpu_instance_id)
        except BaseException:
            reader.close()  # GPM buffers already taken are ours to free
            raise
        session.log_once(f"mig:{index}", "gpu %d: MIG mode, %d GPU instance(s)", index,
                         len(reader.instances))
        return reader

    def read(self, t: float, probe: str, value: ValueReader) -> list[Sample]:
        out = []
        for inst in self.instances:
            values: dict[str, float] = {}
            memory = value(f"mig_memory:{inst.gpu_instance_id}", ("nvmlDeviceGetMemoryInfo",),
                           inst.handle)
            if memory is not None:
                values[GPU_MEMORY_USED] = float(memory.used)
                values[GPU_MEMORY_TOTAL] = float(memory.total)
            gpm = inst.gpm
            values["gpm_available"] = 1.0 if gpm is not None and gpm.read(values) else 0.0
            if gpm is not None and gpm.closed:
                inst.gpm = None
            out.append(Sample(t=t, probe=probe, labels=inst.labels, values=values))
        return out

    def close(self) -> None:
        for inst in self.instances:
            if inst.gpm is not None:
                inst.gpm.close()
                inst.gpm = None


def _instance(session: nvml.NvmlSession, handle: Any, slot: int,
              gpu_labels: dict[str, str]) -> MigInstance | None:
    try:
        mig = session.call("nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)
        gpu_instance_id = int(session.call("nvmlDeviceGetGpuInstanceId", mig))
    except nvml.FunctionMissing:
        return None
    except nvml.NVMLError as exc:
        if nvml.is_gpu_fatal(exc):
            raise
        if nvml.error_code(exc) not in _NO_DEVICE:
            session.log_once(f"mig-slot:{slot}:{nvml.error_code(exc)}",
                             "MIG slot %d: %s", slot, nvml.describe(exc))
        return None
    labels = {"gpu": gpu_labels["gpu"], "uuid": gpu_labels["uuid"], MIG_LABEL: str(gpu_instance_id)}
    for key, function in (("mig_uuid", "nvmlDeviceGetUUID"), ("name", "nvmlDeviceGetName")):
        try:
            labels[key] = _text(session.call(function, mig))
        except nvml.FunctionMissing:
            pass
        except nvml.NVMLError as exc:
            if nvml.is_gpu_fatal(exc):
                raise
    return MigInstance(mig, gpu_instance_id, labels)
