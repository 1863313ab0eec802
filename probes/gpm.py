"""GPM (GPU Performance Monitoring, Hopper and newer) metrics for one GPU.

GPM metrics describe an interval between two GPM samples. A ``GpmReader``
keeps two sample buffers per GPU and uses them in turn: each ``read()`` takes
a new sample and asks NVML for the metrics between it and the previous one,
so every pass reports the interval since the pass before. For a MIG instance the
samples are taken with ``nvmlGpmMigSampleGet`` on the parent GPU and the GPU
instance id (probes/gpu_mig.py).
"""

from __future__ import annotations

import logging
from typing import Any

from ai_bottleneck.probes import nvml
from ai_bottleneck.probes.base import Clock
from ai_bottleneck.probes.vocabulary import GPU_DRAM_ACTIVE, GPU_SM_ACTIVE

log = logging.getLogger(__name__)

MIN_GAP_SECONDS = 0.1  # NVML: GPM samples closer than 100 ms give no meaningful metrics

#: (value name, GPM metric id); NVML gives each in percent.
METRICS = (
    (GPU_SM_ACTIVE, nvml.GPM_METRIC_SM_UTIL),
    ("sm_occupancy_ratio", nvml.GPM_METRIC_SM_OCCUPANCY),
    ("tensor_active_ratio", nvml.GPM_METRIC_ANY_TENSOR_UTIL),
    (GPU_DRAM_ACTIVE, nvml.GPM_METRIC_DRAM_BW_UTIL),
)
_GIVE_UP = frozenset({nvml.NOT_SUPPORTED, nvml.NO_PERMISSION})


class GpmReader:
    """GPM for one GPU. Build with ``open``; ``closed`` once GPM turned out unusable."""

    def __init__(self, session: nvml.NvmlSession, handle: Any, index: int, *,
                 buffers: list[Any], request: Any, monotonic: Clock,
                 gpu_instance_id: int | None = None) -> None:
        self._nvml = session
        self._handle = handle
        self._gpu_instance_id = gpu_instance_id
        self._index = index
        self._buffers = buffers
        self._request = request
        self._monotonic = monotonic
        self._newest = 0
        self._taken_at: float | None = None

    @property
    def closed(self) -> bool:
        return not self._buffers

    @classmethod
    def open(cls, session: nvml.NvmlSession, handle: Any, index: int,
             monotonic: Clock, gpu_instance_id: int | None = None) -> GpmReader | None:
        """A reader with its first sample taken, or None where the GPU has no usable GPM.
        ``gpu_instance_id``: read that MIG instance of the GPU ``handle``.

        Raises NVMLError only for GPU-fatal errors (the GPU is gone).
        """
        try:
            support = session.call("nvmlGpmQueryDeviceSupport", handle)
        except nvml.FunctionMissing:
            return None
        except nvml.NVMLError as exc:
            if nvml.is_gpu_fatal(exc):
                raise
            session.log_once(f"gpm:{index}", "gpu %d: no GPM: %s", index, nvml.describe(exc))
            return None
        if not getattr(support, "isSupportedDevice", 0):
            return None
        buffers: list[Any] = []
        try:
            for _ in range(2):
                buffers.append(session.call("nvmlGpmSampleAlloc"))
            request = session.backend.c_nvmlGpmMetricsGet_t()
            request.version = nvml.GPM_METRICS_GET_VERSION
            request.numMetrics = len(METRICS)
            for i, (_, metric_id) in enumerate(METRICS):
                request.metrics[i].metricId = metric_id
        except (nvml.FunctionMissing, nvml.NVMLError, AttributeError) as exc:
            session.log_once(f"gpm:{index}", "gpu %d: no GPM: %s", index, nvml.describe(exc))
            for buffer in buffers:
                _free(session, buffer)
            return None
        reader = cls(session, handle, index, buffers=buffers, request=request,
                     monotonic=monotonic, gpu_instance_id=gpu_instance_id)
        # The first sample now, so that the first pass already has an interval. The GPU
        # can be lost right here: the buffers are ours to free before the error goes up.
        try:
            reader.read({})
        except BaseException:
            reader.close()
            raise
        return None if reader.closed else reader

    def read(self, values: dict[str, float]) -> bool:
        """Take a sample; put the metrics since the previous one into ``values``.

        True when at least one metric was read. Raises NVMLError for GPU-fatal errors.
        """
        if self.closed:
            return False
        now = self._monotonic()
        if self._taken_at is not None and now - self._taken_at < MIN_GAP_SECONDS:
            return False
        previous = self._newest
        current = 1 - previous
        if self._gpu_instance_id is None:
            taken = self._call("nvmlGpmSampleGet", self._handle, self._buffers[current])
        else:
            taken = self._call("nvmlGpmMigSampleGet", self._handle, self._gpu_instance_id,
                               self._buffers[current])
        if not taken:
            return False
        first = self._taken_at is None
        self._newest, self._taken_at = current, now
        if first:
            return False
        request = self._request
        request.sample1 = self._buffers[previous]
        request.sample2 = self._buffers[current]
        if not self._call("nvmlGpmMetricsGet", request):
            return False
        read = False
        for i, (key, _) in enumerate(METRICS):
            metric = request.metrics[i]
            if metric.nvmlReturn == 0:
                ratio = nvml.percent_ratio(metric.value)
                if ratio is not None:
                    values[key] = ratio
                    read = True
        return read

    def close(self) -> None:
        buffers, self._buffers = self._buffers, []
        for buffer in buffers:
            _free(self._nvml, buffer)

    def _call(self, function: str, *args: Any) -> bool:
        try:
            self._nvml.call(function, *args)
            return True
        except nvml.FunctionMissing:
            self.close()
        except nvml.NVMLError as exc:
            if nvml.is_gpu_fatal(exc):
                raise
            code = nvml.error_code(exc)
            if code in _GIVE_UP:
                self.close()
            self._nvml.log_once(f"gpm:{self._index}:{code}", "gpu %d: GPM %s: %s",
                                self._index, function, nvml.describe(exc))
        return False


def _free(session: nvml.NvmlSession, buffer: Any) -> None:
    try:
        session.call("nvmlGpmSampleFree", buffer)
    except Exception as exc:  # nothing to do about it; the driver frees at shutdown
        log.debug("gpu: nvmlGpmSampleFree failed: %s", exc)
