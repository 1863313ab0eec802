"""One series (a probe plus one set of labels) within one window, and the aggregates of
its values: count, mean, p95, min, max, sum, last.

Aggregation is lazy: a SeriesWindow keeps references to its samples and computes
a value's statistics the first time someone asks (the classifier reads a few dozen
of the hundreds of values a window holds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter

from ai_bottleneck.probes.sample import SKIPPED_VALUE, Sample, is_skipped

PERCENTILE = 0.95
#: Sort key of samples: their time.
by_time = attrgetter("t")


@dataclass(frozen=True, slots=True)
class Stats:
    """Aggregates of one value of one series over one window."""

    count: int
    mean: float
    p95: float
    min: float
    max: float
    sum: float
    last: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        """Aggregate ``values`` given in time order (non-empty)."""
        n = len(values)
        if n == 1:
            v = values[0]
            return cls(1, v, v, v, v, v, v)
        total = math.fsum(values)  # exact: ten readings of 0.8 average to 0.8, not 0.7999...
        ordered = sorted(values)
        # p95 is the nearest rank: the smallest value with at least 95% of the values at
        # or below it. No interpolation, so it is always a value that was measured (with
        # 10 samples, p95 is the maximum).
        return _stats(n, total / n, ordered[max(1, math.ceil(PERCENTILE * n - 1e-9)) - 1],
                      ordered[0], ordered[-1], total, values[-1])


def _stats(count: int, mean: float, p95: float, low: float, high: float, total: float,
           last: float) -> Stats:
    """A Stats without the frozen dataclass's __init__ (an object.__setattr__ per field):
    a window computes a few dozen of them, a day of windows a few hundred thousand."""
    st = _new_object(Stats)
    _set_count(st, count)
    _set_mean(st, mean)
    _set_p95(st, p95)
    _set_min(st, low)
    _set_max(st, high)
    _set_sum(st, total)
    _set_last(st, last)
    return st


_new_object = object.__new__
_fsum = math.fsum
# The slot descriptors of Stats' fields; setting through them is what __init__ does.
_set_count, _set_mean, _set_p95, _set_min, _set_max, _set_sum, _set_last = (
    Stats.__dict__[name].__set__ for name in ("count", "mean", "p95", "min", "max", "sum",
                                               "last"))


class SeriesWindow:
    """One series (a probe plus one set of labels) within one window.

    ``samples`` are all of its samples in time order; ``ok_samples`` the
    measurements (neither failed nor skipped); ``failed_samples`` those with an
    error; ``skipped`` how many active-probe runs were skipped.
    """

    __slots__ = ("_rows", "_stats", "count", "failed_samples", "failures", "labels",
                 "ok_samples", "previous", "probe", "samples", "skipped")

    def __init__(self, probe: str, labels: Mapping[str, str], samples: list[Sample],
                 previous: SeriesWindow | None = None, *, in_order: bool = False) -> None:
        """``in_order``: the caller knows ``samples`` are in time order (the window
        builder, when every sample came no older than the one before it)."""
        self.probe = probe
        self.labels = labels
        if not in_order:
            times = [s.t for s in samples]
            if times != sorted(times):
                samples.sort(key=by_time)
        self.samples: Sequence[Sample] = samples
        #: The same series in the window before (for counter increases), or None.
        self.previous = previous
        # List comprehensions rather than one loop: this runs for every series of
        # every window, and the common case (all measured) is one C-speed pass.
        ok = [s for s in samples if s.error is None]
        failed = [s for s in samples if s.error is not None] if len(ok) < len(samples) else []
        rows = [s.values for s in ok]
        # is_skipped(s), inline: this runs for every sample of a replay
        skipped = len([row for row in rows if SKIPPED_VALUE in row])
        if skipped:
            ok = [s for s in ok if not is_skipped(s)]
            rows = [s.values for s in ok]
        self.ok_samples: Sequence[Sample] = ok
        self.failed_samples: Sequence[Sample] = failed
        self.count = len(ok)
        self.failures = len(failed)
        self.skipped = skipped
        self._rows = rows
        self._stats: dict[str, Stats | None] = {}

    def errors(self, limit: int = 3) -> list[str]:
        """Distinct error texts, most recent first."""
        out: list[str] = []
        for s in reversed(self.failed_samples):
            if s.error is not None and s.error not in out:
                out.append(s.error)
                if len(out) >= limit:
                    break
        return out

    @property
    def last_t(self) -> float:
        return (self.ok_samples or self.samples)[-1].t

    def values(self, name: str) -> list[float]:
        """The value ``name`` from every measurement that has it, in time order."""
        rows = self._rows
        if rows and name in rows[0] and name in rows[-1]:
            try:
                return [v[name] for v in rows]
            except KeyError:
                pass
        return [v[name] for v in rows if name in v]  # not every measurement carries it

    def stats(self, name: str) -> Stats | None:
        """Aggregates of value ``name``; None when no measurement carried it."""
        try:
            return self._stats[name]
        except KeyError:
            pass
        vals = self.values(name)
        st = Stats.of(vals) if vals else None
        self._stats[name] = st
        return st

    def mean(self, name: str) -> float | None:
        st = self._stats.get(name)
        if st is not None:
            return st.mean
        vals = self.values(name)  # no sort needed for a mean alone
        return _fsum(vals) / len(vals) if vals else None

    def peak(self, name: str) -> float | None:
        """``stats(name).max`` without the rest of the statistics (no sort)."""
        st = self._stats.get(name)
        if st is not None:
            return st.max
        vals = self.values(name)
        # The last of equal largest values, as the sorted statistics pick it (-0.0, 0.0).
        return max(reversed(vals)) if vals else None

    def total(self, name: str) -> float | None:
        """``stats(name).sum`` without the rest of the statistics (no sort)."""
        st = self._stats.get(name)
        if st is not None:
            return st.sum
        vals = self.values(name)
        return math.fsum(vals) if vals else None

    def any_nonzero(self, name: str) -> bool:
        return any(self.values(name))

    def last(self, name: str) -> float | None:
        """The latest measurement of value ``name`` (no statistics needed for it)."""
        for row in reversed(self._rows):
            if name in row:
                return row[name]
        return None

    def failed_values(self, name: str) -> list[float]:
        """Values carried by failed samples (an HTTP status that came back with an error)."""
        return [v for s in self.failed_samples if (v := s.values.get(name)) is not None]

    def increase(self, name: str) -> float | None:
        """How much counter ``name`` grew in this window, counting from the last value
        of the window before; a drop is a counter reset (the new value is the growth).
        The first value ever seen is a baseline, not growth."""
        vals = self.values(name)
        if not vals:
            return None
        prev = self.previous.last(name) if self.previous is not None else None
        grown = 0.0
        for v in vals:
            if prev is not None:
                grown += v - prev if v >= prev else v
            prev = v
        return grown
