"""The one record type that flows from probes to windows, recordings and the exporter,
and the builders of its two special kinds: a failed observation and a skipped run.

Part of the probe contract: import it through ``ai_bottleneck.probes.base``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from math import isfinite
from typing import Any

import msgspec


class SampleError(ValueError):
    """A JSON object does not describe a valid sample."""


class Sample(msgspec.Struct, frozen=True):
    """One observation by one probe at one time.

    ``values`` holds finite numbers only, with the unit in the name
    (``memory_used_bytes``, ``total_seconds``). A value the source could not
    give is absent from ``values``, never zero. A failed observation has
    ``error`` set (one line) and usually no values.

    A frozen ``msgspec.Struct``: built and compared like a frozen dataclass
    (``Sample(t=..., probe=..., ...)``; a changed copy is ``msgspec.structs.replace``),
    and a recording line decodes straight into one in C (sample_decoder). Replaying a
    day is about a million of them: a Struct decodes a third faster than a dataclass.
    """

    t: float
    probe: str
    labels: Mapping[str, str] = msgspec.field(default_factory=dict)
    values: Mapping[str, float] = msgspec.field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"t": self.t, "probe": self.probe, "labels": dict(self.labels)}
        if self.error is not None:
            obj["error"] = self.error
            if self.values:
                obj["values"] = dict(self.values)
        else:
            obj["values"] = dict(self.values)
        return obj

    @classmethod
    def from_json(cls, obj: object, *, adopt: bool = False) -> Sample:
        """Build a sample from a decoded JSON line; raise SampleError saying what is wrong.

        Non-numeric, boolean and non-finite values are dropped, label values are
        turned into strings, a non-string error into its text. ``adopt`` says
        ``obj`` came straight from a JSON decoder (its keys are strings) and is not
        used again: an ordinary line then takes a fast path and the sample keeps
        ``obj``'s ``labels`` and ``values`` dicts instead of copying them (the
        record reader's lines).
        """
        # Fast path for the line every writer of this format produces: float values,
        # string labels, no error. Replaying a day is about a million of these, so the
        # checks are C-level passes (type sets, one sum) instead of a Python loop per
        # value; anything unusual takes the checked path below, which decides.
        if adopt and type(obj) is dict and "error" not in obj:
            t = obj.get("t")
            probe = obj.get("probe")
            labels = obj.get("labels")
            values = obj.get("values")
            if (type(t) is float and type(probe) is str and probe
                    and type(labels) is dict and type(values) is dict
                    and _ONLY_STR.issuperset(map(type, labels.values()))):
                kinds = set(map(type, values.values()))
                if not kinds <= _ONLY_FLOAT:
                    # A writer may give 200 for 200.0: convert; anything else is checked.
                    values = _ints_to_floats(values) if kinds <= _INT_OR_FLOAT else None
                # A sum of finite floats is finite unless it overflows (then the checked
                # path decides); one NaN or infinity makes it non-finite.
                if values is not None and isfinite(t + sum(values.values())):
                    return cls(t, probe, labels, values)
        return cls._from_json_checked(obj)

    @classmethod
    def _from_json_checked(cls, obj: object) -> Sample:
        if not isinstance(obj, dict):
            raise SampleError("not a JSON object")
        t = _finite_float(obj.get("t"))
        if t is None:
            raise SampleError("'t' must be a finite number of unix seconds")
        probe = obj.get("probe")
        if not isinstance(probe, str) or not probe:
            raise SampleError("'probe' must be a non-empty string")
        raw_labels = obj.get("labels", {})
        if not isinstance(raw_labels, dict):
            raise SampleError("'labels' must be an object")
        labels = {str(k): str(v) for k, v in raw_labels.items()}
        raw_values = obj.get("values", {})
        if not isinstance(raw_values, dict):
            raise SampleError("'values' must be an object")
        # Unknown or non-numeric values are kept out rather than failing the line:
        # newer writers may add values an older reader does not understand.
        values = {str(k): f for k, v in raw_values.items() if (f := _finite_float(v)) is not None}
        error = obj.get("error")
        if error is not None and not isinstance(error, str):
            error = str(error)
        return cls(t=t, probe=probe, labels=labels, values=values, error=error)


_ONLY_STR = frozenset({str})
_ONLY_FLOAT = frozenset({float})
_INT_OR_FLOAT = frozenset({int, float})


def _finite_float(value: object) -> float | None:
    """``value`` as a finite float, or None for booleans, non-numbers, NaN, infinities
    and integers too large for a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if isfinite(f) else None


def _ints_to_floats(values: dict[str, float]) -> dict[str, float] | None:
    """``values`` with its integers made floats, in place; None when one is too
    large for a float (the checked path drops it)."""
    try:
        for key, value in values.items():
            if type(value) is int:
                values[key] = float(value)  # same key: the dict's size does not change
    except OverflowError:
        return None
    return values


def clean_values(values: Mapping[str, float | int | None]) -> dict[str, float]:
    """Drop absent (None) and non-finite values; a missing reading is never a zero."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if value is None or isinstance(value, bool):
            continue
        f = float(value)
        if isfinite(f):
            out[key] = f
    return out


def one_line(text: object, limit: int = 300) -> str:
    """Squash an error message to one readable line."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def failed(probe: str, error: str, labels: Mapping[str, str] | None = None,
           t: float | None = None) -> Sample:
    """A failed-sample record, one line of error text."""
    return Sample(t=time.time() if t is None else t, probe=probe, labels=dict(labels or {}),
                  error=one_line(error))


# -- skipped runs --------------------------------------------------------------------

#: The value and labels that mark a skipped run of an active probe.
SKIPPED_VALUE = "skipped"
SKIP_REASON_LABEL = "skip_reason"
SKIP_KIND_LABEL = "skip_kind"


class SkipKind(StrEnum):
    """Why an active probe was skipped, as a closed vocabulary (metric label values)."""

    BUDGET = "budget"      # the hourly traffic budget has no room for the run
    NIC_BUSY = "nic_busy"  # the NIC is busier than busy_nic_ratio
    OTHER = "other"        # a skip from elsewhere (a plugin) that names no known kind


@dataclass(frozen=True)
class Skip:
    """A run that did not happen: the kind, and the reason in words (one line)."""

    kind: SkipKind
    reason: str

    def __str__(self) -> str:
        return self.reason


def skipped_sample(probe: str, skip: Skip | str, labels: Mapping[str, str] | None = None,
                   t: float | None = None) -> Sample:
    """The record of a run that did not happen, and why (one line); a bare reason is a
    skip of kind ``other``. It is neither a measurement nor a failure."""
    if not isinstance(skip, Skip):
        skip = Skip(SkipKind.OTHER, skip)
    all_labels = dict(labels or {})
    all_labels[SKIP_REASON_LABEL] = one_line(skip.reason)
    all_labels[SKIP_KIND_LABEL] = skip.kind.value
    return Sample(t=time.time() if t is None else t, probe=probe, labels=all_labels,
                  values={SKIPPED_VALUE: 1.0})


def is_skipped(sample: Sample) -> bool:
    """True for a skip record (``skipped_sample``'s): windows count it neither as a
    value nor as a failure, the exporter counts it by kind."""
    return SKIPPED_VALUE in sample.values


def skip_kind(sample: Sample) -> SkipKind:
    """The kind of a skip record; ``other`` where it names none this version knows
    (a plugin's skip, a recording from an older version)."""
    try:
        return SkipKind(sample.labels.get(SKIP_KIND_LABEL, SkipKind.OTHER.value))
    except ValueError:
        return SkipKind.OTHER
