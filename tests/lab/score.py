"""Grading the agent's window labels against a scenario's ground truth. Pure functions.

Inputs: the phases as run (``TimedPhase``: name, expected label, start and end in unix
seconds) and the agent's windows (the ``diagnose --json`` / ``replay --json`` objects: at
least ``start``, ``end``, ``label``; ``confidence`` is carried but not scored).

Definitions:
- A window belongs to the phase that contains its midpoint; windows outside every phase
  are not scored.
- Guard band: around each transition T between phases, windows overlapping
  [T - guard, T + guard] (``guard`` = one window by default) are left out of accuracy and
  flap counts: they mix two regimes, and what they say is measured by detection latency.
- Precision, recall and F1 per label over the scored windows; F1 = 2TP / (2TP + FP + FN),
  so a label with support but never given scores 0. Macro-F1 is the mean F1 over the
  labels that occur in the ground truth. A ratio with a zero denominator is None.
- Detection latency of a phase: from the phase start to the END of the first window of the
  first run of ``stable`` consecutive windows that all give the phase's label (windows
  ordered by end, those ending inside the phase, guard band included). That end is when the
  agent first published the label that then held. A phase without such a run is "missed"
  (None). Phases whose label is ``idle`` and that follow a non-idle phase are resets: their
  latency is reported as reset latency, all others as detection latency.
- Flaps: label changes between consecutive scored windows of one phase (A, B, A is two),
  per hour of scored (steady) window time over all phases.
- Quantiles (median, p95) interpolate linearly between ranks.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_bottleneck.labels import LABEL_NAMES

# The DESIGN.md label vocabulary, in the order tables show it.
LABEL_ORDER = LABEL_NAMES
_EPSILON = 1e-6  # seconds; windows cut exactly at a guard edge are outside it


@dataclass(frozen=True)
class TimedPhase:
    name: str
    label: str
    start: float
    end: float


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    label: str
    confidence: float | None = None

    @property
    def midpoint(self) -> float:
        return (self.start + self.end) / 2

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class LabelScore:
    label: str
    support: int  # scored windows whose truth is this label
    given: int  # scored windows the agent gave this label
    true_positives: int
    precision: float | None
    recall: float | None
    f1: float | None


@dataclass(frozen=True)
class PhaseScore:
    name: str
    label: str
    start: float
    end: float
    kind: str  # "detection" or "reset"
    latency_seconds: float | None  # None: never stably detected
    scored_windows: int
    correct_windows: int
    flaps: int
    steady_seconds: float


@dataclass(frozen=True)
class LatencySummary:
    median: float | None
    p95: float | None
    detected: int
    missed: int


@dataclass(frozen=True)
class Score:
    guard_seconds: float
    stable: int
    windows_total: int
    windows_scored: int
    windows_in_guard: int
    windows_outside: int
    accuracy: float | None
    macro_f1: float | None
    labels: tuple[LabelScore, ...]
    confusion: dict[str, dict[str, int]]  # truth -> label given -> windows
    phases: tuple[PhaseScore, ...]
    detection: LatencySummary
    reset: LatencySummary
    flaps: int
    steady_seconds: float
    flaps_per_hour: float | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "guard_seconds": self.guard_seconds,
            "stable": self.stable,
            "windows": {"total": self.windows_total, "scored": self.windows_scored,
                        "in_guard_band": self.windows_in_guard,
                        "outside_phases": self.windows_outside},
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "labels": {s.label: {"precision": s.precision, "recall": s.recall, "f1": s.f1,
                                 "support": s.support, "given": s.given,
                                 "true_positives": s.true_positives}
                       for s in self.labels},
            "confusion": self.confusion,
            "phases": [{"name": p.name, "label": p.label, "start": p.start, "end": p.end,
                        "kind": p.kind, "latency_seconds": p.latency_seconds,
                        "scored_windows": p.scored_windows,
                        "correct_windows": p.correct_windows, "flaps": p.flaps,
                        "steady_seconds": p.steady_seconds} for p in self.phases],
            "detection_latency_seconds": _summary_json(self.detection),
            "reset_latency_seconds": _summary_json(self.reset),
            "flaps": {"count": self.flaps, "steady_seconds": self.steady_seconds,
                      "per_hour": self.flaps_per_hour},
        }


def _summary_json(s: LatencySummary) -> dict[str, Any]:
    return {"median": s.median, "p95": s.p95, "detected": s.detected, "missed": s.missed}


def quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile with linear interpolation between ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _number(item: Mapping[str, Any], key: str, where: str) -> float:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value):
        raise ValueError(f"{where}: {key!r} must be a finite number, got {value!r}")
    return float(value)


def parse_windows(items: Iterable[Mapping[str, Any]]) -> list[Window]:
    """Windows from their JSON objects; a bad one raises ValueError naming it."""
    windows = []
    for i, item in enumerate(items):
        where = f"window {i}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: expected an object, got {item!r}")
        start, end = _number(item, "start", where), _number(item, "end", where)
        if end <= start:
            raise ValueError(f"{where}: end {end} is not after start {start}")
        label = item.get("label")
        if not isinstance(label, str) or not label:
            raise ValueError(f"{where}: 'label' must be a non-empty string, got {label!r}")
        confidence = item.get("confidence")
        windows.append(Window(start, end, label,
                              _number(item, "confidence", where) if confidence is not None
                              else None))
    return windows


def windows_from_output(text: str) -> list[Window]:
    """Windows from ``diagnose --json`` (one object with "windows") or ``replay --json``
    (one object per line)."""
    stripped = text.strip()
    if not stripped:
        return []
    try:
        document = json.loads(stripped)
    except ValueError:
        document = None
    if isinstance(document, Mapping) and "windows" in document:
        return parse_windows(document["windows"])
    items = []
    for number, line in enumerate(stripped.splitlines(), start=1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except ValueError as exc:
                raise ValueError(f"line {number}: not JSON: {exc}") from None
    return parse_windows(items)


def _ordered_labels(labels: Iterable[str]) -> list[str]:
    present = set(labels)
    known = [label for label in LABEL_ORDER if label in present]
    return known + sorted(present - set(LABEL_ORDER))


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _phase_of(window: Window, phases: Sequence[TimedPhase]) -> int | None:
    for i, phase in enumerate(phases):
        if phase.start <= window.midpoint < phase.end:
            return i
    return None


def _latency(phase: TimedPhase, windows: Sequence[Window], stable: int) -> float | None:
    inside = sorted((w for w in windows if phase.start < w.end <= phase.end),
                    key=lambda w: w.end)
    for i in range(len(inside) - stable + 1):
        if all(w.label == phase.label for w in inside[i:i + stable]):
            return inside[i].end - phase.start
    return None


def _summary(latencies: Sequence[float | None]) -> LatencySummary:
    found = [x for x in latencies if x is not None]
    return LatencySummary(quantile(found, 0.5), quantile(found, 0.95), len(found),
                          len(latencies) - len(found))


def _as_windows(windows: Sequence[Window] | Sequence[Mapping[str, Any]]) -> list[Window]:
    return [w if isinstance(w, Window) else parse_windows([w])[0] for w in windows]


@dataclass
class _Graded:
    """One run's windows sorted into phases: scored pairs, phase scores and counts."""

    pairs: list[tuple[str, str]] = field(default_factory=list)  # (truth, label given)
    phases: list[PhaseScore] = field(default_factory=list)
    total: int = 0
    guarded: int = 0
    outside: int = 0


