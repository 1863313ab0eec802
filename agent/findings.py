"""What a classifier rule finds: the label, the signals that support it (each with a
strength) and what lowers the confidence; and the classification of one window.

Pure data and arithmetic: no I/O, no clock. See docs/classifier.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ai_bottleneck.capacity import Saturation
from ai_bottleneck.labels import Label
from ai_bottleneck.readings import Readings

#: How much one fully convincing signal contributes to confidence (noisy-OR).
SIGNAL_WEIGHT = 0.75


@dataclass(frozen=True, slots=True)
class Signal:
    """One fact that supports a label; strength 0.5 at its threshold, 1 well past it."""

    strength: float
    text: str


def above(value: float, threshold: float, top: float = 1.0) -> float:
    if top <= threshold:
        return 1.0
    return 0.5 + 0.5 * min(1.0, max(0.0, (value - threshold) / (top - threshold)))


def below(value: float, threshold: float) -> float:
    if threshold <= 0:
        return 1.0
    return 0.5 + 0.5 * min(1.0, max(0.0, (threshold - value) / threshold))


@dataclass
class Finding:
    label: Label
    signals: list[Signal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    factors: list[tuple[float, str]] = field(default_factory=list)
    hard: bool = False
    mismatch: bool = False  # a big GPU idling behind a thin link (the article's case)
    advice: list[str] = field(default_factory=list)  # replaces the label's general advice

    def confidence(self) -> float:
        if self.label is Label.UNKNOWN:
            return 0.0
        if self.hard:
            return 1.0
        doubt = 1.0
        for s in self.signals:
            doubt *= 1.0 - SIGNAL_WEIGHT * min(1.0, max(0.0, s.strength))
        conf = 1.0 - doubt
        for factor, _ in self.factors:
            conf *= factor
        return round(min(1.0, max(0.0, conf)), 2)


@dataclass(frozen=True)
class Classification:
    """The verdict on one window, before hysteresis."""

    label: Label
    confidence: float
    evidence: tuple[str, ...]
    advice: tuple[str, ...]
    warnings: tuple[str, ...]
    summary: dict[str, Any]
    probes: dict[str, str]
    hard: bool = False
    readings: Readings | None = field(default=None, compare=False, repr=False)  # for reports
    #: The NIC directions full against their path's capacity, as the evidence states them
    #: (the reports show link use against the same capacity).
    saturations: tuple[Saturation, ...] = ()
