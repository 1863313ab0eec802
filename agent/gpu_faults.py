"""GPU health in one window: the hard faults that make the window ``unknown``, and the
warnings that do not.

A pure function of the window's GPU samples, read by the classifier before its
rules (docs/classifier.md, "GPU health"). A GPU that fell off the bus or needs a
reset makes any bottleneck verdict about the host moot: the window says
``unknown`` and names the fault, at once (hard evidence, no hysteresis). A
pending row remap, a failed one or a warning-class XID is worth knowing but
stops nothing: a warning. Recordings without health values (older agents) give
neither.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from ai_bottleneck.probes.base import Sample
from ai_bottleneck.probes.gpu_health import (
    HEALTH_FLAGS,
    XID_RESET_REQUIRED,
    XID_WARNING,
    HealthState,
    state_of,
    xid_text,
)
from ai_bottleneck.probes.vocabulary import (
    ECC_UNCORRECTED_VOLATILE_TOTAL,
    RETIRED_PAGES_PENDING,
    ROW_REMAP_FAILURE,
    ROW_REMAP_PENDING,
    XID_ERRORS_TOTAL,
    XID_LAST_CODE,
    XID_RESET_REQUIRED_TOTAL,
    is_process_sample,
    mig_instance,
)
from ai_bottleneck.remarks import Remark, WarningKind
from ai_bottleneck.series import SeriesWindow, by_time
from ai_bottleneck.windows import Window

_WORST_FIRST = (HealthState.LOST, HealthState.RESET_REQUIRED, HealthState.DEGRADED,
                HealthState.OK)


def _gpus(window: Window) -> Iterator[tuple[str, Sequence[SeriesWindow]]]:
    """Per GPU (by its index label): its series in the window (a failed GPU's samples
    carry fewer labels, so one GPU can be two series)."""
    by_gpu: dict[str, list[SeriesWindow]] = {}
    for sw in window.of("gpu"):
        if is_process_sample(sw.labels) or "gpu" not in sw.labels:
            continue
        mig = mig_instance(sw.labels)
        key = sw.labels["gpu"] + (f"/{mig}" if mig is not None else "")
        by_gpu.setdefault(key, []).append(sw)
    yield from sorted(by_gpu.items())


def _samples(group: Sequence[SeriesWindow]) -> Sequence[Sample]:
    if len(group) == 1:
        return group[0].samples  # one series: already in time order
    return sorted((s for sw in group for s in sw.samples), key=by_time)


def _worst(samples: Sequence[Sample]) -> tuple[HealthState, Sample] | None:
    found: dict[HealthState, Sample] = {}
    # A sample with no health flag at all (an older recording) has no state.
    for s in [s for s in samples if not s.values.keys().isdisjoint(HEALTH_FLAGS)]:
        state = state_of(s.values)
        if state is not None:
            found[state] = s  # the latest sample in that state
    for state in _WORST_FIRST:
        if state in found:
            return state, found[state]
    return None


def _increase(group: Sequence[SeriesWindow], name: str) -> float:
    return sum(v for sw in group if (v := sw.increase(name)) is not None)


def _last(group: Sequence[SeriesWindow], name: str) -> float | None:
    values = [(s.t, v) for sw in group for s in sw.ok_samples
              if (v := s.values.get(name)) is not None]
    return max(values)[1] if values else None


class GpuHealth:
    """The health of every GPU of one window, read once: the classifier asks for the
    hard faults, the warnings and the summary of the same window."""

    __slots__ = ("gpus",)

    def __init__(self, window: Window) -> None:
        #: (GPU, its series, its worst state in the window and the latest sample in it)
        self.gpus = [(gpu, group, _worst(_samples(group))) for gpu, group in _gpus(window)]

    def hard_faults(self) -> list[str]:
        return _hard_faults(self.gpus)

    def warnings(self) -> list[Remark]:
        return _warnings(self.gpus)

    def summary(self) -> dict[str, object]:
        return _summary(self.gpus)


_Assessed = Sequence[tuple[str, Sequence[SeriesWindow], tuple[HealthState, Sample] | None]]


def hard_faults(window: Window) -> list[str]:
    """One line per GPU that fell off the bus or needs a reset in this window."""
    return GpuHealth(window).hard_faults()


def _hard_faults(gpus: _Assessed) -> list[str]:
    out = []
    for gpu, group, worst in gpus:
        if worst is None:
            continue
        state, sample = worst
        if state is HealthState.LOST:
            out.append(f"GPU {gpu} fell off the bus (NVML: GPU is lost): look for Xid errors in "
                       "dmesg, then reset the GPU or reboot; no verdict while a GPU is gone")
        elif state is HealthState.RESET_REQUIRED:
            out.append(f"GPU {gpu} needs a reset ({_reset_reason(group, sample)}): drain it, then "
                       "reset it (nvidia-smi -r) or reboot; no verdict while it is faulty")
    return out


def _reset_reason(group: Sequence[SeriesWindow], sample: Sample) -> str:
    if sample.error is not None:
        return f"NVML: {sample.error}"
    reasons = []
    last = _last(group, XID_LAST_CODE)
    if _last(group, XID_RESET_REQUIRED_TOTAL) and last is not None:
        code = int(last)
        reasons.append(xid_text(code) if code in XID_RESET_REQUIRED
                       else "an XID that needs a reset, since the agent started")
    uncorrected = _last(group, ECC_UNCORRECTED_VOLATILE_TOTAL)
    if uncorrected:
        reasons.append(f"{uncorrected:.0f} uncorrectable ECC error(s) since the last reset")
    return "; ".join(reasons) or "its health says so"


#: Degraded-state flags and the warning each gives.
_REPAIRS = (
    (ROW_REMAP_FAILURE, WarningKind.GPU_REMAP_FAILED,
     "a row remapping has failed (NVIDIA's criterion for replacing the GPU)"),
    (ROW_REMAP_PENDING, WarningKind.GPU_REMAP_PENDING,
     "a row remapping is pending; it takes effect at the next GPU reset (at a convenient "
     "time: running work is not affected)"),
    (RETIRED_PAGES_PENDING, WarningKind.GPU_PAGE_RETIRE_PENDING,
     "a retired memory page takes effect at the next driver reload"),
)


def warnings(window: Window) -> list[Remark]:
    """GPU health worth knowing that does not stop the verdict."""
    return GpuHealth(window).warnings()


def _warnings(gpus: _Assessed) -> list[Remark]:
    out = []
    for gpu, group, worst in gpus:
        if worst is not None and worst[0] is HealthState.DEGRADED:
            for flag, kind, text in _REPAIRS:
                if _last(group, flag):
                    out.append(Remark(kind, f"GPU {gpu}: {text}", gpu))
        new_xids = _increase(group, XID_ERRORS_TOTAL)
        if new_xids:
            last = _last(group, XID_LAST_CODE)
            code = int(last) if last is not None else None
            what = f", the latest {xid_text(code)}" if code is not None else ""
            line = f"GPU {gpu}: {new_xids:.0f} XID error event(s) in this window{what}"
            if code in XID_WARNING:
                line += ": failing hardware, watch the trend"
            out.append(Remark(WarningKind.GPU_XID, line, gpu))
    return out


HEALTH_KEY = "gpu_health"


def summary(window: Window) -> dict[str, object]:
    """``{"gpu_health": {"<gpu>": {"state": "reset_required", "reason": "..."}}}`` for the
    GPUs not ``ok`` in this window (their worst state); {} when all are ok or unknown."""
    return GpuHealth(window).summary()


def _summary(gpus: _Assessed) -> dict[str, object]:
    out: dict[str, dict[str, str]] = {}
    for gpu, group, worst in gpus:
        if worst is None or worst[0] is HealthState.OK:
            continue
        state, sample = worst
        entry = {"state": state.value}
        if state is HealthState.RESET_REQUIRED:
            entry["reason"] = _reset_reason(group, sample)
        out[gpu] = entry
    return {HEALTH_KEY: out} if out else {}


def run_health(summaries: Sequence[Mapping[str, object]]) -> list[tuple[str, str]]:
    """The GPUs whose health was not ok in some window of a run, each with its worst
    state (and the reason a reset is needed), by GPU."""
    worst: dict[str, tuple[int, str]] = {}
    order = {s.value: i for i, s in enumerate(_WORST_FIRST)}
    for s in summaries:
        part = s.get(HEALTH_KEY)
        if not isinstance(part, Mapping):
            continue
        for gpu, entry in part.items():
            state = entry.get("state") if isinstance(entry, Mapping) else None
            if state not in order:
                continue
            text = state + (f" ({entry['reason']})" if entry.get("reason") else "")
            if gpu not in worst or order[state] < worst[gpu][0]:
                worst[gpu] = (order[state], text)
    return [(gpu, text) for gpu, (_, text) in sorted(worst.items())]
