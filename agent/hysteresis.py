"""Stable labels from per-window labels.

A new label replaces the current one only after it has been the raw label for
``hold_windows`` windows in a row; hard evidence (an out-of-memory event)
replaces it at once. The first window's label is taken as it is. Every change
is recorded as a Transition.

While a different label is pending, the current label is kept and its
confidence shrinks with each disagreeing window, ``c * (1 - pending/hold)``,
so a report shows both that the label holds and that it is in doubt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Transition:
    at: float                 # start of the window where the new label took over
    from_label: str | None    # None for the first label of a run
    to_label: str
    windows: int              # windows the new label held before it took over
    hard: bool                # switched at once on hard evidence

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "from": self.from_label, "to": self.to_label,
                "windows": self.windows, "hard": self.hard}


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
        self.transitions: list[Transition] = []

    def update(self, raw_label: str, confidence: float, at: float,
               hard: bool = False) -> Decision:
        if raw_label == self.current:
            self._pending = None
            self._confidence = confidence
            return Decision(raw_label, confidence, False, None, None)
        count = (self._pending[1] + 1
                 if self._pending is not None and self._pending[0] == raw_label else 1)
        if self.current is None or hard or count >= self.hold_windows:
            transition = Transition(at, self.current, raw_label, count,
                                    hard and self.current is not None)
            self.transitions.append(transition)
            self.current = raw_label
            self._confidence = confidence
            self._pending = None
            return Decision(raw_label, confidence, False, None, transition)
        self._pending = (raw_label, count)
        held = round(self._confidence * (1.0 - count / self.hold_windows), 2)
        return Decision(self.current, held, True, self._pending, None)
