"""GPU health for one GPU: XID events, ECC error counters, row remapping and retired
pages, and the GPU's health state.

The GPU probe (probes/gpu.py) keeps one ``HealthReader`` per GPU and lets it add
its values to every GPU sample. XID errors arrive as NVML events: the reader
registers the GPU for ``nvmlEventTypeXidCriticalError`` in an event set of its
own and, each pass, drains what arrived with a zero timeout, so sampling never
waits for an event. The health state (``ok``, ``degraded``, ``reset_required``,
``lost``) is a pure function of the values, so the exporter's state set and the
classifier read the same thing (docs/probes.md, docs/classifier.md).

Which XIDs mean what follows NVIDIA's XID catalogue ("Analyzing Xid Errors with
the Xid Catalog", Ampere and newer) and its A100/H100 memory error management
guide: XIDs whose immediate action is a GPU reset or a reboot put the GPU in
``reset_required`` until the agent restarts (a reset needs every NVML client,
this agent included, to let go of the GPU); XID 79 is a GPU fallen off the bus.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

from ai_bottleneck.probes import nvml
from ai_bottleneck.probes.vocabulary import (
    ECC_UNCORRECTED_VOLATILE_TOTAL,
    RETIRED_PAGES_PENDING,
    ROW_REMAP_FAILURE,
    ROW_REMAP_PENDING,
    XID_ERRORS_TOTAL,
    XID_LAST_CODE,
    XID_RESET_REQUIRED_TOTAL,
)

log = logging.getLogger(__name__)

#: XIDs after which the GPU needs a reset (or the node a reboot) before it can be
#: trusted again, with the catalogue's meaning.
XID_RESET_REQUIRED: Mapping[int, str] = {
    48: "double-bit (uncorrectable) ECC error",
    64: "row remapping / page retirement failed to be recorded",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}
#: XIDs about failing hardware that do not stop the GPU: a warning, not a fault.
XID_WARNING: Mapping[int, str] = {
    63: "row remapping recorded; it takes effect at the next GPU reset",
    92: "high single-bit ECC error rate",
    94: "contained ECC error: the application that hit it must restart",
}
XID_FELL_OFF_THE_BUS = 79
MAX_EVENTS_PER_PASS = 64  # a storm of XIDs must not turn one pass into a long loop


class HealthState(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"              # pending row remap / page retirement, remap failure
    RESET_REQUIRED = "reset_required"  # reset-class XID, uncorrectable ECC, NVML says so
    LOST = "lost"                      # fell off the bus (NVML GPU_IS_LOST or XID 79)


HEALTH_STATES: tuple[str, ...] = tuple(s.value for s in HealthState)
FLAG_PREFIX, FLAG_SUFFIX = "health_", "_flag"


def state_values(state: HealthState) -> dict[str, float]:
    """The one-hot ``health_<state>_flag`` values of a sample."""
    return {f"{FLAG_PREFIX}{s}{FLAG_SUFFIX}": 1.0 if s == state.value else 0.0
            for s in HEALTH_STATES}


#: Each state with its flag's name, in the order ``state_of`` asks (read per sample).
_STATE_FLAGS = tuple((s, f"{FLAG_PREFIX}{s.value}{FLAG_SUFFIX}") for s in HealthState)
#: The names of every state's flag.
HEALTH_FLAGS = frozenset(flag for _, flag in _STATE_FLAGS)


def state_of(values: Mapping[str, float]) -> HealthState | None:
    """The health state a sample's flags say, or None when it carries none."""
    get = values.get
    for s, flag in _STATE_FLAGS:
        if get(flag) == 1.0:
            return s
    return None


def fault_values(exc: BaseException) -> dict[str, float]:
    """Health values for a GPU that could not be read because of ``exc``."""
    code = nvml.error_code(exc)
    if code == nvml.GPU_IS_LOST:
        return state_values(HealthState.LOST)
    if code == nvml.RESET_REQUIRED:
        return state_values(HealthState.RESET_REQUIRED)
    return {}


def xid_text(code: int) -> str:
    meaning = XID_RESET_REQUIRED.get(code) or XID_WARNING.get(code)
    return f"XID {code} ({meaning})" if meaning else f"XID {code}"


#: (value name, error type, counter type) of nvmlDeviceGetTotalEccErrors.
ECC_COUNTERS = (
    ("ecc_corrected_volatile_errors_total", nvml.ECC_CORRECTED, nvml.ECC_VOLATILE),
    (ECC_UNCORRECTED_VOLATILE_TOTAL, nvml.ECC_UNCORRECTED, nvml.ECC_VOLATILE),
    ("ecc_corrected_aggregate_errors_total", nvml.ECC_CORRECTED, nvml.ECC_AGGREGATE),
    ("ecc_uncorrected_aggregate_errors_total", nvml.ECC_UNCORRECTED, nvml.ECC_AGGREGATE),
)

#: ``value(key, functions, *args)``: one reading or None (probes/gpu.py's rules for
#: unsupported values); raises NVMLError only when the GPU is gone.
ValueReader = Callable[..., Any]


