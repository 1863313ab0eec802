"""The terminal report: what a person reads in ten seconds.

Renders the typed results (WindowResult, Verdict) and the classifier's own
per-window readings (through ai_bottleneck.figures), so `diagnose` and
`replay` print the same report. Order: the verdict and how it was reached,
the key numbers (each section says over which windows and which aggregate),
the timeline, then the evidence, advice and warnings, then what was not
measured. Every line fits ``width``; a long run summarises its timeline, so
the key numbers stay on the first screen; ``all_windows`` lists every window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ai_bottleneck.figures import RunFigures, run_figures
from ai_bottleneck.pipeline import WindowResult
from ai_bottleneck.remarks import WarningKind, kind_of, subject_of
from ai_bottleneck.report_tables import key_numbers, phase_lines, use_text
from ai_bottleneck.termstyle import Style, clip, wrap
from ai_bottleneck.timeline import LABEL_CHARS, run_text, runs, strip, summarise
from ai_bottleneck.units import clock, duration, pct, secs
from ai_bottleneck.verdict import Verdict

#: Runs of one label listed before the timeline summarises.
TIMELINE_RUNS = 8
#: Distinct warnings listed (the most frequent first).
WARNINGS_SHOWN = 6


@dataclass(frozen=True)
class ReportOptions:
    width: int = 80
    color: bool = False
    all_windows: bool = False


def _span(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "no windows"
    days = clock(start, with_date=True)[:10] != clock(end, with_date=True)[:10]
    if days:  # a span over midnight: its start with the date, and its length
        return f"{duration(end - start)} from {clock(start, with_date=True)}"
    return f"{clock(start)}-{clock(end)} ({duration(end - start)})"


def verdict_lines(results: Sequence[WindowResult], v: Verdict, o: ReportOptions,
                  style: Style) -> list[str]:
    w = o.width
    conf = f"(confidence {v.confidence:.2f})"
    if len(f"VERDICT  {v.label}  {conf}") <= w:
        out = [f"{style.bold('VERDICT')}  {style.label(v.label)}  {conf}"]
    else:  # a very narrow terminal
        out = [f"{style.bold('VERDICT')}  {style.label(v.label)}", f"  {conf}"]
    n = v.windows
    held = v.label_windows.get(v.label, 0)
    hard = [r for r in results if r.hard]
    if hard:
        how = (f"hard evidence (out-of-memory or a failed model load) in {len(hard)} of {n} "
               "windows decides at once: confidence 1.00")
    elif n:
        mean_conf = sum(r.confidence for r in results if r.label == v.label) / max(1, held)
        how = (f"{v.label} in {held} of {n} windows; confidence {v.confidence:.2f} = its mean "
               f"window confidence {mean_conf:.2f} x its share of the windows "
               f"{held / n:.2f}")
    else:
        how = v.reasons[0] if v.reasons else "no windows"
    out += wrap(how, w, "  ", "    ")
    leading = _leading(run_figures([r for r in results if r.label == v.label]))
    if leading and held < n:
        out += wrap(f"in the {held} {v.label} windows: " + ", ".join(leading), w, "  ",
                    "    ")
    others = sorted(((c, lbl) for lbl, c in v.label_windows.items() if lbl != v.label),
                    reverse=True)
    if others:
        out += wrap("other windows: " + ", ".join(f"{lbl} {c}" for c, lbl in others), w,
                    "  ", "    ")
    return out


def _leading(f: RunFigures) -> list[str]:
    """The few numbers that tell the labels apart, as means over ``f``'s windows."""
    out = []
    busy = [g.busy.mean for g in f.gpus if g.busy.mean is not None]
    if busy:
        out.append(f"GPU busy {pct(max(busy))}")
    if f.host is not None and f.host.cpu.mean is not None:
        out.append(f"CPU {pct(f.host.cpu.mean)}")
    used = [n for n in f.nics if n.use.mean is not None]
    if used:
        out.append(f"busiest link {use_text(max(used, key=lambda n: n.use.mean or 0.0))}")
    p95 = [t.p95_seconds.mean for t in f.targets if t.p95_seconds.mean is not None]
    if p95:
        out.append(f"request p95 {secs(max(p95))}")
    return out


def _once(text: str, not_measured: Mapping[str, str]) -> str:
    """A probe's long reason for not running is printed once, under NOT MEASURED;
    evidence that quotes it points there instead."""
    for reason in not_measured.values():
        if len(reason) > 30 and reason in text:
            text = text.replace(reason, "see NOT MEASURED")
    return text


def why_lines(v: Verdict, o: ReportOptions, style: Style,
              not_measured: Mapping[str, str] | None = None) -> list[str]:
    evidence = [_once(e, not_measured or {}) for e in v.reasons[1:]]
    if not evidence:
        return []
    where = (f"{clock(v.evidence_window[0])}-{clock(v.evidence_window[1])}"
             if v.evidence_window else "time unknown")
    out = [_heading("WHY", f"(the strongest {v.label} window, {where})", o.width, style)]
    for e in evidence:
        out += wrap(e, o.width, "  - ", "    ")
    return out


