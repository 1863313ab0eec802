"""The one entry point into NVML, the NVIDIA Management Library.

Everything in ai-bottleneck that talks to the GPU driver goes through an
``NvmlSession``: it initialises NVML lazily, once, under a lock; shuts it down
at exit (or on ``stop()``); turns start-up failures into one line a person can
act on; and finds the functions this driver and this binding actually have,
falling back to older ones and logging each gap once.

The backend is the ``pynvml`` module (package nvidia-ml-py) unless a caller
passes another pynvml-shaped object (tests do) or the environment variable
``AI_BOTTLENECK_NVML_BACKEND="module:callable"`` names a factory for one
(subprocess tests and the scenario lab do). Whatever the backend, errors are
the real ``pynvml.NVMLError`` classes, so this module classifies them.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pynvml  # pure-Python bindings: importing them does not load the driver library

from ai_bottleneck.probes.base import one_line

BACKEND_ENV = "AI_BOTTLENECK_NVML_BACKEND"

log = logging.getLogger(__name__)

NVMLError: type[Exception] = pynvml.NVMLError

# Constants the probes need, re-exported so that nothing else imports pynvml.
NOT_SUPPORTED: int = pynvml.NVML_ERROR_NOT_SUPPORTED
NO_PERMISSION: int = pynvml.NVML_ERROR_NO_PERMISSION
NOT_FOUND: int = pynvml.NVML_ERROR_NOT_FOUND
INVALID_ARGUMENT: int = pynvml.NVML_ERROR_INVALID_ARGUMENT
FUNCTION_NOT_FOUND: int = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
ARGUMENT_VERSION_MISMATCH: int = pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
GPU_UTILIZATION_SAMPLES: int = pynvml.NVML_GPU_UTILIZATION_SAMPLES
GPU_IS_LOST: int = pynvml.NVML_ERROR_GPU_IS_LOST
RESET_REQUIRED: int = pynvml.NVML_ERROR_RESET_REQUIRED
TIMEOUT: int = pynvml.NVML_ERROR_TIMEOUT
EVENT_TYPE_XID_CRITICAL_ERROR: int = pynvml.nvmlEventTypeXidCriticalError
ECC_CORRECTED: int = pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
ECC_UNCORRECTED: int = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
ECC_VOLATILE: int = pynvml.NVML_VOLATILE_ECC
ECC_AGGREGATE: int = pynvml.NVML_AGGREGATE_ECC
RETIRED_MULTIPLE_SBE: int = pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
RETIRED_DBE: int = pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR
MIG_ENABLED: int = pynvml.NVML_DEVICE_MIG_ENABLE
TEMPERATURE_GPU: int = pynvml.NVML_TEMPERATURE_GPU
CLOCK_SM: int = pynvml.NVML_CLOCK_SM
PCIE_UTIL_RX_BYTES: int = pynvml.NVML_PCIE_UTIL_RX_BYTES
PCIE_UTIL_TX_BYTES: int = pynvml.NVML_PCIE_UTIL_TX_BYTES
MEMORY_V2: int = pynvml.nvmlMemory_v2
GPM_METRICS_GET_VERSION: int = pynvml.NVML_GPM_METRICS_GET_VERSION
GPM_METRIC_SM_UTIL: int = pynvml.NVML_GPM_METRIC_SM_UTIL
GPM_METRIC_SM_OCCUPANCY: int = pynvml.NVML_GPM_METRIC_SM_OCCUPANCY
GPM_METRIC_ANY_TENSOR_UTIL: int = pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL
GPM_METRIC_DRAM_BW_UTIL: int = pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL


def _reason_bit(suffix: str) -> int:
    # Drivers from R535 call them "clocks event reasons"; older bindings only
    # have the "throttle reason" names for the same bits.
    return int(getattr(pynvml, "nvmlClocksEventReason" + suffix,
                       getattr(pynvml, "nvmlClocksThrottleReason" + suffix)))


#: Named clocks-event (throttle) reasons: (value-name part, bit).
CLOCKS_EVENT_REASONS: tuple[tuple[str, int], ...] = tuple(
    (name, _reason_bit(suffix)) for name, suffix in (
        ("gpu_idle", "GpuIdle"),
        ("applications_clocks_setting", "ApplicationsClocksSetting"),
        ("sw_power_cap", "SwPowerCap"),
        ("hw_slowdown", "HwSlowdown"),
        ("sync_boost", "SyncBoost"),
        ("sw_thermal_slowdown", "SwThermalSlowdown"),
        ("hw_thermal_slowdown", "HwThermalSlowdown"),
        ("hw_power_brake_slowdown", "HwPowerBrakeSlowdown"),
        ("display_clock_setting", "DisplayClockSetting"),
    ))

#: Which field of the nvmlValue_t union holds a sample, by nvmlValueType_t.
SAMPLE_VALUE_FIELDS: dict[int, str] = {
    pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
}

# Errors after which nothing more can be read from a GPU until it is reset or
# the driver recovers: the GPU reports the error, the other GPUs go on.
_GPU_FATAL = frozenset({
    pynvml.NVML_ERROR_GPU_IS_LOST,
    pynvml.NVML_ERROR_RESET_REQUIRED,
    pynvml.NVML_ERROR_UNINITIALIZED,
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    pynvml.NVML_ERROR_GPU_NOT_FOUND,
})

_ADVICE = {
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
        "no NVIDIA driver: NVML library libnvidia-ml.so.1 not found "
        "(install the NVIDIA driver, or run where one is installed)",
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED:
        "NVIDIA driver not loaded: load the nvidia kernel module (check with nvidia-smi)",
    pynvml.NVML_ERROR_NO_PERMISSION:
        "no permission to use the NVIDIA driver: run as a user that may open /dev/nvidia*",
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        "NVML library and NVIDIA kernel driver versions differ (driver updated without "
        "reboot): reboot or reload the nvidia module",
    pynvml.NVML_ERROR_OPERATING_SYSTEM:
        "the operating system blocked access to the NVIDIA driver",
    pynvml.NVML_ERROR_IRQ_ISSUE:
        "NVIDIA driver interrupt problem: look for NVRM errors in dmesg",
    pynvml.NVML_ERROR_GPU_IS_LOST:
        "GPU is lost (fell off the bus): look for Xid errors in dmesg, then reset the GPU "
        "or reboot",
    pynvml.NVML_ERROR_RESET_REQUIRED:
        "GPU needs a reset: reset it (nvidia-smi -r) or reboot",
    pynvml.NVML_ERROR_GPU_NOT_FOUND:
        "GPU not found by the driver: look for Xid errors in dmesg",
    pynvml.NVML_ERROR_UNINITIALIZED:
        "NVML was shut down while in use",
    pynvml.NVML_ERROR_TIMEOUT:
        "the NVIDIA driver timed out",
}


_MISSING_IN_DRIVER = (NVMLError, pynvml.NVMLLibraryMismatchError)


class NvmlUnavailable(Exception):
    """NVML cannot be used here; the message is one line a person can act on."""


class FunctionMissing(Exception):
    """None of the named NVML functions exists in this driver and binding."""


def error_code(exc: BaseException) -> int | None:
    """The NVML return code carried by an NVMLError, else None."""
    if isinstance(exc, NVMLError):
        value = getattr(exc, "value", None)
        return value if isinstance(value, int) else None
    return None


def is_gpu_fatal(exc: BaseException) -> bool:
    """True when the error means the GPU (not just one value) cannot be read."""
    return error_code(exc) in _GPU_FATAL


def describe(exc: BaseException) -> str:
    """One line for an NVML error: advice where we have it, else NVML's own text."""
    code = error_code(exc)
    if code is not None and code in _ADVICE:
        return _ADVICE[code]
    if code is not None:
        return f"NVML error: {one_line(exc)}"
    return one_line(f"{type(exc).__name__}: {exc}")


