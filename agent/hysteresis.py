"""Stable labels from per-window labels.

A new label replaces the current one when either

- it has been the raw label for ``hold_windows`` windows in a row, or
- it is *settled*: the window it was read in no longer shows the current label
  anywhere, and the new one already holds in its second half alone (the caller
  judges this, see ai_bottleneck.pipeline). A change that happened before the window
  began is then seen after one window instead of ``hold_windows``, while a
  window that only straddles a change, or a burst inside one window, still has
  to be confirmed by the next ones. A label that took over without the hold
  (settled, or on hard evidence) must itself be the raw label for
  ``hold_windows`` windows in a row before a settled change can replace it, so
  regimes that alternate window by window move the label once, then hold it;
- or it rests on hard evidence (an out-of-memory event): at once;
- or it *recurs*: a bottleneck label that was the raw label in at least half of
  the last ``2 * hold_windows`` windows, every other window of that span reading
  balanced (load, no bottleneck found), is taken even though it never held
  ``hold_windows`` windows in a row. Evidence that arrives every other window (a
  probe call longer than a window, a test run now and then) alternates the raw
  label between the bottleneck and balanced; without this the label would never
  move. Once taken, the alternation keeps it: balanced never holds in a row.

The first window's label is taken as it is. Every change is recorded as a
Transition.

While a different label is pending, the current label is kept and its
confidence shrinks with each disagreeing window, ``c * (1 - pending/hold)``,
so a report shows both that the label holds and that it is in doubt.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

#: The label of a window that found load but no bottleneck: what a window reads when
#: the evidence of a bottleneck did not arrive in it. Windows of it do not compete
#: with a recurring bottleneck; idle or unknown ones (or another bottleneck) do.
NO_BOTTLENECK = frozenset({"balanced"})


@dataclass(frozen=True, slots=True)
class Transition:
    at: float                 # start of the window where the new label took over
    from_label: str | None    # None for the first label of a run
    to_label: str
    windows: int              # windows the new label held before it took over
    hard: bool                # switched at once on hard evidence
    settled: bool = False     # switched after one window in which the change was settled
    recurring: bool = False   # switched because the label recurred in most of a span

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "from": self.from_label, "to": self.to_label,
                "windows": self.windows, "hard": self.hard, "settled": self.settled,
                "recurring": self.recurring}


@dataclass(frozen=True, slots=True)
class Decision:
    label: str
    confidence: float
    held: bool                      # True when the raw label disagreed and was not taken
    pending: tuple[str, int] | None  # (label, windows so far) of a change not yet taken
    transition: Transition | None


class Hysteresis:
    def __init__(self, hold_windows: int = 2) -> None:
        if hold_windows < 1:
            raise ValueError("hold_windows must be >= 1")
        self.hold_windows = hold_windows
        self.current: str | None = None
        self._confidence = 0.0
        self._pending: tuple[str, int] | None = None
        # Whether the current label has held as the raw label for hold_windows windows
        # in a row since it took over (the run's first label, which replaced nothing,
        # counts as established), and the raw streak towards that.
        self._established = False
        self._streak = 0
        self.transitions: list[Transition] = []
        # The daemon runs for months: it keeps only the latest transitions (a label
        # flapping every window would add 8,640 a day). None: every one (a report).
        self.max_transitions: int | None = None
        self._recent: deque[str] = deque(maxlen=2 * hold_windows)

    def recurs(self, raw_label: str) -> bool:
        """Whether ``raw_label`` (just seen) recurs: a bottleneck that was the raw label
        in at least half of the span of the last 2 * hold_windows windows, with no other
        bottleneck in the span (see the module's docstring)."""
        if raw_label in NO_BOTTLENECK or raw_label in ("idle", "unknown") \
                or self.hold_windows < 2:
            return False
        span = [*self._recent, raw_label]
        if any(lbl != raw_label and lbl not in NO_BOTTLENECK for lbl in span):
            return False
        return span.count(raw_label) >= self.hold_windows

    def may_settle(self, raw_label: str, hard: bool = False) -> bool:
        """Whether a settled window would change what ``update`` does with this label:
        a change that the plain hold would not take yet, away from an established
        label. The only case in which settling needs to be judged."""
        if self.current is None or hard or raw_label == self.current:
            return False
        return self._established and self._count(raw_label) < self.hold_windows

    def _count(self, raw_label: str) -> int:
        pending = self._pending
        return pending[1] + 1 if pending is not None and pending[0] == raw_label else 1

    def update(self, raw_label: str, confidence: float, at: float,
               hard: bool = False, settled: bool = False) -> Decision:
        settled = settled and self.may_settle(raw_label, hard)
        recurring = raw_label != self.current and self.recurs(raw_label)
        self._recent.append(raw_label)
        if raw_label == self.current:
            self._pending = None
            self._confidence = confidence
            self._streak += 1
            self._established = self._established or self._streak >= self.hold_windows
            return Decision(raw_label, confidence, False, None, None)
        self._streak = 0
        count = self._count(raw_label)
        if (self.current is None or hard or settled or count >= self.hold_windows
                or recurring):
            first = self.current is None
            recurring = recurring and not (first or hard or settled
                                           or count >= self.hold_windows)
            transition = Transition(at, self.current, raw_label, count, hard and not first,
                                    settled, recurring)
            self.transitions.append(transition)
            if self.max_transitions is not None and len(self.transitions) > self.max_transitions:
                del self.transitions[0]
            self.current = raw_label
            self._confidence = confidence
            self._pending = None
            self._streak = count
            self._established = first or count >= self.hold_windows
            return Decision(raw_label, confidence, False, None, transition)
        self._pending = (raw_label, count)
        held = round(self._confidence * (1.0 - count / self.hold_windows), 2)
        return Decision(self.current, held, True, self._pending, None)
