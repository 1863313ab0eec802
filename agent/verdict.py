"""The overall verdict: one label for a whole run (`diagnose`, `replay`), from its
labelled windows. It sits beside the rules: what a run "is" is a classifier
decision too (docs/classifier.md, "The overall verdict").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ai_bottleneck.hysteresis import Transition
from ai_bottleneck.labels import QUIET_LABELS, Label
from ai_bottleneck.pipeline import WindowResult

#: Share of the windows a bottleneck label needs to be the overall verdict
#: over idle/unknown windows.
OVERALL_MIN_SHARE = 0.25


@dataclass(frozen=True)
class Verdict:
    """One label for a whole run (`diagnose --json`'s "verdict")."""

    label: str
    confidence: float
    reasons: tuple[str, ...]
    advice: tuple[str, ...]
    warnings: tuple[str, ...]
    windows: int
    label_windows: dict[str, int]
    transitions: tuple[Transition, ...]
    start: float | None
    end: float | None
    # The window the reasons and advice come from: (start, end).
    evidence_window: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "confidence": self.confidence,
                "reasons": list(self.reasons), "advice": list(self.advice),
                "warnings": list(self.warnings), "windows": self.windows,
                "label_windows": dict(self.label_windows),
                "transitions": [t.to_json() for t in self.transitions],
                "start": self.start, "end": self.end}


def overall_verdict(results: Sequence[WindowResult],
                    transitions: Sequence[Transition] | None = None) -> Verdict:
    """The label of a run: hard evidence (OOM) in any window wins; otherwise the
    most frequent bottleneck label if it held in at least a quarter of the windows,
    else the most frequent label. Confidence is the label's mean window confidence
    times the share of windows it held."""
    if transitions is None:
        transitions = [r.transition for r in results if r.transition is not None]
    if not results:
        return Verdict(Label.UNKNOWN.value, 0.0, ("no window: no samples were labelled",),
                       (), (), 0, {}, tuple(transitions), None, None)
    counts = Counter(r.label for r in results)
    weight: dict[str, float] = {}
    for r in results:
        weight[r.label] = weight.get(r.label, 0.0) + r.confidence
    n = len(results)
    hard = [r for r in results if r.hard]
    if hard:
        label = hard[0].raw_label
        chosen = hard
    else:
        busy = [lbl for lbl in counts if lbl not in QUIET_LABELS]
        pool = [lbl for lbl in busy if counts[lbl] >= OVERALL_MIN_SHARE * n] or list(counts)
        label = max(pool, key=lambda lbl: (counts[lbl], weight[lbl]))
        chosen = [r for r in results if r.label == label]
    own = [r for r in chosen if r.raw_label == label] or chosen
    best = max(own, key=lambda r: r.raw_confidence)
    if hard:
        confidence = 1.0
        share = f"hard evidence in {len(hard)} of {n} windows"
    else:
        confidence = round(weight[label] / n, 2)  # mean confidence x share of windows
        share = f"{label} in {counts[label]} of {n} windows"
    evidence = [e for e in best.evidence if not e.startswith("holding ")][:5]
    return Verdict(label, confidence, (share, *evidence), best.advice, best.warnings, n,
                   dict(counts), tuple(transitions), results[0].start, results[-1].end,
                   evidence_window=(best.start, best.end))
