"""Drop recorded samples whose time cannot belong to the stream around them.

One line stamped in milliseconds (t = 1.8e12 among 1.8e9), or a year ahead,
used to open a window far in the future: every good sample after it was
"late" and the windows collapsed. A sample more than ``max_jump_seconds``
(a day: longer than any sampling interval) away from the stream is held
back; when ``confirm`` samples in a row agree with it the stream really moved
(a recording paused for a day by a full disk, a clock stepped) and they are
all released in order; when the stream goes on where it was, the held ones
were outliers and are dropped (counted). Until the stream has a time of its
own, the first samples are held the same way, so a bad first line cannot
become the reference either.

Pure bookkeeping over ``Sample.t``; the reader calls ``admit`` for samples
outside ``low``..``high`` and for every sample while some are held, and keeps
the common case (in range, nothing held) to two comparisons.
"""

from __future__ import annotations

import math

from ai_bottleneck.probes.sample import Sample

MAX_JUMP_SECONDS = 86400.0
CONFIRM_SAMPLES = 3


class TimeGate:
    def __init__(self, max_jump_seconds: float = MAX_JUMP_SECONDS,
                 confirm: int = CONFIRM_SAMPLES) -> None:
        self.max_jump = max_jump_seconds
        self.confirm = confirm
        self.held: list[Sample] = []
        self.dropped = 0
        self.example: float | None = None  # the time of the first sample dropped
        # No reference yet: nothing is in range, so the first samples go to admit().
        self.low, self.high = math.inf, -math.inf
        self._ref: float | None = None
        #: The stream's time so far (-inf before it has one): the reader asks
        #: ``t > newest`` before calling advance, to skip the call for most samples.
        self.newest = -math.inf

    def _set_ref(self, t: float) -> None:
        self._ref = self.newest = t
        self.low, self.high = t - self.max_jump, t + self.max_jump

    def advance(self, t: float) -> None:
        """A sample in range was taken: the stream's time moves on with it."""
        if self._ref is not None and t > self._ref:
            self._set_ref(t)

    def _drop_held(self) -> None:
        if self.held and self.example is None:
            self.example = self.held[0].t
        self.dropped += len(self.held)
        self.held = []

    def admit(self, sample: Sample) -> list[Sample]:
        """The samples to pass on now, in order (often none: held, or dropped)."""
        t = sample.t
        if self._ref is not None and self.low <= t <= self.high:
            self._drop_held()  # the stream went on where it was
            self.advance(t)
            return [sample]
        if self.held and abs(t - self.held[-1].t) <= self.max_jump:
            self.held.append(sample)
            if len(self.held) < self.confirm:
                return []
            out, self.held = self.held, []
            self._set_ref(max(s.t for s in out) if self._ref is None or out[-1].t > self._ref
                          else out[-1].t)
            return out
        self._drop_held()
        self.held = [sample]
        return []

    def finish(self) -> list[Sample]:
        """At the end of the stream: held samples are outliers, unless the stream never
        got a time of its own (a recording of one or two samples) -- then they are it."""
        if self._ref is None:
            out, self.held = self.held, []
            return out
        self._drop_held()
        return []
