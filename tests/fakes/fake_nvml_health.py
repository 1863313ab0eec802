"""The fake NVML's health calls: XID events, ECC counters, row remapping, retired pages.

Mixed into ``FakeNvml`` (tests/fakes/fake_nvml.py); readings come from the
``FakeGpu`` fields ``xid_events``, ``ecc``, ``remapped_rows``, ``retired_pages``
(tests/fakes/nvml_state.py). Like the library:

- ``nvmlEventSetWait_v2(set, timeout_ms)`` hands out one event at a time, the
  oldest first, and raises NVMLError_Timeout when none is waiting; the fake never
  blocks, and records the set of timeouts asked for (``event_wait_timeouts``) so a
  test can hold the probe to a zero timeout (a set, not a list: the soak benchmark
  calls it 80 times a second for an hour);
- an XID event is ``eventType = nvmlEventTypeXidCriticalError``, ``eventData`` the XID;
- ``ecc``/``remapped_rows``/``retired_pages`` set to None: NVMLError_NotSupported
  (ECC off, a GPU before Ampere has no row remapping, one from Ampere on no page
  retirement).
"""

from __future__ import annotations

from typing import Any

import pynvml

_ECC_KEYS = {
    (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC): "corrected_volatile",
    (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC): "uncorrected_volatile",
    (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC): "corrected_aggregate",
    (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_AGGREGATE_ECC):
        "uncorrected_aggregate",
}
_RETIRED_KEYS = {
    pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS: "single_bit",
    pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR: "double_bit",
}


def _err(code: int) -> Exception:
    return pynvml.NVMLError(code)  # type: ignore[no-any-return]


class FakeEventSet:
    """What nvmlEventSetCreate hands out."""

    def __init__(self) -> None:
        self.devices: list[int] = []  # GPU indexes registered
        self.freed = False


class FakeEventData:
    """Shaped like pynvml.c_nvmlEventData_t."""

    def __init__(self, device: Any, event_type: int, data: int) -> None:
        self.device = device
        self.eventType = event_type
        self.eventData = data
        self.gpuInstanceId = 0xFFFFFFFF
        self.computeInstanceId = 0xFFFFFFFF


class HealthCalls:
    """NVML's health functions; expects FakeNvml's ``_library``, ``_device``, ``_states``,
    ``gpus``."""

    _library: Any
    _device: Any
    _states: Any
    gpus: Any

    def _health_init(self) -> None:
        self.event_sets_live: set[int] = set()
        self.event_wait_timeouts: set[int] = set()

    def xid(self, index: int, *codes: int) -> None:
        """The driver reports XID ``codes`` on GPU ``index`` (delivered by the next waits)."""
        self.gpus[index].xid_events.extend(codes)

    def nvmlEventSetCreate(self) -> FakeEventSet:
        self._library("nvmlEventSetCreate")
        event_set = FakeEventSet()
        self.event_sets_live.add(id(event_set))
        return event_set

    def nvmlDeviceRegisterEvents(self, handle: Any, eventTypes: int,
                                 eventSet: FakeEventSet) -> None:
        self._device(handle, "nvmlDeviceRegisterEvents")
        if eventSet.freed or eventTypes & ~pynvml.nvmlEventTypeAll:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not eventTypes & pynvml.nvmlEventTypeXidCriticalError:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)  # the fake only raises XID events
        eventSet.devices.append(handle.index)

    def nvmlEventSetWait_v2(self, eventSet: FakeEventSet, timeoutms: int) -> FakeEventData:
        self._library("nvmlEventSetWait_v2")
        self.event_wait_timeouts.add(timeoutms)
        if eventSet.freed:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        for index in eventSet.devices:
            gpu = self.gpus[index]
            state = self._states[index]
            if state.xids_delivered < len(gpu.xid_events):
                code = gpu.xid_events[state.xids_delivered]
                state.xids_delivered += 1
                return FakeEventData(state.handle, pynvml.nvmlEventTypeXidCriticalError,
                                     int(code))
        raise _err(pynvml.NVML_ERROR_TIMEOUT)

    def nvmlEventSetFree(self, eventSet: FakeEventSet) -> None:
        self._library("nvmlEventSetFree")
        if eventSet.freed:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        eventSet.freed = True
        self.event_sets_live.discard(id(eventSet))

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, errorType: int,
                                    counterType: int) -> int:
        gpu = self._device(handle, "nvmlDeviceGetTotalEccErrors")
        key = _ECC_KEYS.get((errorType, counterType))
        if key is None:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if gpu.ecc is None:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(gpu.ecc.get(key, 0))

    def nvmlDeviceGetRemappedRows(self, device: Any) -> tuple[int, int, int, int]:
        gpu = self._device(device, "nvmlDeviceGetRemappedRows")
        rows = gpu.remapped_rows
        if rows is None:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return (int(rows.get("correctable", 0)), int(rows.get("uncorrectable", 0)),
                int(rows.get("pending", 0)), int(rows.get("failure", 0)))

    def nvmlDeviceGetRetiredPages(self, device: Any, sourceFilter: int) -> list[int]:
        gpu = self._device(device, "nvmlDeviceGetRetiredPages")
        key = _RETIRED_KEYS.get(sourceFilter)
        if key is None:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if gpu.retired_pages is None:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [0x1000 * (i + 1) for i in range(int(gpu.retired_pages.get(key, 0)))]

    def nvmlDeviceGetRetiredPagesPendingStatus(self, device: Any) -> int:
        gpu = self._device(device, "nvmlDeviceGetRetiredPagesPendingStatus")
        if gpu.retired_pages is None:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(gpu.retired_pages.get("pending", 0))
