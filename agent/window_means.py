"""Window means of the rate and ratio values, for the exporter's window-level gauges.

A gauge that holds a one-second rate, scraped every 15 s, samples one second
in fifteen: rebuilding traffic from it is off by tens of percent. The agent
therefore exports, for the passive probes' ``*_ratio`` and ``*_per_second``
values, the mean over the latest labelled window, the same span the label
speaks for. Exact totals over any range come from the raw ``*_total``
counters beside them (docs/metrics.md).

``WindowMeans`` keeps each wanted value of each good sample until the window
that holds it closes; ``close(start, end)`` then returns the means of the
samples with ``start <= t < end`` per series and forgets everything before
``end``. It holds at most a window or two of values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.state import SeriesKey, series_key

#: Probes whose rate and ratio values are window means in /metrics: the passive
#: ones that sample every interval. Active probes' values describe one transfer.
WINDOW_MEAN_PROBES = frozenset({"gpu", "host", "nic"})
WINDOW_MEAN_SUFFIXES = ("_ratio", "_per_second")

Means = dict[SeriesKey, dict[str, float]]


def is_window_mean(probe: str, value: str) -> bool:
    """Whether /metrics shows this value as a window mean rather than the latest sample."""
    return probe in WINDOW_MEAN_PROBES and value.endswith(WINDOW_MEAN_SUFFIXES)


class WindowMeans:
    """Accumulates the window-mean values of samples; see the module's docstring."""

    def __init__(self) -> None:
        # (sample time, series, {value: number}) in arrival order
        self._pending: list[tuple[float, SeriesKey, Mapping[str, float]]] = []

    def add_many(self, samples: Iterable[Sample]) -> None:
        for s in samples:
            if s.error is not None or s.probe not in WINDOW_MEAN_PROBES or "pid" in s.labels:
                continue
            wanted = {k: v for k, v in s.values.items()
                      if k.endswith(WINDOW_MEAN_SUFFIXES) and math.isfinite(v)}
            if wanted:
                self._pending.append((s.t, series_key(s.probe, s.labels), wanted))

    def close(self, start: float, end: float) -> Means:
        sums: dict[SeriesKey, dict[str, list[float]]] = {}
        keep: list[tuple[float, SeriesKey, Mapping[str, float]]] = []
        for item in self._pending:
            t, key, values = item
            if t >= end:
                keep.append(item)
            elif t >= start:
                per_value = sums.setdefault(key, {})
                for name, v in values.items():
                    per_value.setdefault(name, []).append(v)
        self._pending = keep
        return {key: {name: math.fsum(vs) / len(vs) for name, vs in per_value.items()}
                for key, per_value in sums.items()}

    @property
    def pending(self) -> int:
        return len(self._pending)
