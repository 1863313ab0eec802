"""Plays several lab scenarios one after another and grades them together, with the
issue's targets beside the measured figures: the benchmark command and the CI test share it.

A scenario whose run was disturbed by other work on the host (tests/lab/runner.py,
``ScenarioRun.disturbed``: more than a tenth of the host's CPU used by processes that are
neither the agent, the service nor the load) and that got a scored window wrong is played
once more, after waiting for the host to calm down, when the time budget allows. Both
attempts are reported; the later one is scored. A quiet host (CI) never retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab.engine import EngineScenario, engine_scenarios, run_engine_scenario
from tests.lab.runner import AgentSettings, LabRunError, ScenarioRun, run_scenario
from tests.lab.schedule import Scenario, build_scenarios
from tests.lab.score import Score, format_table, score_runs

#: Per-scenario overhead beyond its windows: agent and service start, quiet-host check.
SCENARIO_OVERHEAD_SECONDS = 8.0


@dataclass(frozen=True)
class Targets:
    """The issue's targets for the full benchmark."""

    macro_f1: float = 0.95
    min_recall: float = 0.9
    detection_median_windows: float = 1.5
    flaps_per_hour: float = 0.0


TARGETS = Targets()


def scenarios_for(settings: AgentSettings) -> dict[str, Scenario | EngineScenario]:
    """Every scenario with phases of ``settings.windows_per_phase`` windows: the stand-in
    service's, then the real engine's (tests/lab/engine.py)."""
    return {**build_scenarios(settings.window_seconds, settings.windows_per_phase),
            **engine_scenarios(settings.window_seconds, settings.windows_per_phase)}


def expected_seconds(scenario: Scenario | EngineScenario, settings: AgentSettings) -> float:
    windows = (settings.lead_in_windows + settings.tail_windows
               + len(scenario.phases) * settings.windows_per_phase)
    return windows * settings.window_seconds + SCENARIO_OVERHEAD_SECONDS


@dataclass
class SuiteResult:
    settings: AgentSettings
    runs: list[ScenarioRun] = field(default_factory=list)
    first_attempts: list[ScenarioRun] = field(default_factory=list)  # replaced by a retry
    failures: dict[str, str] = field(default_factory=dict)  # scenario -> why it did not run
    wall_seconds: float = 0.0

    def score(self, *, raw: bool = False) -> Score:
        return score_runs([(r.timeline, r.label_windows(raw=raw)) for r in self.runs])

    def figures(self, s: Score) -> dict[str, Any]:
        """The figures the targets speak of, from a score of these runs."""
        with_support = [x for x in s.labels if x.support]
        lowest = min(with_support, key=lambda x: x.recall or 0.0, default=None)
        window = self.settings.window_seconds
        median = s.detection.median
        return {
            "macro_f1": s.macro_f1,
            "min_recall": None if lowest is None else lowest.recall,
            "min_recall_label": None if lowest is None else lowest.label,
            "detection_median_seconds": median,
            "detection_median_windows": None if median is None else median / window,
            "detection_p95_seconds": s.detection.p95,
            "detection_missed": s.detection.missed,
            "reset_median_seconds": s.reset.median,
            "reset_p95_seconds": s.reset.p95,
            "flaps_per_hour": s.flaps_per_hour,
        }

    def targets_met(self, figures: dict[str, Any], targets: Targets = TARGETS) -> dict[str, bool]:
        def at_least(value: float | None, target: float) -> bool:
            return value is not None and value >= target

        def at_most(value: float | None, target: float) -> bool:
            return value is not None and value <= target

        return {
            "macro_f1": at_least(figures["macro_f1"], targets.macro_f1),
            "min_recall": at_least(figures["min_recall"], targets.min_recall),
            "detection_median_windows": at_most(figures["detection_median_windows"],
                                                targets.detection_median_windows)
            and figures["detection_missed"] == 0,
            "flaps_per_hour": at_most(figures["flaps_per_hour"], targets.flaps_per_hour),
        }

    def table(self, targets: Targets = TARGETS) -> str:
        s = self.score()
        lines = [f"scenario lab: {len(self.runs)} scenarios, windows of "
                 f"{self.settings.window_seconds:g} s sampled every "
                 f"{self.settings.interval_seconds:g} s, {self.settings.windows_per_phase} "
                 f"windows a phase; {self.wall_seconds:.0f} s in all", ""]
        rows = [["scenario", "scored", "correct", "macro-F1", "detection_s", "other_cpu",
                 "note"]]
        for r in self.runs:
            rs = r.score()
            detect = [p.latency_seconds for p in rs.phases if p.kind == "detection"]
            note = "retried: host busy" if any(a.scenario == r.scenario
                                               for a in self.first_attempts) else ""
            if r.disturbed:
                note = (note + "; " if note else "") + "host busy"
            rows.append([r.scenario, str(rs.windows_scored),
                         str(sum(p.correct_windows for p in rs.phases)), _fmt(rs.macro_f1),
                         ",".join("missed" if d is None else f"{d:.1f}" for d in detect) or "-",
                         "-" if r.other_cpu is None else f"{r.other_cpu:.0%}", note])
        for name, why in self.failures.items():
            rows.append([name, "-", "-", "-", "-", "-", f"FAILED: {why}"])
        lines += [*_grid(rows), "", format_table(s), ""]
        figures = self.figures(s)
        met = self.targets_met(figures, targets)
        raw = self.figures(self.score(raw=True))
        window = self.settings.window_seconds
        lines += _grid([
            ["figure", "measured", "target", "met", "without hysteresis"],
            # Three digits: 0.948 against a 0.95 target must not read as 0.95.
            ["macro-F1", _fmt(figures["macro_f1"], 3), f">= {targets.macro_f1:.2f}",
             _yes(met["macro_f1"]), _fmt(raw["macro_f1"], 3)],
            ["lowest recall",
             f"{_fmt(figures['min_recall'], 3)} ({figures['min_recall_label']})",
             f">= {targets.min_recall:.2f}", _yes(met["min_recall"]),
             f"{_fmt(raw['min_recall'], 3)} ({raw['min_recall_label']})"],
            ["median detection latency", _windows(figures, window),
             f"<= {targets.detection_median_windows:g} windows",
             _yes(met["detection_median_windows"]), _windows(raw, window)],
            ["p95 detection latency", _seconds(figures["detection_p95_seconds"]), "-", "-",
             _seconds(raw["detection_p95_seconds"])],
            ["median reset latency", _seconds(figures["reset_median_seconds"]), "-", "-",
             _seconds(raw["reset_median_seconds"])],
            ["flaps per hour (steady)", _fmt(figures["flaps_per_hour"], 1),
             f"<= {targets.flaps_per_hour:g}", _yes(met["flaps_per_hour"]),
             _fmt(raw["flaps_per_hour"], 1)],
        ])
        lines.append("(without hysteresis: the same windows scored by their own raw labels, "
                     "as with hysteresis_windows = 1)")
        return "\n".join(lines)

    def to_json(self, targets: Targets = TARGETS) -> dict[str, Any]:
        s = self.score()
        figures = self.figures(s)
        return {
            "settings": self.settings.to_json(),
            "wall_seconds": self.wall_seconds,
            "targets": targets.__dict__,
            "figures": figures,
            "targets_met": self.targets_met(figures, targets),
            "score": s.to_json(),
            "without_hysteresis": {"figures": self.figures(self.score(raw=True)),
                                   "score": self.score(raw=True).to_json()},
            "scenarios": [{**r.to_json(), "score": r.score().to_json(),
                           "disturbed": r.disturbed, "other_cpu": r.other_cpu}
                          for r in self.runs],
            "first_attempts": [{**r.to_json(), "score": r.score().to_json(),
                                "other_cpu": r.other_cpu} for r in self.first_attempts],
            "failures": self.failures,
        }


