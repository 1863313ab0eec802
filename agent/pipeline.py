"""Samples -> windows -> labelled windows: the one code path behind `diagnose`,
`replay` and the daemon.

A live run feeds samples as the sampler hands them over; a replay feeds the
samples of a recording in file order. Both go through the same WindowBuilder,
classifier and hysteresis, so a recording written in the order its samples
were fed (the sampler hands its rounds to one consumer, in order) replays to the
same labels.

    labeller = Labeller(window_seconds=10, thresholds=th, unavailable=reasons)
    for sample in stream:
        for result in labeller.feed(sample):
            print(json.dumps(result.to_json()))
    for result in labeller.finish():
        ...
    verdict = overall_verdict(all_results)  # ai_bottleneck.verdict

Recordings: put ``labeller.header_fields()`` into the record header
(``make_header(**labeller.header_fields())``) and ``Labeller.from_header``
restores the window length, thresholds, unavailable probes, configured
probes and a fixed window origin on replay.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ai_bottleneck.capacity import Saturation
from ai_bottleneck.classifier import classify
from ai_bottleneck.findings import Classification
from ai_bottleneck.hysteresis import Hysteresis, Transition
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.readings import Readings
from ai_bottleneck.thresholds import Thresholds
from ai_bottleneck.windows import Window, WindowBuilder

DEFAULT_WINDOW_SECONDS = 10.0
DEFAULT_REORDER_SECONDS = 2.0


@dataclass(frozen=True)
class WindowResult:
    """One labelled window, as `replay --json` prints it (see ``to_json``)."""

    start: float
    end: float
    label: str                 # after hysteresis: what to show and export
    confidence: float
    raw_label: str             # this window's own label, before hysteresis
    raw_confidence: float
    evidence: tuple[str, ...]
    advice: tuple[str, ...]
    warnings: tuple[str, ...]
    summary: dict[str, Any]
    probes: dict[str, str]     # probe -> "ok" / "failing: ..." / "unavailable: ..."
    samples: int
    late_samples: int = 0
    hard: bool = False         # hard evidence (OOM): switched at once
    held: bool = False         # the raw label disagreed and hysteresis kept the label
    pending: tuple[str, int] | None = None
    transition: Transition | None = None
    #: NIC directions full against their path's capacity (ai_bottleneck.capacity): the
    #: figures the evidence quotes, which the reports' link use follows.
    saturations: tuple[Saturation, ...] = ()
    # The classifier's typed readings of this window (reports reuse its figures).
    readings: Readings | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start, "end": self.end, "label": self.label,
            "confidence": self.confidence, "evidence": list(self.evidence),
            "raw_label": self.raw_label, "raw_confidence": self.raw_confidence,
            "advice": list(self.advice), "warnings": list(self.warnings),
            "summary": self.summary, "probes": self.probes, "samples": self.samples,
            "late_samples": self.late_samples, "hard": self.hard, "held": self.held,
            "pending": ({"label": self.pending[0], "windows": self.pending[1]}
                        if self.pending else None),
            "transition": self.transition.to_json() if self.transition else None,
            "saturations": [saturation_json(s) for s in self.saturations],
        }


def saturation_json(s: Saturation) -> dict[str, Any]:
    """One full NIC direction in ``WindowResult.to_json()`` (a field newer than the rest:
    readers must take its absence as none)."""
    return {"nic": s.nic, "direction": s.direction, "utilization_ratio": s.utilization,
            "capacity_bits_per_second": s.capacity_bits_per_second, "source": s.source,
            "basis": s.basis}


class Labeller:
    """Feed samples, get labelled windows as they close.

    ``unavailable``: probe name -> why it cannot run here (discovery's
    ``check()`` reasons), so a window says "gpu unavailable: no driver" and the
    rules treat the host as having no GPU. ``expected_probes``: the probes this
    run built and uses; one of them with no sample in a window is ``missing``
    (probes seen earlier in the stream count as expected too). ``origin``:
    where windows start (default: the first sample's time). ``reorder_seconds``:
    how late a sample may arrive and still land in its own window.
    ``max_transitions``: keep only that many of the latest label transitions (the
    daemon; None keeps all, for a report). Not thread safe: feed it from one
    thread (the run pipeline does, on the sampling thread).
    """

    def __init__(self, window_seconds: float = DEFAULT_WINDOW_SECONDS,
                 thresholds: Thresholds | None = None, *,
                 unavailable: Mapping[str, str] | None = None,
                 expected_probes: Collection[str] = (), origin: float | None = None,
                 reorder_seconds: float = DEFAULT_REORDER_SECONDS,
                 max_transitions: int | None = None) -> None:
        self.thresholds = thresholds if thresholds is not None else Thresholds()
        self.origin = origin
        self.unavailable = dict(unavailable or {})
        self.expected_probes = tuple(sorted(expected_probes))
        self._builder = WindowBuilder(window_seconds, origin=origin,
                                      reorder_seconds=reorder_seconds,
                                      unavailable=self.unavailable,
                                      expected=self.expected_probes)
        self._hysteresis = Hysteresis(self.thresholds.hysteresis_windows)
        self._hysteresis.max_transitions = max_transitions
        self._current_advice: tuple[str, ...] = ()

    @property
    def window_seconds(self) -> float:
        return self._builder.window_seconds

    @property
    def transitions(self) -> list[Transition]:
        return list(self._hysteresis.transitions)

    @property
    def late_samples(self) -> int:
        return self._builder.late_samples

    @property
    def samples_seen(self) -> int:
        return self._builder.samples_seen

    def feed(self, sample: Sample) -> list[WindowResult]:
        closed = self._builder.add(sample)
        return [self._label(w) for w in closed] if closed else []

    def feed_many(self, samples: Iterable[Sample]) -> list[WindowResult]:
        """Feed a batch (the sampler's sink signature); return the windows it closed."""
        return [self._label(w) for w in self._builder.add_many(samples)]

    def finish(self) -> list[WindowResult]:
        """Close and label every window still open (end of a run or a file)."""
        return [self._label(w) for w in self._builder.flush()]

    def run(self, samples: Iterable[Sample]) -> Iterator[WindowResult]:
        """Label a whole stream: every window, in order, as it closes."""
        for window in self._builder.add_iter(samples):
            yield self._label(window)
        yield from self.finish()

    def _label(self, window: Window) -> WindowResult:
        c: Classification = classify(window, self.thresholds)
        judged = (self.thresholds.hysteresis_settled_at_once
                  and self._hysteresis.may_settle(c.label.value, c.hard))
        settled = judged and self._settles(window, c.label.value)
        d = self._hysteresis.update(c.label.value, c.confidence, window.start, c.hard,
                                    settled)
        evidence = c.evidence
        advice = c.advice
        if d.held and d.pending is not None:
            why = (" (this window did not settle it: the change may have come inside it)"
                   if judged else
                   f" ({d.label} is new itself: it holds {self._hysteresis.hold_windows} "
                   "windows before one window can replace it)"
                   if self.thresholds.hysteresis_settled_at_once else "")
            evidence = (f"holding {d.label}: {d.pending[0]} seen in {d.pending[1]} of the "
                        f"{self._hysteresis.hold_windows} windows needed to change{why}",
                        *evidence)
            advice = self._current_advice
        else:
            self._current_advice = c.advice
            t = d.transition
            if t is not None and t.settled:
                evidence = (*evidence, f"changed from {t.from_label} after one window: "
                            f"{t.to_label} holds in its second half and {t.from_label} in "
                            "neither half")
            elif t is not None and t.recurring:
                span = 2 * self._hysteresis.hold_windows
                evidence = (*evidence, f"changed from {t.from_label}: {t.to_label} recurs in "
                            f"at least half of the last {span} windows and the others read "
                            "balanced (evidence that arrives every other window)")
        return WindowResult(
            start=window.start, end=window.end, label=d.label, confidence=d.confidence,
            raw_label=c.label.value, raw_confidence=c.confidence, evidence=evidence,
            advice=advice, warnings=c.warnings, summary=c.summary, probes=c.probes,
            samples=window.sample_count, late_samples=window.late_samples, hard=c.hard,
            held=d.held, pending=d.pending, transition=d.transition,
            saturations=c.saturations, readings=c.readings)

    def _settles(self, window: Window, label: str) -> bool:
        """Whether ``window`` settles a change to ``label``: its second half alone
        reads ``label`` and neither half still reads the current label. A window
        that straddles a change (the old regime in its first half) or holds a burst
        (the new label in one half only) does not; a window wholly after a change
        does. Only asked while a change is pending, so it costs two classifications
        at a change and nothing in steady state."""
        first, second = window.split()
        if classify(second, self.thresholds).label.value != label:
            return False
        return classify(first, self.thresholds).label.value != self._hysteresis.current

    # -- recordings -------------------------------------------------------------------

    def header_fields(self) -> dict[str, Any]:
        """What a recording's header needs so a replay labels it the same way."""
        fields: dict[str, Any] = {"window_seconds": self.window_seconds,
                                  "thresholds": dataclasses.asdict(self.thresholds),
                                  "unavailable": dict(self.unavailable),
                                  "probes": list(self.expected_probes)}
        if self.origin is not None:
            # Without it a replay starts its windows at the first sample in the file,
            # which is not where a live run that fixed its origin started them.
            fields["origin"] = self.origin
        return fields

    @classmethod
    def from_header(cls, header: Mapping[str, Any], *, window_seconds: float | None = None,
                    thresholds: Thresholds | None = None) -> Labeller:
        """A labeller set up as the run that wrote ``header`` was; arguments override.

        Header fields this version does not know are ignored, as the record format
        asks; a malformed known field raises ai_bottleneck.probes.options.OptionError (one line).
        """
        from ai_bottleneck.probes.options import OptionError, parse_options

        if window_seconds is None:
            raw = header.get("window_seconds", DEFAULT_WINDOW_SECONDS)
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not raw > 0:
                raise OptionError("header.window_seconds", f"must be a positive number, got "
                                                           f"{raw!r}")
            window_seconds = float(raw)
        if thresholds is None:
            raw_th = header.get("thresholds") or {}
            if not isinstance(raw_th, Mapping):
                raise OptionError("header.thresholds", "must be an object")
            known = {f.name for f in dataclasses.fields(Thresholds)}
            thresholds = parse_options(Thresholds, {k: v for k, v in raw_th.items()
                                                    if k in known}, prefix="header.thresholds")
        origin = header.get("origin")
        if origin is not None and (isinstance(origin, bool) or not isinstance(origin, int | float)
                                   or not math.isfinite(origin)):
            raise OptionError("header.origin", f"must be a number of unix seconds, got "
                                               f"{origin!r}")
        unavailable = header.get("unavailable") or {}
        probes = header.get("probes") or []
        return cls(window_seconds, thresholds,
                   origin=float(origin) if origin is not None else None,
                   unavailable={str(k): str(v) for k, v in unavailable.items()}
                   if isinstance(unavailable, Mapping) else {},
                   expected_probes=[str(p) for p in probes] if isinstance(probes, list) else [])