def percent_ratio(value: Any) -> float | None:
    """An NVML percent (0..100) as a 0..1 ratio; None for out-of-range driver glitches."""
    f = float(value)
    if not math.isfinite(f) or f < 0 or f > 100.5:
        return None
    return min(f, 100.0) / 100.0


def load_backend() -> Any:
    """The pynvml module, or the object built by the factory named in the environment."""
    spec = os.environ.get(BACKEND_ENV, "").strip()
    if not spec:
        return pynvml
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise NvmlUnavailable(f"{BACKEND_ENV}={spec!r}: expected 'module:callable'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise NvmlUnavailable(f"{BACKEND_ENV}={spec!r}: cannot load it: {one_line(exc)}") from None
    try:
        return factory()
    except Exception as exc:
        raise NvmlUnavailable(
            f"{BACKEND_ENV}={spec!r}: the factory failed: {one_line(exc)}") from None


class NvmlSession:
    """One initialised NVML: lazy start under a lock, shutdown at exit, function fallbacks.

    ``backend`` is a pynvml-shaped object; None loads the default (see
    ``load_backend``) on first start. NVML counts initialisations, so several
    sessions in one process are safe: each shuts down what it started.
    """

    def __init__(self, backend: Any | None = None) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._started = False
        self._atexit_registered = False
        self._functions: dict[str, Callable[..., Any]] = {}
        self._missing: set[str] = set()
        self._logged: set[str] = set()

    @property
    def backend(self) -> Any:
        if self._backend is None:
            raise NvmlUnavailable("NVML has not been started")
        return self._backend

    @property
    def started(self) -> bool:
        return self._started

    def start(self) -> None:
        """Initialise NVML if not done yet; raise NvmlUnavailable with the reason."""
        with self._lock:
            if self._started:
                return
            if self._backend is None:
                self._backend = load_backend()
            try:
                self._backend.nvmlInit()
            except NVMLError as exc:
                raise NvmlUnavailable(describe(exc)) from None
            except Exception as exc:  # a broken backend, not a host problem; still one line
                raise NvmlUnavailable(f"NVML failed to start: {describe(exc)}") from None
            self._started = True
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True

    def stop(self) -> None:
        """Shut NVML down if this session started it. Safe to call twice."""
        with self._lock:
            if not self._started:
                return
            self._started = False
            if self._atexit_registered:
                atexit.unregister(self.stop)
                self._atexit_registered = False
            try:
                self.backend.nvmlShutdown()
            except Exception as exc:  # at exit nothing can be done about it
                log.debug("nvmlShutdown failed: %s", exc)

    def log_once(self, key: str, message: str, *args: object,
                 level: int = logging.INFO) -> None:
        """Log a condition once per session (a driver gap does not go away)."""
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, message, *args)

    def is_missing(self, name: str) -> bool:
        return name in self._missing

    def mark_missing(self, name: str, why: str) -> None:
        """Remember that ``name`` (a function or a variant of one) cannot be used here."""
        self._functions.pop(name, None)
        if name not in self._missing:
            self._missing.add(name)
            self.log_once(f"missing:{name}", "NVML: %s is not available (%s); "
                          "falling back or leaving its value out", name, why)

    def function(self, name: str) -> Callable[..., Any] | None:
        """The backend's function ``name``, or None where the binding or driver lacks it."""
        fn = self._functions.get(name)
        if fn is not None or name in self._missing:
            return fn
        found: Callable[..., Any] | None = getattr(self.backend, name, None)
        if found is None or not callable(found):
            self.mark_missing(name, "this nvidia-ml-py does not have it")
            return None
        self._functions[name] = found
        return found

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call one NVML function; FunctionMissing where binding or driver lacks it."""
        # Hot path: a dict lookup and the call; resolving and fallbacks only on a miss.
        fn = self._functions.get(name) or self.function(name)
        if fn is None:
            raise FunctionMissing(name)
        try:
            return fn(*args, **kwargs)
        except _MISSING_IN_DRIVER as exc:
            self._missing_in_driver(name, exc)
            raise FunctionMissing(name) from None

    def call_variant(self, variant: str, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``name`` in a form the driver may lack (``variant``, e.g. the C symbol
        ``nvmlDeviceGetMemoryInfo_v2`` behind a ``version=`` argument). Where the
        driver lacks it, ``variant`` is marked missing, not the function itself."""
        if variant in self._missing:
            raise FunctionMissing(variant)
        fn = self.function(name)
        if fn is None:
            raise FunctionMissing(name)
        try:
            return fn(*args, **kwargs)
        except _MISSING_IN_DRIVER as exc:
            self._missing_in_driver(variant, exc)
            raise FunctionMissing(variant) from None

    def call_first(self, names: Sequence[str], *args: Any) -> Any:
        """Call the first of ``names`` that exists here (newest first, older fallbacks after)."""
        for name in names:
            fn = self._functions.get(name) or self.function(name)
            if fn is None:
                continue
            try:
                return fn(*args)
            except _MISSING_IN_DRIVER as exc:
                self._missing_in_driver(name, exc)
        raise FunctionMissing(", ".join(names))

    def _missing_in_driver(self, name: str, exc: Exception) -> None:
        """Mark ``name`` missing if ``exc`` says the driver lacks it; else re-raise ``exc``."""
        if isinstance(exc, pynvml.NVMLLibraryMismatchError):
            # pynvml's unversioned wrappers raise this when the driver lacks the
            # versioned symbol behind them.
            self.mark_missing(name, "the NVIDIA driver is older than this nvidia-ml-py")
        elif error_code(exc) == FUNCTION_NOT_FOUND:
            self.mark_missing(name, "the NVIDIA driver does not have it")
        else:
            raise exc