def _grade(phases: Sequence[TimedPhase], ws: Sequence[Window], guard_seconds: float,
           stable: int, lead_in: bool) -> _Graded:
    ordered_phases = sorted(phases, key=lambda p: p.start)
    transitions = sorted({p.start for p in ordered_phases[1:]}
                         | {p.end for p in ordered_phases[:-1]})
    first_start = ordered_phases[0].start if lead_in and ordered_phases else None

    def in_guard(w: Window) -> bool:
        if first_start is not None and w.start < first_start + guard_seconds - _EPSILON:
            return True  # the windows right after the load started (watched from before)
        return any(w.start < t + guard_seconds - _EPSILON and w.end > t - guard_seconds
                   + _EPSILON for t in transitions)

    graded = _Graded(total=len(ws))
    scored: list[list[Window]] = [[] for _ in ordered_phases]
    for w in sorted(ws, key=lambda w: w.start):
        index = _phase_of(w, ordered_phases)
        if index is None:
            graded.outside += 1
        elif in_guard(w):
            graded.guarded += 1
        else:
            scored[index].append(w)
    graded.pairs = [(phase.label, w.label)
                    for phase, group in zip(ordered_phases, scored, strict=True) for w in group]
    for i, (phase, group) in enumerate(zip(ordered_phases, scored, strict=True)):
        reset = phase.label == "idle" and i > 0 and ordered_phases[i - 1].label != "idle"
        graded.phases.append(PhaseScore(
            phase.name, phase.label, phase.start, phase.end, "reset" if reset else "detection",
            _latency(phase, ws, stable), len(group),
            sum(1 for w in group if w.label == phase.label),
            sum(1 for a, b in itertools.pairwise(group) if a.label != b.label),
            sum(w.seconds for w in group)))
    return graded


def score(phases: Sequence[TimedPhase], windows: Sequence[Window] | Sequence[Mapping[str, Any]],
          *, guard_seconds: float | None = None, stable: int = 2) -> Score:
    """Grade ``windows`` against ``phases`` (see the module docstring for definitions).
    ``guard_seconds`` defaults to the median window length."""
    return score_runs([(phases, windows)], guard_seconds=guard_seconds, stable=stable,
                      lead_in=False)


