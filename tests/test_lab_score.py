"""Scoring against hand-made window lists whose answers are worked out by hand in the
comments, and the scenario definitions that feed it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.lab.schedule import (
    ARTICLE_CLIENTS,
    ARTICLE_LINK_BITS_PER_SECOND,
    ARTICLE_UPLOAD_BYTES,
    CI_WINDOW_SECONDS,
    ci_scenarios,
    full_scenarios,
)
from tests.lab.score import (
    LABEL_ORDER,
    TimedPhase,
    format_table,
    parse_windows,
    quantile,
    score,
    score_runs,
    windows_from_output,
    write_json,
)

# idle -> network_bound -> gpu_bound -> idle, 30 s each; transitions at 30, 60 and 90.
TRANSITIONS = [TimedPhase("idle", "idle", 0, 30),
               TimedPhase("network_bound", "network_bound", 30, 60),
               TimedPhase("gpu_bound", "gpu_bound", 60, 90),
               TimedPhase("idle_again", "idle", 90, 120)]


def windows(*labels: str, start: float = 0, length: float = 10) -> list[dict[str, Any]]:
    """Back-to-back windows with these labels."""
    return [{"start": start + i * length, "end": start + (i + 1) * length, "label": label,
             "confidence": 0.8, "evidence": []} for i, label in enumerate(labels)]


def test_all_correct() -> None:
    ws = windows("idle", "idle", "idle", "network_bound", "network_bound", "network_bound",
                 "gpu_bound", "gpu_bound", "gpu_bound", "idle", "idle", "idle")
    s = score(TRANSITIONS, ws)
    # Guard band of one window (10 s) around 30, 60, 90 leaves [0,10] [10,20] | [40,50] |
    # [70,80] | [100,110] [110,120]: six scored windows, six in guard bands.
    assert (s.guard_seconds, s.windows_total, s.windows_scored, s.windows_in_guard,
            s.windows_outside) == (10, 12, 6, 6, 0)
    assert s.accuracy == 1.0 and s.macro_f1 == 1.0
    assert {x.label: (x.precision, x.recall, x.f1, x.support) for x in s.labels} == {
        "gpu_bound": (1.0, 1.0, 1.0, 1), "network_bound": (1.0, 1.0, 1.0, 1),
        "idle": (1.0, 1.0, 1.0, 4)}
    assert s.confusion == {
        "gpu_bound": {"gpu_bound": 1, "network_bound": 0, "idle": 0},
        "network_bound": {"gpu_bound": 0, "network_bound": 1, "idle": 0},
        "idle": {"gpu_bound": 0, "network_bound": 0, "idle": 4}}
    # The first window of every phase is right: each is seen when that window ends.
    assert [p.latency_seconds for p in s.phases] == [10, 10, 10, 10]
    assert [p.kind for p in s.phases] == ["detection", "detection", "detection", "reset"]
    assert (s.detection.median, s.detection.p95, s.detection.detected, s.detection.missed) \
        == (10, 10, 3, 0)
    assert (s.reset.median, s.reset.detected, s.reset.missed) == (10, 1, 0)
    assert (s.flaps, s.steady_seconds, s.flaps_per_hour) == (0, 60, 0.0)


def test_lag_shows_in_latency_not_in_accuracy() -> None:
    # network_bound is seen one window late, the reset to idle one window late.
    ws = windows("idle", "idle", "idle", "idle", "network_bound", "network_bound",
                 "gpu_bound", "gpu_bound", "gpu_bound", "gpu_bound", "idle", "idle")
    s = score(TRANSITIONS, ws)
    assert s.accuracy == 1.0  # the late windows are in the guard bands
    # idle: [0,10] -> 10; network_bound: first run of two starts at [40,50] -> 50 - 30 = 20;
    # gpu_bound: [60,70] -> 10; reset: [100,110] -> 110 - 90 = 20.
    assert [p.latency_seconds for p in s.phases] == [10, 20, 10, 20]
    # Detection latencies 10, 20, 10: median 10; p95 at rank 0.95 x 2 = 1.9 of
    # [10, 10, 20] = 10 + 0.9 x 10 = 19.
    assert s.detection.median == 10
    assert s.detection.p95 == pytest.approx(19.0)
    assert (s.reset.median, s.reset.p95) == (20, 20)


def test_a_phase_never_detected() -> None:
    # The agent sticks to network_bound through the whole gpu_bound phase.
    ws = windows("idle", "idle", "idle", "network_bound", "network_bound", "network_bound",
                 "network_bound", "network_bound", "network_bound", "network_bound", "idle",
                 "idle")
    s = score(TRANSITIONS, ws)
    gpu_phase = s.phases[2]
    assert gpu_phase.latency_seconds is None and gpu_phase.correct_windows == 0
    assert (s.detection.detected, s.detection.missed) == (2, 1)
    assert (s.detection.median, s.detection.p95) == (10, 10)  # over the detected ones
    assert s.reset.median == 20  # [90,100] still says network_bound
    # Scored: idle x4 right, network [40,50] right, gpu [70,80] said network_bound.
    assert s.accuracy == pytest.approx(5 / 6)
    by_label = {x.label: x for x in s.labels}
    # network_bound: TP 1, FP 1, FN 0 -> precision 1/2, recall 1, F1 2/3.
    assert (by_label["network_bound"].precision, by_label["network_bound"].recall) == (0.5, 1)
    assert by_label["network_bound"].f1 == pytest.approx(2 / 3)
    # gpu_bound: never given -> precision undefined, recall 0, F1 0.
    assert (by_label["gpu_bound"].precision, by_label["gpu_bound"].recall,
            by_label["gpu_bound"].f1, by_label["gpu_bound"].given) == (None, 0, 0, 0)
    assert s.macro_f1 == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert s.confusion["gpu_bound"] == {"gpu_bound": 0, "network_bound": 1, "idle": 0}


def test_one_flap_in_a_steady_phase() -> None:
    phase = [TimedPhase("balanced", "balanced", 0, 60)]
    s = score(phase, windows("balanced", "balanced", "balanced", "idle", "idle", "idle"))
    # No transition, no guard band: all six windows scored; one change in 60 s of steady
    # windows = 60 per hour.
    assert (s.windows_scored, s.flaps, s.steady_seconds) == (6, 1, 60)
    assert s.flaps_per_hour == pytest.approx(60.0)
    assert s.phases[0].latency_seconds == 10
    assert s.accuracy == 0.5
    # "unknown" or any label the agent gives appears in the table even without support.
    by_label = {x.label: x for x in s.labels}
    assert (by_label["idle"].support, by_label["idle"].given, by_label["idle"].f1) == (0, 3, 0)
    assert s.macro_f1 == pytest.approx(2 * 3 / (2 * 3 + 0 + 3))  # over truth labels only


def test_flaps_count_every_change_and_stable_needs_a_run() -> None:
    phase = [TimedPhase("gpu", "gpu_bound", 0, 60)]
    ws = windows("idle", "gpu_bound", "idle", "gpu_bound", "gpu_bound", "gpu_bound")
    # Changes: idle>gpu, gpu>idle, idle>gpu = 3 flaps.
    assert score(phase, ws).flaps == 3
    # With stable=2 the first run of two right windows is [30,40] [40,50]: 40 s.
    assert score(phase, ws, stable=2).phases[0].latency_seconds == 40
    # With stable=1 the lone right window [10,20] counts: 20 s.
    assert score(phase, ws, stable=1).phases[0].latency_seconds == 20
    # A run that would need a window past the phase end is no detection.
    assert score(phase, ws[:4], stable=2).phases[0].latency_seconds is None


def test_unaligned_windows_outside_and_straddling() -> None:
    phases = [TimedPhase("idle", "idle", 0, 30), TimedPhase("gpu", "gpu_bound", 30, 60)]
    ws = windows("idle", "idle", "idle", "gpu_bound", "gpu_bound", "gpu_bound", "gpu_bound",
                 start=-5)
    # Windows [-5,5] [5,15] [15,25] [25,35] [35,45] [45,55] [55,65]; midpoints 0 10 20 30
    # 40 50 60: the last is past the end (outside). Guard [20,40] takes [15,25] [25,35]
    # [35,45]; scored: [-5,5] [5,15] (idle) and [45,55] (gpu).
    s = score(phases, ws)
    assert (s.windows_scored, s.windows_in_guard, s.windows_outside) == (3, 3, 1)
    # The window straddling the transition ([25,35], said gpu_bound) is the detection:
    # it ends 5 s after the phase start and the next window agrees.
    assert s.phases[1].latency_seconds == 5
    assert s.phases[0].latency_seconds == 5  # [-5,5] ends 5 s in
    # An explicit guard of half a window keeps [15,25] and [35,45].
    assert score(phases, ws, guard_seconds=5).windows_scored == 5


def test_quantile_and_empty_input() -> None:
    assert quantile([], 0.5) is None
    assert quantile([3.0], 0.95) == 3.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    s = score(TRANSITIONS, [])
    assert (s.accuracy, s.macro_f1, s.flaps_per_hour) == (None, None, None)
    assert (s.detection.detected, s.detection.missed, s.reset.missed) == (0, 3, 1)


def test_bad_windows_name_the_window() -> None:
    with pytest.raises(ValueError, match=r"window 1: 'label' must be a non-empty string"):
        parse_windows([{"start": 0, "end": 1, "label": "idle"}, {"start": 1, "end": 2}])
    with pytest.raises(ValueError, match=r"window 0: end 1.0 is not after start 2.0"):
        parse_windows([{"start": 2, "end": 1, "label": "idle"}])
    with pytest.raises(ValueError, match=r"window 0: 'start' must be a finite number"):
        parse_windows([{"start": "soon", "end": 1, "label": "idle"}])
    with pytest.raises(ValueError, match="stable must be >= 1"):
        score(TRANSITIONS, [], stable=0)


def test_reads_diagnose_and_replay_output() -> None:
    ws = windows("idle", "gpu_bound")
    diagnose = json.dumps({"windows": ws, "verdict": {"label": "gpu_bound"}})
    replay = "\n".join(json.dumps(w) for w in ws) + "\n"
    assert windows_from_output(diagnose) == windows_from_output(replay) == parse_windows(ws)
    assert windows_from_output("") == []
    with pytest.raises(ValueError, match="line 2: not JSON"):
        windows_from_output(json.dumps(ws[0]) + "\n{oops\n")


def test_table_and_json(tmp_path: Path) -> None:
    ws = windows("idle", "idle", "idle", "network_bound", "network_bound", "network_bound",
                 "network_bound", "network_bound", "network_bound", "network_bound", "idle",
                 "idle")
    s = score(TRANSITIONS, ws)
    table = format_table(s)
    assert "macro-F1 0.56  accuracy 0.83" in table
    assert "gpu_bound      gpu_bound      detection  missed" in table
    assert "detection latency: median 10.0 s, p95 10.0 s (2 detected, 1 missed)" in table
    assert "reset latency: median 20.0 s, p95 20.0 s (1 detected, 0 missed)" in table
    path = tmp_path / "score.json"
    write_json(path, s)
    document = json.loads(path.read_text())
    assert document == json.loads(json.dumps(s.to_json()))
    assert document["labels"]["gpu_bound"] == {"precision": None, "recall": 0.0, "f1": 0.0,
                                               "support": 1, "given": 0, "true_positives": 0}
    assert document["detection_latency_seconds"] == {"median": 10.0, "p95": 10.0,
                                                     "detected": 2, "missed": 1}
    assert document["phases"][2]["latency_seconds"] is None


def test_scenarios_are_the_issue_list_and_fit_the_scoring() -> None:
    ci = ci_scenarios()
    assert set(ci) == {"idle", "gpu_bound", "network_bound", "cpu_bound", "vram_bound",
                       "balanced", "transitions", "egress_big_answers", "internal_hop",
                       "purchased_rate", "busy_host_idle_service", "starved_service"}
    for scenario in [*ci.values(), *full_scenarios().values()]:
        assert all(p.expected_label in LABEL_ORDER for p in scenario.phases)
    article = ci["network_bound"].phases[0]
    assert article.load is not None
    assert (article.load.clients, article.load.payload_bytes, article.link_rate_bits_per_second) \
        == (ARTICLE_CLIENTS, ARTICLE_UPLOAD_BYTES, ARTICLE_LINK_BITS_PER_SECOND)
    assert ci["network_bound"].needs_shaped_link and not ci["gpu_bound"].needs_shaped_link
    transitions = ci["transitions"]
    assert [p.expected_label for p in transitions.phases] == [
        "idle", "network_bound", "gpu_bound", "idle"]
    assert ci["idle"].phases[0].load is None

    # A CI phase is three windows long: after the guard bands a perfect agent has one
    # scored window in each inner phase and two in the first and last (which have a
    # transition on one side only); every phase is detected when its first window ends.
    timeline = transitions.timeline(start=1_000_000.0)
    assert timeline[0].start == 1_000_000.0 and timeline[-1].end == pytest.approx(
        1_000_000.0 + transitions.duration_seconds)
    perfect = [{"start": w0, "end": w0 + CI_WINDOW_SECONDS, "label": phase.label}
               for phase in timeline
               for w0 in (phase.start, phase.start + CI_WINDOW_SECONDS,
                          phase.start + 2 * CI_WINDOW_SECONDS)]
    s = score(timeline, perfect)
    assert [p.scored_windows for p in s.phases] == [2, 1, 1, 2]
    assert s.accuracy == 1.0
    assert [p.latency_seconds for p in s.phases] == [CI_WINDOW_SECONDS] * 4


def test_runs_scored_together_with_a_guarded_lead_in() -> None:
    # Two runs, each watched for one window before its phase started (the runner's
    # lead-in): the first window of each phase is a guard band, the lead-in lies outside.
    one = [TimedPhase("gpu_bound", "gpu_bound", 10, 40)]
    two = [TimedPhase("idle", "idle", 1000, 1030)]
    ws_one = windows("idle", "idle", "gpu_bound", "gpu_bound")             # 0..40
    ws_two = windows("gpu_bound", "gpu_bound", "idle", "idle", start=990)  # 990..1030
    s = score_runs([(one, ws_one), (two, ws_two)])
    assert (s.windows_total, s.windows_scored, s.windows_in_guard, s.windows_outside) == (
        8, 4, 2, 2)
    # The guard band takes the window in which each run's label was still the lead-in's.
    assert s.confusion == {"gpu_bound": {"gpu_bound": 2, "idle": 0},
                           "idle": {"gpu_bound": 0, "idle": 2}}
    assert s.macro_f1 == 1.0
    assert [p.latency_seconds for p in s.phases] == [20, 20]
    # Without the lead-in guard the window right after the start is scored too.
    unguarded = score_runs([(one, ws_one), (two, ws_two)], lead_in=False)
    assert (unguarded.windows_scored, unguarded.accuracy) == (6, 4 / 6)
    assert score(one, ws_one).windows_scored == 3
