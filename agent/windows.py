"""Cut the sample stream into fixed windows and aggregate each series in a window.

A *series* is one probe with one set of labels (GPU 0, NIC eth0, one HTTP
target). For each series a window holds a SeriesWindow (series.py): its samples and,
on demand, count / mean / p95 / min / max / sum / last of any value, how many
samples failed (and why) and how many active-probe runs were skipped. A window also
knows which probes were unavailable on this host, missing from the window or
only failing, so the classifier can say ``unknown`` honestly instead of
guessing.

Alignment and ordering (the same code for live runs and replays, so both give
the same windows from the same sample sequence):

- Window ``k`` covers ``[origin + k*w, origin + (k+1)*w)``; ``origin`` is the
  time of the first sample fed unless given.
- Samples may arrive out of time order (probe threads finish at different
  times; files may be concatenated). A window stays open until the newest
  time seen is ``reorder_seconds`` past its end, so samples up to that late
  still land in their own window. A sample later than that, or earlier than
  ``origin``, is counted as late and folded into the oldest window still open:
  a slow HTTP call that reports late is still evidence, never dropped.
- A window in which no sample fell is not emitted (nothing ran).

Aggregation is lazy: a window keeps references to its samples and computes a
value's statistics the first time someone asks, because the classifier reads a
few dozen of the hundreds of values a window holds.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.series import SeriesWindow, by_time

#: Active probes run every few minutes, not every window: their latest result
#: is carried into later windows (with its age) instead of reported missing.
CARRY_PROBES = frozenset({"iperf3", "download"})

#: Per-series memory (last window, carried results) is dropped for series not
#: seen for this long; checked every PRUNE_EVERY_WINDOWS windows. A day, so an
#: active probe's last result outlives any sensible max-age threshold.
FORGET_AFTER_SECONDS = 86400.0
PRUNE_EVERY_WINDOWS = 64


class ProbeState(StrEnum):
    OK = "ok"
    PARTIAL = "partial"          # some samples or series failed, some measured
    FAILING = "failing"          # samples came, every one failed
    SKIPPED = "skipped"          # an active probe that was skipped (budget, busy NIC)
    MISSING = "missing"          # expected but no sample in this window
    UNAVAILABLE = "unavailable"  # cannot run on this host (reason from check())
    ABSENT = "absent"            # not configured and never seen


@dataclass(frozen=True, slots=True)
class ProbeStatus:
    state: ProbeState
    detail: str = ""

    @property
    def has_data(self) -> bool:
        return self.state in (ProbeState.OK, ProbeState.PARTIAL)

    def __str__(self) -> str:
        return f"{self.state.value}: {self.detail}" if self.detail else self.state.value


_OK = ProbeStatus(ProbeState.OK)  # shared: a ProbeStatus is immutable


class Window:
    """All series of one window, plus what the classifier needs to know about the
    probes that gave nothing."""

    def __init__(self, start: float, end: float, series: Mapping[str, Sequence[SeriesWindow]],
                 *, unavailable: Mapping[str, str] | None = None,
                 expected: Collection[str] = (), carried: Sequence[SeriesWindow] = (),
                 sample_count: int | None = None, late_samples: int = 0) -> None:
        self.start = start
        self.end = end
        self.series = series
        self.unavailable = dict(unavailable or {})
        self.expected = frozenset(expected)
        #: Latest results of active probes from earlier windows (see CARRY_PROBES).
        self.carried = tuple(carried)
        self.sample_count = (sum(len(sw.samples) for group in series.values() for sw in group)
                             if sample_count is None else sample_count)
        self.late_samples = late_samples

    @classmethod
    def from_samples(cls, samples: Iterable[Sample], start: float, end: float,
                     **kwargs: object) -> Window:
        """A window of exactly these samples (tests and one-off use)."""
        groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[Sample]] = {}
        for s in samples:
            groups.setdefault((s.probe, tuple(sorted(s.labels.items()))), []).append(s)
        series: dict[str, list[SeriesWindow]] = {}
        for (probe, labels), group in groups.items():
            series.setdefault(probe, []).append(SeriesWindow(probe, dict(labels), group))
        return cls(start, end, series, **kwargs)  # type: ignore[arg-type]

    def of(self, probe: str) -> Sequence[SeriesWindow]:
        return self.series.get(probe, ())

    def status(self, probe: str) -> ProbeStatus:
        group = self.series.get(probe, ())
        if not group:
            if probe in self.unavailable:
                return ProbeStatus(ProbeState.UNAVAILABLE, self.unavailable[probe])
            if probe in self.expected:
                return ProbeStatus(ProbeState.MISSING, "no sample in this window")
            return ProbeStatus(ProbeState.ABSENT)
        if len(group) == 1:  # one series: most probes, most windows
            sw = group[0]
            ok, failed, skipped = sw.count, sw.failures, sw.skipped
        else:
            ok = sum(sw.count for sw in group)
            failed = sum(sw.failures for sw in group)
            skipped = sum(sw.skipped for sw in group)
        if ok == 0 and failed == 0:
            return ProbeStatus(ProbeState.SKIPPED, f"{skipped} run(s) skipped")
        if not failed:
            return _OK
        errors = [e for sw in group for e in sw.errors(1)]
        first_error = errors[0] if errors else ""
        if ok == 0:
            return ProbeStatus(ProbeState.FAILING, f"{failed} of {failed} failed: {first_error}")
        return ProbeStatus(ProbeState.PARTIAL, f"{failed} of {ok + failed} failed: {first_error}")

    def statuses(self) -> dict[str, ProbeStatus]:
        """The status of every probe this window knows of, by name."""
        names = set(self.series) | set(self.unavailable) | self.expected
        return {name: self.status(name) for name in sorted(names)}

    def split(self, at: float | None = None) -> tuple[Window, Window]:
        """This window cut at ``at`` (default: its middle) into two windows of the same
        samples, for asking whether what the whole window shows held throughout it.

        Counters keep counting across the cut: the first part continues from the
        window before, the second from the first part. An active probe's result in the
        first part is carried into the second, as a later window would carry it.
        """
        if at is None:
            at = (self.start + self.end) / 2
        if not self.start < at < self.end:
            raise ValueError(f"cut at {at} is not inside [{self.start}, {self.end})")
        early: dict[str, list[SeriesWindow]] = {}
        late: dict[str, list[SeriesWindow]] = {}
        carried_late = list(self.carried)
        counts = [0, 0]
        for probe, group in self.series.items():
            for sw in group:
                samples = list(sw.samples)  # in time order (SeriesWindow sorts them)
                cut = bisect_left(samples, at, key=by_time)
                first = None
                if cut:
                    first = SeriesWindow(probe, sw.labels, samples[:cut], sw.previous)
                    early.setdefault(probe, []).append(first)
                    counts[0] += cut
                if cut < len(samples):
                    late.setdefault(probe, []).append(SeriesWindow(
                        probe, sw.labels, samples[cut:],
                        first if first is not None else sw.previous))
                    counts[1] += len(samples) - cut
                elif first is not None and first.count and probe in CARRY_PROBES:
                    carried_late.append(first)
        return (Window(self.start, at, early, unavailable=self.unavailable,
                       expected=self.expected, carried=self.carried,
                       sample_count=counts[0]),
                Window(at, self.end, late, unavailable=self.unavailable,
                       expected=self.expected, carried=carried_late,
                       sample_count=counts[1]))


_Key = tuple[str, tuple[tuple[str, str], ...]]


class _Open:
    __slots__ = ("late", "series", "shuffled")

    def __init__(self) -> None:
        self.series: dict[_Key, list[Sample]] = {}
        self.late = 0
        self.shuffled = False  # a sample older than one fed before it came here

    @property
    def count(self) -> int:
        """Samples in this window (counted when asked, not per sample added)."""
        return sum(map(len, self.series.values()))


class WindowBuilder:
    """Feed samples in arrival order; get windows back as they close.

    Deterministic in the sequence of samples fed: the live pipeline and a
    replay of its recording (written in the order fed) give the same windows.
    """

    def __init__(self, window_seconds: float, *, origin: float | None = None,
                 reorder_seconds: float = 2.0, unavailable: Mapping[str, str] | None = None,
                 expected: Collection[str] = (),
                 carry_probes: Collection[str] = CARRY_PROBES) -> None:
        if not window_seconds > 0:
            raise ValueError("window_seconds must be > 0")
        if not reorder_seconds >= 0:
            raise ValueError("reorder_seconds must be >= 0")
        self.window_seconds = float(window_seconds)
        self.reorder_seconds = float(reorder_seconds)
        self.origin = origin
        self.unavailable = dict(unavailable or {})
        self._carry_probes = frozenset(carry_probes)
        self._expected = set(expected) - self._carry_probes
        self._open: dict[int, _Open] = {}
        self._floor = 0                  # windows below this index are closed
        self._watermark = -math.inf      # newest sample time seen
        # The watermark at which window _floor closes (known once the origin is).
        self._close_at = (math.inf if origin is None
                          else origin + self.window_seconds + self.reorder_seconds)
        self._canonical: dict[_Key, tuple[_Key, Mapping[str, str]]] = {}
        self._previous: dict[_Key, SeriesWindow] = {}
        self._carried: dict[_Key, SeriesWindow] = {}
        self._built = 0
        self.late_samples = 0
        # The window the last on-time sample went to: most samples go there too.
        self._cur = _Open()
        self._cur_index = -1
        self._closed_samples = 0
        self._cur_lo = math.inf
        self._cur_hi = -math.inf

    def add(self, sample: Sample) -> list[Window]:
        """Take one sample; return the windows this closed (usually none)."""
        t = sample.t
        # The common case first: the same window as the sample before.
        acc = self._cur if self._cur_lo <= t < self._cur_hi else self._slot(t)
        key = (sample.probe, tuple(sample.labels.items()))
        group = acc.series.get(key)
        if group is None:
            acc.series[key] = [sample]
        else:
            group.append(sample)
        if t > self._watermark:
            self._watermark = t
            if t >= self._close_at:
                assert self.origin is not None
                return self._close_before(
                    int((t - self.reorder_seconds - self.origin) // self.window_seconds))
        elif t < self._watermark:
            acc.shuffled = True
        return []

    def _slot(self, t: float) -> _Open:
        """The open window a sample at ``t`` goes to, made if new."""
        origin = self.origin
        if origin is None:
            origin = self.origin = t
            self._close_at = t + self.window_seconds + self.reorder_seconds
        index = int((t - origin) // self.window_seconds)
        late = index < self._floor
        if late:
            index = self._floor
        acc = self._open.get(index)
        if acc is None:
            acc = self._open[index] = _Open()
        if late:
            acc.late += 1
            self.late_samples += 1
        else:
            self._cur = acc
            self._cur_index = index
            self._cur_lo = origin + index * self.window_seconds
            self._cur_hi = self._cur_lo + self.window_seconds
        return acc

    @property
    def samples_seen(self) -> int:
        return self._closed_samples + sum(acc.count for acc in self._open.values())

    def add_many(self, samples: Iterable[Sample]) -> list[Window]:
        return list(self.add_iter(samples))

    def add_iter(self, samples: Iterable[Sample]) -> Iterator[Window]:
        """``add`` for a whole stream, yielding windows as they close. The same steps
        as ``add`` with the hot state in local variables: replaying a day of samples
        spends most of its time here."""
        lo, hi = self._cur_lo, self._cur_hi
        cur = self._cur  # the window samples go to now, and its series
        cur_series = cur.series
        watermark, close_at = self._watermark, self._close_at
        for sample in samples:
            t = sample.t
            if lo <= t < hi:
                acc, series = cur, cur_series
            else:
                self._watermark = watermark
                series = (acc := self._slot(t)).series
                cur, lo, hi, close_at = self._cur, self._cur_lo, self._cur_hi, self._close_at
                cur_series = cur.series
            key = (sample.probe, tuple(sample.labels.items()))
            group = series.get(key)
            if group is None:
                series[key] = [sample]
            else:
                group.append(sample)
            if t > watermark:
                watermark = t
                if t >= close_at:
                    assert self.origin is not None
                    self._watermark = watermark
                    yield from self._close_before(
                        int((t - self.reorder_seconds - self.origin) // self.window_seconds))
                    cur, lo, hi, close_at = self._cur, self._cur_lo, self._cur_hi, self._close_at
                    cur_series = cur.series
            elif t < watermark:
                acc.shuffled = True
        self._watermark = watermark

    def flush(self) -> list[Window]:
        """Close every open window (end of a run or of a file)."""
        if not self._open:
            return []
        return self._close_before(max(self._open) + 1)

    def _close_before(self, floor: int) -> list[Window]:
        if floor <= self._floor:
            return []
        due = sorted(i for i in self._open if i < floor)
        self._floor = floor
        if self._cur_index < floor:
            self._cur_lo, self._cur_hi = math.inf, -math.inf  # closed: stop appending to it
        assert self.origin is not None
        self._close_at = (self.origin + (floor + 1) * self.window_seconds
                          + self.reorder_seconds)
        return [self._build(i, self._open.pop(i)) for i in due]

    def _build(self, index: int, acc: _Open) -> Window:
        assert self.origin is not None
        count = acc.count
        self._closed_samples += count
        start = self.origin + index * self.window_seconds
        end = start + self.window_seconds
        merged: dict[_Key, tuple[Mapping[str, str], list[Sample]]] = {}
        in_order = not acc.shuffled
        for raw_key, samples in acc.series.items():
            canon = self._canonical.get(raw_key)
            if canon is None:
                canon = self._canonical[raw_key] = (
                    (raw_key[0], tuple(sorted(raw_key[1]))), dict(raw_key[1]))
            key, labels = canon
            if key in merged:
                merged[key][1].extend(samples)
                in_order = False  # two runs of one series, one after the other
            else:
                merged[key] = (labels, samples)
        series: dict[str, list[SeriesWindow]] = {}
        for key, (labels, samples) in merged.items():
            probe = key[0]
            prev = self._previous.get(key)
            if prev is not None:
                prev.previous = None  # keep one window of history, not a chain
            sw = SeriesWindow(probe, labels, samples, prev, in_order=in_order)
            self._previous[key] = sw
            series.setdefault(probe, []).append(sw)
            if probe in self._carry_probes:
                if sw.count:  # a failed or skipped run does not erase the last result
                    self._carried[key] = sw
            else:
                self._expected.add(probe)
        self._built += 1
        if self._built % PRUNE_EVERY_WINDOWS == 0:
            self._forget_before(start - FORGET_AFTER_SECONDS)
        this_window = {id(sw) for group in series.values() for sw in group}
        carried = [sw for sw in self._carried.values() if id(sw) not in this_window]
        return Window(start, end, series, unavailable=self.unavailable,
                      expected=self._expected, carried=carried, sample_count=count,
                      late_samples=acc.late)

    def _forget_before(self, cutoff: float) -> None:
        """Drop what is kept per series for series not seen since ``cutoff``: a daemon
        that runs for weeks sees processes (per-pid GPU entries) come and go."""
        gone = {key for key, sw in self._previous.items() if sw.samples[-1].t < cutoff}
        gone |= {key for key, sw in self._carried.items() if sw.samples[-1].t < cutoff}
        if not gone:
            return
        for key in gone:
            self._previous.pop(key, None)
            self._carried.pop(key, None)
        self._canonical = {raw: canon for raw, canon in self._canonical.items()
                           if canon[0] not in gone}

    @property
    def tracked_series(self) -> int:
        """How many series the builder remembers between windows."""
        return len(self._previous)