def run_suite(names: Sequence[str], settings: AgentSettings, workdir: Path, *,
              record_dir: Path | None = None, retry_disturbed: bool = True,
              budget_seconds: float | None = None,
              progress: Callable[[str], None] = print) -> SuiteResult:
    """Play the named scenarios in order. ``record_dir``: keep each run's recording there
    (``NAME.jsonl.gz``) with its ground truth (``NAME.json``). ``budget_seconds`` bounds
    the retries (never the first attempts)."""
    scenarios = scenarios_for(settings)
    unknown = [n for n in names if n not in scenarios]
    if unknown:
        raise ValueError(f"unknown scenario {unknown[0]!r} (known: {', '.join(scenarios)})")
    result = SuiteResult(settings)
    began = time.monotonic()
    for name in names:
        scenario = scenarios[name]
        run = _attempt(scenario, settings, workdir, record_dir, result, progress)
        if run is None:
            continue
        left = None if budget_seconds is None else budget_seconds - (time.monotonic() - began)
        if (retry_disturbed and run.disturbed and (run.score().accuracy or 0.0) < 1.0
                and (left is None or left > expected_seconds(scenario, settings))):
            progress(f"{name}: other work took {run.other_cpu:.0%} of the host's CPU and a "
                     "window was wrong; playing it once more")
            again = _attempt(scenario, settings, workdir, record_dir, result, progress)
            if again is not None:
                result.first_attempts.append(run)
                run = again
        result.runs.append(run)
    result.wall_seconds = time.monotonic() - began
    return result


def _attempt(scenario: Scenario | EngineScenario, settings: AgentSettings, workdir: Path,
             record_dir: Path | None, result: SuiteResult,
             progress: Callable[[str], None]) -> ScenarioRun | None:
    record = record_dir / f"{scenario.name}.jsonl.gz" if record_dir is not None else None
    started = time.monotonic()
    try:
        if isinstance(scenario, EngineScenario):
            run = run_engine_scenario(scenario, settings, workdir / scenario.name,
                                      record_to=record)
        else:
            run = run_scenario(scenario, settings, workdir / scenario.name, record_to=record)
    except LabRunError as exc:
        result.failures[scenario.name] = str(exc)
        progress(f"{scenario.name}: FAILED: {exc}")
        return None
    result.failures.pop(scenario.name, None)
    if record_dir is not None:
        import json

        (record_dir / f"{scenario.name}.json").write_text(
            json.dumps(run.schedule_json(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    s = run.score()
    progress(f"{scenario.name}: {s.windows_scored} windows scored, accuracy "
             f"{_fmt(s.accuracy)}, other work {_fmt(run.other_cpu)} of the CPU, "
             f"{time.monotonic() - started:.0f} s")
    return run


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _windows(figures: dict[str, Any], window: float) -> str:
    median = figures["detection_median_seconds"]
    if median is None:
        return "-"
    missed = f", {figures['detection_missed']} missed" if figures["detection_missed"] else ""
    return f"{median / window:.2f} windows ({median:.1f} s{missed})"


def _grid(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]
