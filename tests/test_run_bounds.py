"""What the daemon keeps for its whole life is bounded: the label transitions (a
label flapping every 10 s window would add 8,640 a day to an ever-growing list),
while a report's run keeps every one."""

from __future__ import annotations

from ai_bottleneck.assembly import RUN_TRANSITIONS, ProbeSet, assemble_live
from ai_bottleneck.config import Config
from ai_bottleneck.hysteresis import Hysteresis


def flap(h: Hysteresis, n: int) -> None:
    for i in range(n):
        h.update("gpu_bound" if i % 2 else "idle", 0.9, float(i), hard=True)  # at once


def test_transitions_kept_up_to_the_bound_the_latest_last() -> None:
    bounded, unbounded = Hysteresis(1), Hysteresis(1)
    bounded.max_transitions = 5
    flap(bounded, 20)
    flap(unbounded, 20)
    assert len(unbounded.transitions) == 20
    assert bounded.transitions == unbounded.transitions[-5:]


def test_the_daemons_run_bounds_its_transitions_and_a_report_does_not() -> None:
    config = Config()
    run = assemble_live(config, ProbeSet(), mode="run", window_seconds=10)
    report = assemble_live(config, ProbeSet(), mode="diagnose", window_seconds=10)
    try:
        flap(run.pipeline.labeller._hysteresis, RUN_TRANSITIONS + 50)
        flap(report.pipeline.labeller._hysteresis, RUN_TRANSITIONS + 50)
        assert len(run.pipeline.labeller.transitions) == RUN_TRANSITIONS
        assert len(report.pipeline.labeller.transitions) == RUN_TRANSITIONS + 50
    finally:
        run.discard()
        report.discard()
