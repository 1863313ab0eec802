"""The terminal report: snapshots of the lab corpus at 80 and 120 columns (colour
off), a long replay that keeps its summary on one screen, no line past the width.

Snapshots live in tests/data/report/; after a deliberate change to the report,
rewrite them with ``UPDATE_SNAPSHOTS=1 python -m pytest tests/test_report.py``
and read the diff.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_bottleneck.assembly import assemble_replay
from ai_bottleneck.pipeline import Labeller, WindowResult
from ai_bottleneck.remarks import Remark, WarningKind
from ai_bottleneck.report import ReportOptions, render
from ai_bottleneck.termstyle import visible_len
from ai_bottleneck.verdict import overall_verdict
from tests import synth

LAB = Path(__file__).parent / "data" / "lab"
SNAPSHOTS = Path(__file__).parent / "data" / "report"
SCENARIOS = sorted(p.name.removesuffix(".jsonl.gz") for p in LAB.glob("*.jsonl.gz"))
WIDTHS = (80, 120)
SCREEN_LINES = 24
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Clock times in the report are local: pin the zone so snapshots match anywhere."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def _lab(name: str) -> tuple[list[WindowResult], dict[str, str]]:
    run = assemble_replay(LAB / f"{name}.jsonl.gz")
    results = list(run.results)
    return results, dict(run.labeller.unavailable)


def _render(results: list[WindowResult], unavailable: dict[str, str], width: int,
            title: str, **kw: bool) -> str:
    return render(results, overall_verdict(results), title=title, not_measured=unavailable,
                  options=ReportOptions(width=width, **kw))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", SCENARIOS)
def test_lab_report_matches_its_snapshot(name: str, width: int) -> None:
    results, unavailable = _lab(name)
    text = _render(results, unavailable, width, f"ai-bottleneck replay: {name}")
    assert max(len(line) for line in text.splitlines()) <= width
    assert "\x1b[" not in text  # colour off
    path = SNAPSHOTS / f"{name}-{width}.txt"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no snapshot {path}: run with UPDATE_SNAPSHOTS=1"
    assert text == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("width", (40, 60, 80, 100, 120, 200))
@pytest.mark.parametrize("name", ["transitions", "network_bound"])
def test_no_line_is_wider_than_the_terminal(name: str, width: int) -> None:
    results, unavailable = _lab(name)
    long_title = "ai-bottleneck replay: " + "x" * 300 + "; file: /" + "very-long/" * 30
    for color in (False, True):
        text = _render(results, unavailable, width, long_title, color=color, all_windows=True)
        widest = max(visible_len(line) for line in text.splitlines())
        assert widest <= width, (width, color)


def test_verdict_first_and_every_figure_says_what_it_covers() -> None:
    results, unavailable = _lab("transitions")
    text = _render(results, unavailable, 80, "t")
    lines = text.splitlines()
    assert lines[2].startswith("VERDICT  gpu_bound  (confidence ")
    verdict = overall_verdict(results)
    held = verdict.label_windows["gpu_bound"]
    # the confidence explained, with the share that makes it low
    assert f"gpu_bound in {held} of {len(results)} windows" in text
    assert f"confidence {verdict.confidence:.2f} = " in text
    # the figures under the verdict: over the verdict's windows, then over all of them
    assert f"in the {held} gpu_bound windows: GPU busy " in text
    assert f"KEY NUMBERS  over all {len(results)} windows" in text
    # the evidence names the window it comes from
    assert verdict.evidence_window is not None
    assert "WHY  (the strongest gpu_bound window, " in text
    # one unit convention: the H100's memory reads in GiB, never GB
    assert "80 GiB" in text and " GB " not in text


def test_calls_add_up_to_answered_and_failed() -> None:
    """'27 calls, 44 failed' could not add up: the CALLS column is every call made."""
    parts = (synth.gpu(util=0.5), synth.host(cpu=0.3), synth.http(total=0.2),
             synth.http_down(target="http://down.test/"))
    results = list(Labeller(10.0, origin=synth.T0).run(synth.scene(*parts, seconds=30)))
    text = _render(results, {}, 120, "t")
    row = next(line for line in text.splitlines() if "http://down.test/" in line)
    cells = row.split()
    assert cells[1] == "30" and cells[2] == "30" and cells[3] == "(100%)", row


def test_a_few_windows_of_a_label_do_not_read_as_the_run() -> None:
    """Two idle windows and one cpu_bound: the verdict says 1 of 3 and why it is low."""
    quiet = synth.scene(synth.gpu(util=0.0), synth.host(cpu=0.02), synth.nic(),
                        seconds=20)
    busy = synth.scene(synth.gpu(util=0.05), synth.host(cpu=0.98, busiest=1.0, psi=0.6),
                       synth.nic(), seconds=10, start=synth.T0 + 20)
    results = list(Labeller(10.0, origin=synth.T0).run([*quiet, *busy]))
    assert [r.label for r in results] == ["idle", "idle", "cpu_bound"]
    text = _render(results, {}, 80, "t")
    assert "cpu_bound in 1 of 3 windows" in text
    assert "other windows: idle 2" in text
    assert "in the 1 cpu_bound windows: GPU busy 5%, CPU 98%" in text


def test_a_long_replay_keeps_its_summary_on_the_first_screen() -> None:
    """Six hours at 1 Hz whose load changes every 20 minutes (tests/synth.py): 360
    one-minute windows summarise into one screen; --windows lists them all."""
    samples = synth.day_samples(hours=6, gpus=1, processes=False)
    results = list(Labeller(60.0, origin=synth.T0).run(samples))
    assert len(results) == 360
    text = _render(results, {}, 80, "ai-bottleneck replay: 6 hours")
    lines = text.splitlines()
    end_of_numbers = lines.index("", lines.index(next(x for x in lines
                                                      if x.startswith("KEY NUMBERS"))) + 1)
    tables = [i for i, line in enumerate(lines) if line.startswith("  TARGET")]
    assert tables and tables[0] < SCREEN_LINES, text
    timeline_end = lines.index("", lines.index(next(x for x in lines
                                                    if x.startswith("TIMELINE"))))
    assert timeline_end < 2 * SCREEN_LINES, text  # the label runs too, summarised
    assert end_of_numbers < timeline_end
    assert "one character per 5 windows" in text
    assert "more runs, none longer" in text  # the runs list is cut, and says so
    assert len(lines) < 80, len(lines)
    every = _render(results, {}, 80, "t", all_windows=True).splitlines()
    assert len(every) >= len(lines) + 360


def test_colour_on_marks_the_label_and_nothing_changes_without_it() -> None:
    results, unavailable = _lab("gpu_bound")
    plain = _render(results, unavailable, 80, "t")
    colour = _render(results, unavailable, 80, "t", color=True)
    assert "\x1b[1;31mgpu_bound\x1b[0m" in colour
    assert ANSI.sub("", colour) == plain


def test_probe_warnings_the_not_measured_list_covers_are_not_repeated() -> None:
    results, _ = _lab("idle")
    warned = Remark(WarningKind.PROBE_UNAVAILABLE, "probe gpu unavailable: no NVIDIA driver",
                    "gpu")
    failing = Remark(WarningKind.PROBE_FAILING, "probe nic failing: permission denied", "nic")
    tagged = [WindowResult(**{**r.__dict__, "warnings": (warned, failing)}) for r in results]
    text = _render(tagged, {"gpu": "no NVIDIA driver"}, 120, "t")
    assert "probe gpu unavailable" not in text
    assert text.count("no NVIDIA driver") == 1  # once, under NOT MEASURED
    assert f"{len(results)}w: probe nic failing: permission denied" in text


def test_a_long_not_measured_reason_is_printed_once() -> None:
    """No GPU driver: the NVML sentence sits under NOT MEASURED, and the evidence
    that quotes it points there."""
    reason = ("no NVIDIA driver: NVML library libnvidia-ml.so.1 not found (install the "
              "NVIDIA driver, or run where one is installed)")
    parts = (synth.host(cpu=0.98, busiest=1.0, psi=0.6), synth.nic())
    labeller = Labeller(10.0, origin=synth.T0, unavailable={"gpu": reason})
    results = list(labeller.run(synth.scene(*parts, seconds=20)))
    verdict = overall_verdict(results)
    assert any(reason in e for e in verdict.reasons)  # the classifier quotes it
    text = render(results, verdict, title="t", not_measured={"gpu": reason},
                  options=ReportOptions(width=1000))
    assert text.count(reason) == 1
    assert "(unavailable: see NOT MEASURED)" in text


def test_every_label_has_its_character_colour_and_fill() -> None:
    from ai_bottleneck.labels import Label
    from ai_bottleneck.svgchart import LABEL_FILL
    from ai_bottleneck.termstyle import LABEL_COLORS
    from ai_bottleneck.timeline import LABEL_CHARS

    for table in (LABEL_CHARS, LABEL_COLORS, LABEL_FILL):
        assert set(table) == {label.value for label in Label}


def test_the_report_knows_every_phase_the_classifier_reads() -> None:
    """A call with every phase the probes write and the reader reads: the report's
    phase line names each one, in the order a call goes through them."""
    from ai_bottleneck.figures import run_figures
    from ai_bottleneck.probes.sample import Sample
    from ai_bottleneck.probes.vocabulary import HTTP_PHASES, HttpPhase
    from ai_bottleneck.report_tables import phase_lines

    target = "http://inference.test/v1/run"
    values = {p: 0.01 * (i + 1) for i, p in enumerate(HTTP_PHASES)}
    samples = [Sample(synth.T0 + s, "http", {"target": target},
                      {**values, "total_seconds": sum(values.values()), "status": 200.0})
               for s in range(10)]
    results = list(Labeller(10.0, origin=synth.T0).run(samples))
    assert results and results[0].readings is not None
    assert set(results[0].readings.http[0].phases) == set(HTTP_PHASES)
    line = " ".join(phase_lines(run_figures(results), 1000))
    shown = re.findall(r"(\w+) \d+ ms", line)
    assert shown == [p.value for p in HttpPhase], line
