"""The one record type that flows from probes to windows, recordings and the exporter."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class SampleError(ValueError):
    """A JSON object does not describe a valid sample."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One observation by one probe at one time.

    ``values`` holds finite numbers only, with the unit in the name
    (``memory_used_bytes``, ``total_seconds``). A value the source could not
    give is absent from ``values``, never zero. A failed observation has
    ``error`` set (one line) and usually no values.
    """

    t: float
    probe: str
    labels: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, float] = field(default_factory=dict)
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
    def from_json(cls, obj: object) -> Sample:
        """Build a sample from a decoded JSON line; raise SampleError saying what is wrong."""
        if not isinstance(obj, dict):
            raise SampleError("not a JSON object")
        t = obj.get("t")
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
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
        values = {
            str(k): float(v)
            for k, v in raw_values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        error = obj.get("error")
        if error is not None and not isinstance(error, str):
            error = str(error)
        return cls(t=float(t), probe=probe, labels=labels, values=values, error=error)


def clean_values(values: Mapping[str, float | int | None]) -> dict[str, float]:
    """Drop absent (None) and non-finite values; a missing reading is never a zero."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if value is None or isinstance(value, bool):
            continue
        f = float(value)
        if math.isfinite(f):
            out[key] = f
    return out


def one_line(text: object, limit: int = 300) -> str:
    """Squash an error message to one readable line."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"