class HealthReader:
    """XID events and health counters of one GPU; ``close()`` frees its event set."""

    def __init__(self, session: nvml.NvmlSession, handle: Any, index: int) -> None:
        self._nvml = session
        self.handle = handle
        self._index = index
        self._events: Any = None
        self.xid_total = 0
        self.xid_reset_total = 0
        self.last_xid: int | None = None
        self.reset_reason: str | None = None  # set by a reset-class XID; kept until restart
        self.lost_by_xid = False
        self._register()

    def _register(self) -> None:
        created = None
        try:
            created = self._nvml.call("nvmlEventSetCreate")
            self._nvml.call("nvmlDeviceRegisterEvents", self.handle,
                            nvml.EVENT_TYPE_XID_CRITICAL_ERROR, created)
        except nvml.FunctionMissing:
            pass
        except nvml.NVMLError as exc:
            if nvml.is_gpu_fatal(exc):
                self._free(created)
                raise
            self._nvml.log_once(f"xid:{self._index}", "gpu %d: no XID events: %s",
                                self._index, nvml.describe(exc))
        else:
            self._events = created
            return
        self._free(created)

    @property
    def events(self) -> bool:
        return self._events is not None

    def read(self, values: dict[str, float], value: ValueReader) -> None:
        """Add this pass's health values (and the state flags) to ``values``."""
        self._drain_events()
        if self._events is not None:
            values[XID_ERRORS_TOTAL] = float(self.xid_total)
            values[XID_RESET_REQUIRED_TOTAL] = float(self.xid_reset_total)
        if self.last_xid is not None:
            values[XID_LAST_CODE] = float(self.last_xid)
        for key, error_type, counter_type in ECC_COUNTERS:
            count = value(key, ("nvmlDeviceGetTotalEccErrors",), self.handle, error_type,
                          counter_type)
            if count is not None:
                values[key] = float(count)
        rows = value("remapped_rows", ("nvmlDeviceGetRemappedRows",), self.handle)
        if rows is not None:
            correctable, uncorrectable, pending, failure = (int(v) for v in rows)
            values["remapped_rows_correctable"] = float(correctable)
            values["remapped_rows_uncorrectable"] = float(uncorrectable)
            values[ROW_REMAP_PENDING] = 1.0 if pending else 0.0
            values[ROW_REMAP_FAILURE] = 1.0 if failure else 0.0
        for key, cause in (("retired_pages_single_bit", nvml.RETIRED_MULTIPLE_SBE),
                           ("retired_pages_double_bit", nvml.RETIRED_DBE)):
            pages = value(key, ("nvmlDeviceGetRetiredPages",), self.handle, cause)
            if pages is not None:
                values[key] = float(len(pages))
        pending_pages = value("retired_pages_pending", ("nvmlDeviceGetRetiredPagesPendingStatus",),
                              self.handle)
        if pending_pages is not None:
            values[RETIRED_PAGES_PENDING] = 1.0 if int(pending_pages) else 0.0
        values.update(state_values(self.state(values)))

    def state(self, values: Mapping[str, float]) -> HealthState:
        if self.lost_by_xid:
            return HealthState.LOST
        if self.reset_reason is not None or values.get(ECC_UNCORRECTED_VOLATILE_TOTAL):
            return HealthState.RESET_REQUIRED
        if any(values.get(k) for k in (ROW_REMAP_PENDING, ROW_REMAP_FAILURE,
                                       RETIRED_PAGES_PENDING)):
            return HealthState.DEGRADED
        return HealthState.OK

    def _drain_events(self) -> None:
        if self._events is None:
            return
        for _ in range(MAX_EVENTS_PER_PASS):
            try:
                data = self._nvml.call("nvmlEventSetWait_v2", self._events, 0)
            except nvml.FunctionMissing:
                self.close()
                return
            except nvml.NVMLError as exc:
                if nvml.error_code(exc) == nvml.TIMEOUT:
                    return  # nothing (more) arrived: the normal answer
                if nvml.is_gpu_fatal(exc):
                    raise
                self._nvml.log_once(f"xid-wait:{self._index}:{nvml.error_code(exc)}",
                                    "gpu %d: reading XID events: %s", self._index,
                                    nvml.describe(exc))
                return
            if int(getattr(data, "eventType", 0)) & nvml.EVENT_TYPE_XID_CRITICAL_ERROR:
                self._xid(int(data.eventData))

    def _xid(self, code: int) -> None:
        self.xid_total += 1
        self.last_xid = code
        if code in XID_RESET_REQUIRED:
            self.xid_reset_total += 1
            self.reset_reason = xid_text(code)
            self.lost_by_xid = self.lost_by_xid or code == XID_FELL_OFF_THE_BUS
        log.warning("gpu %d: %s", self._index, xid_text(code))

    def close(self) -> None:
        events, self._events = self._events, None
        self._free(events)

    def _free(self, events: Any) -> None:
        if events is None:
            return
        try:
            self._nvml.call("nvmlEventSetFree", events)
        except Exception as exc:  # nothing to do about it; the driver frees at shutdown
            log.debug("gpu: nvmlEventSetFree failed: %s", exc)