def score_runs(runs: Sequence[tuple[Sequence[TimedPhase],
                                    Sequence[Window] | Sequence[Mapping[str, Any]]]],
               *, guard_seconds: float | None = None, stable: int = 2,
               lead_in: bool = True) -> Score:
    """Grade several runs (each its own phases and windows) as one score: the labels'
    figures and latencies over all of them, each run's transitions its own.

    ``lead_in``: the agent watched each run for a while before its first phase (the lab
    runner's lead-in), so the start of the first phase is a transition too, and the
    windows starting within one guard band after it are left out of accuracy and flaps.
    The window before it lies outside every phase and is never scored anyway."""
    if stable < 1:
        raise ValueError("stable must be >= 1")
    parsed = [(phases, _as_windows(windows)) for phases, windows in runs]
    if guard_seconds is None:
        guard_seconds = quantile([w.seconds for _, ws in parsed for w in ws], 0.5) or 0.0
    graded = [_grade(phases, ws, guard_seconds, stable, lead_in) for phases, ws in parsed]
    pairs = [pair for g in graded for pair in g.pairs]
    phase_scores = [p for g in graded for p in g.phases]
    truth_labels = {truth for truth, _ in pairs}
    labels = _ordered_labels([*truth_labels, *(given for _, given in pairs)])
    label_scores = []
    for label in labels:
        tp = sum(1 for truth, given in pairs if truth == label and given == label)
        support = sum(1 for truth, _ in pairs if truth == label)
        given_count = sum(1 for _, given in pairs if given == label)
        fp, fn = given_count - tp, support - tp
        label_scores.append(LabelScore(label, support, given_count, tp, _ratio(tp, given_count),
                                       _ratio(tp, support), _ratio(2 * tp, 2 * tp + fp + fn)))
    truth_f1 = [s.f1 for s in label_scores if s.label in truth_labels and s.f1 is not None]
    confusion = {truth: {given: sum(1 for t, g in pairs if t == truth and g == given)
                         for given in labels} for truth in _ordered_labels(truth_labels)}
    flaps = sum(p.flaps for p in phase_scores)
    steady = sum(p.steady_seconds for p in phase_scores)
    return Score(
        guard_seconds=guard_seconds, stable=stable,
        windows_total=sum(g.total for g in graded), windows_scored=len(pairs),
        windows_in_guard=sum(g.guarded for g in graded),
        windows_outside=sum(g.outside for g in graded),
        accuracy=_ratio(sum(1 for t, g in pairs if t == g), len(pairs)),
        macro_f1=sum(truth_f1) / len(truth_f1) if truth_f1 else None,
        labels=tuple(label_scores), confusion=confusion, phases=tuple(phase_scores),
        detection=_summary([p.latency_seconds for p in phase_scores if p.kind == "detection"]),
        reset=_summary([p.latency_seconds for p in phase_scores if p.kind == "reset"]),
        flaps=flaps, steady_seconds=steady,
        flaps_per_hour=flaps / steady * 3600 if steady > 0 else None)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _grid(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]


def format_table(s: Score) -> str:
    """The score as text for a terminal or a CI log."""
    lines = [f"windows: {s.windows_scored} scored of {s.windows_total} "
             f"({s.windows_in_guard} in guard bands of {s.guard_seconds:g}s, "
             f"{s.windows_outside} outside phases); stable = {s.stable} windows", ""]
    lines += _grid([["label", "precision", "recall", "f1", "support", "given"],
                    *[[x.label, _fmt(x.precision), _fmt(x.recall), _fmt(x.f1), str(x.support),
                       str(x.given)] for x in s.labels]])
    lines += [f"macro-F1 {_fmt(s.macro_f1)}  accuracy {_fmt(s.accuracy)}", ""]
    if s.confusion:
        columns = [x.label for x in s.labels]
        lines.append("confusion (rows: truth, columns: label given)")
        lines += _grid([["truth", *columns],
                        *[[truth, *(str(row[c]) for c in columns)]
                          for truth, row in s.confusion.items()]])
        lines.append("")
    lines += _grid([["phase", "label", "kind", "latency_s", "scored", "correct", "flaps"],
                    *[[p.name, p.label, p.kind,
                       "missed" if p.latency_seconds is None else f"{p.latency_seconds:.1f}",
                       str(p.scored_windows), str(p.correct_windows), str(p.flaps)]
                      for p in s.phases]])
    for name, summary in (("detection", s.detection), ("reset", s.reset)):
        lines.append(f"{name} latency: median {_fmt(summary.median, 1)} s, "
                     f"p95 {_fmt(summary.p95, 1)} s ({summary.detected} detected, "
                     f"{summary.missed} missed)")
    lines.append(f"flaps: {s.flaps} in {s.steady_seconds / 3600:.3f} h of steady windows = "
                 f"{_fmt(s.flaps_per_hour, 1)} per hour")
    return "\n".join(lines)


def write_json(path: Path, s: Score) -> None:
    path.write_text(json.dumps(s.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