def timeline_lines(results: Sequence[WindowResult], o: ReportOptions,
                   style: Style) -> list[str]:
    w = o.width
    chars, k = strip(results, w - 2)
    per = "one character per window" if k == 1 else f"one character per {k} windows"
    out = [_heading("TIMELINE", f"({per}, {len(results)} windows)", w, style)]
    if not results:
        return [*out, "  (no windows)"]
    out.append("  " + "".join(style.label(_label_of(c), c) for c in chars))
    used = [lbl for lbl, c in LABEL_CHARS.items() if c in chars]
    out += wrap("legend: " + "  ".join(f"{LABEL_CHARS[lbl]}={lbl}" for lbl in used), w, "  ")
    all_runs = runs(results)
    if len(all_runs) > 1:
        shown, left = summarise(all_runs, TIMELINE_RUNS)
        days = len({clock(r.start, with_date=True)[:10] for r in all_runs}) > 1
        out += [clip("  " + run_text(r, with_date=days), w) for r in shown]
        if left:
            out += wrap(f"... and {left} more runs, none longer ({len(all_runs)} in all; "
                        "--windows lists every window, --since/--until narrow the span)",
                        w, "  ")
    return out


def _heading(name: str, rest: str, width: int, style: Style) -> str:
    """A section name in bold and what it covers, cut to the width."""
    text = clip(f"{name}  {rest}", width)
    return style.bold(name) + text[len(name):]


def _label_of(char: str) -> str:
    return next((lbl for lbl, c in LABEL_CHARS.items() if c == char), "unknown")


def warning_lines(results: Sequence[WindowResult], not_measured: Mapping[str, str],
                  o: ReportOptions, style: Style) -> list[str]:
    """Warnings across the windows, grouped by kind and subject, most frequent first.
    A probe that cannot run here is in NOT MEASURED already, so not repeated."""
    seen: dict[tuple[str, str | None, str], tuple[str, int]] = {}
    for r in results:
        latest: dict[tuple[str, str | None, str], str] = {}
        for text in r.warnings:
            kind = kind_of(text)
            if kind is WarningKind.PROBE_UNAVAILABLE and subject_of(text) in not_measured:
                continue
            latest[(kind, subject_of(text), text if kind is WarningKind.OTHER else "")] = text
        for key, text in latest.items():  # counted once per window
            seen[key] = (text, seen.get(key, ("", 0))[1] + 1)
    if not seen:
        return []
    ranked = sorted(seen.values(), key=lambda p: -p[1])
    out = [_heading("WARNINGS", f"(Nw = in N of the {len(results)} windows; latest wording)",
                    o.width, style)]
    for text, n in ranked[:WARNINGS_SHOWN]:
        out += wrap(f"{n}w: {text}", o.width, "  - ", "    ")
    if len(ranked) > WARNINGS_SHOWN:
        out.append(f"  ... and {len(ranked) - WARNINGS_SHOWN} more")
    return [out[0], *map(style.warn, out[1:])]


def window_lines(results: Sequence[WindowResult], o: ReportOptions,
                 style: Style) -> list[str]:
    out = [style.bold("WINDOWS")]
    for r in results:
        first = next((e for e in r.evidence if not e.startswith("holding ")), "")
        line = (f"  {clock(r.start)}-{clock(r.end)}  {r.label:<13} {r.confidence:.2f}  "
                f"{first}")
        out.append(clip(line, o.width).replace(r.label, style.label(r.label), 1))
    return out


def render(results: Sequence[WindowResult], verdict: Verdict, *, title: str,
           not_measured: Mapping[str, str], notes: Sequence[str] = (),
           options: ReportOptions | None = None) -> str:
    o = options or ReportOptions()
    style = Style(o.color)
    w = o.width
    # The title's "; "-separated parts (probes, the file) go on lines of their own,
    # so the first line keeps what matters when a path is long.
    head, *rest = title.split("; ")
    out: list[str] = wrap(head, w, "", "  ")
    for part in rest:
        out += wrap(part, w, "  ", "    ")
    out += ["", *verdict_lines(results, verdict, o, style)]
    figures = run_figures(results)
    numbers = key_numbers(figures, w, style)
    if numbers:
        out += ["", _heading("KEY NUMBERS", f"over all {figures.windows} windows, "
                                            f"{_span(figures.start, figures.end)}", w, style)]
        out += wrap("a/b = mean of the window values / the highest window; "
                    "Nw = in N windows", w, "  ")
        out += numbers
    out += ["", *timeline_lines(results, o, style)]
    why = why_lines(verdict, o, style, not_measured)
    if why:
        out += ["", *why]
    if verdict.advice:
        out += ["", _heading("ADVICE", "(for the same window)", w, style)]
        for a in verdict.advice:
            out += wrap(a, w, "  - ", "    ")
    phases = phase_lines(figures, w)
    if phases:
        out += ["", _heading("REQUEST PHASES", "(mean of the window means)", w, style),
                *phases]
    warnings = warning_lines(results, not_measured, o, style)
    if warnings:
        out += ["", *warnings]
    if not_measured:
        out += ["", style.bold("NOT MEASURED")]
        name_w = max(len(k) for k in not_measured)
        for k, v in sorted(not_measured.items()):
            out += wrap(f"{k:<{name_w}}  {v}", w, "  ", " " * (name_w + 4))
    if notes:
        out.append("")
        for n in notes:
            out += wrap(f"note: {n}", w, "", "  ")
    if o.all_windows and results:
        out += ["", *window_lines(results, o, style)]
    return "\n".join(out) + "\n"
