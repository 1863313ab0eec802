"""Hysteresis: flapping input gives no flapping label; hard evidence switches at once."""

from __future__ import annotations

import pytest

from ai_bottleneck.hysteresis import Hysteresis


def run(h: Hysteresis, raws: list[str], hard_at: frozenset[int] = frozenset()) -> list[str]:
    return [h.update(raw, 0.8, float(i), hard=i in hard_at).label for i, raw in enumerate(raws)]


def test_the_first_label_is_taken_at_once() -> None:
    h = Hysteresis(3)
    d = h.update("idle", 0.9, 100.0)
    assert (d.label, d.held, d.transition is not None) == ("idle", False, True)
    assert h.transitions[0].from_label is None


def test_flapping_input_gives_a_steady_label() -> None:
    h = Hysteresis(2)
    raws = ["gpu_bound", "network_bound"] * 10
    assert run(h, raws) == ["gpu_bound"] * 20
    assert len(h.transitions) == 1  # only the first label


def test_three_way_flapping_does_not_flap_either() -> None:
    h = Hysteresis(2)
    assert set(run(h, ["balanced", "gpu_bound", "cpu_bound"] * 5)) == {"balanced"}


def test_a_new_label_takes_over_after_holding_for_the_configured_windows() -> None:
    h = Hysteresis(3)
    labels = run(h, ["idle", "gpu_bound", "gpu_bound", "gpu_bound", "gpu_bound"])
    assert labels == ["idle", "idle", "idle", "gpu_bound", "gpu_bound"]
    t = h.transitions[-1]
    assert (t.from_label, t.to_label, t.windows, t.at, t.hard) == ("idle", "gpu_bound", 3, 3.0,
                                                                   False)


def test_an_interrupted_streak_starts_over() -> None:
    h = Hysteresis(3)
    labels = run(h, ["idle", "gpu_bound", "gpu_bound", "idle", "gpu_bound", "gpu_bound"])
    assert labels == ["idle"] * 6


def test_hard_evidence_switches_at_once_and_is_recorded_as_hard() -> None:
    h = Hysteresis(5)
    labels = run(h, ["gpu_bound", "gpu_bound", "vram_bound", "gpu_bound"], hard_at=frozenset({2}))
    assert labels == ["gpu_bound", "gpu_bound", "vram_bound", "vram_bound"]
    assert h.transitions[-1].hard


def test_hold_of_one_follows_every_window() -> None:
    raws = ["idle", "gpu_bound", "idle", "cpu_bound"]
    assert run(Hysteresis(1), raws) == raws


def test_confidence_shrinks_while_a_change_is_pending() -> None:
    h = Hysteresis(4)
    h.update("gpu_bound", 0.8, 0.0)
    held = [h.update("network_bound", 0.9, float(i)) for i in (1, 2, 3)]
    assert [d.label for d in held] == ["gpu_bound"] * 3
    assert [d.confidence for d in held] == [0.6, 0.4, 0.2]
    assert [d.pending for d in held] == [("network_bound", 1), ("network_bound", 2),
                                         ("network_bound", 3)]
    assert all(d.held for d in held)
    taken = h.update("network_bound", 0.9, 4.0)
    assert (taken.label, taken.confidence, taken.held) == ("network_bound", 0.9, False)


def test_hold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="hold_windows"):
        Hysteresis(0)


def settle_run(h: Hysteresis, windows: list[tuple[str, bool]]) -> list[str]:
    """Each window: (raw label, whether the window settles it)."""
    return [h.update(raw, 0.8, float(i), settled=settled).label
            for i, (raw, settled) in enumerate(windows)]


def test_a_settled_change_is_taken_after_one_window() -> None:
    h = Hysteresis(2)
    labels = settle_run(h, [("idle", False), ("idle", False), ("gpu_bound", True)])
    assert labels == ["idle", "idle", "gpu_bound"]
    t = h.transitions[-1]
    assert (t.from_label, t.to_label, t.windows, t.hard, t.settled) == (
        "idle", "gpu_bound", 1, False, True)
    assert t.to_json()["settled"] is True


def test_an_unsettled_change_still_waits_for_the_hold() -> None:
    h = Hysteresis(3)
    labels = settle_run(h, [("idle", False), ("gpu_bound", False), ("gpu_bound", False),
                            ("gpu_bound", False)])
    assert labels == ["idle", "idle", "idle", "gpu_bound"]
    assert not h.transitions[-1].settled


def test_a_pending_change_can_be_settled_by_a_later_window() -> None:
    # A window that straddles the change does not settle it; the next, wholly after
    # it, does, before the hold of three would have.
    h = Hysteresis(3)
    labels = settle_run(h, [("idle", False), ("idle", False), ("gpu_bound", False),
                            ("gpu_bound", True)])
    assert labels == ["idle", "idle", "idle", "gpu_bound"]
    assert h.transitions[-1].windows == 2 and h.transitions[-1].settled


def test_regimes_alternating_window_by_window_move_the_label_once() -> None:
    # Each window settled: the first change is taken, then the new label has not held
    # two windows in a row, so only the plain hold could move it, and never does.
    h = Hysteresis(2)
    windows = [("gpu_bound", False)] * 3 + [("network_bound", True), ("gpu_bound", True)] * 4
    labels = settle_run(h, windows)
    assert labels == ["gpu_bound"] * 3 + ["network_bound"] * 8
    assert [t.to_label for t in h.transitions] == ["gpu_bound", "network_bound"]


def test_a_settled_label_is_established_once_it_held_for_the_hold() -> None:
    h = Hysteresis(2)
    labels = settle_run(h, [("idle", False), ("idle", False), ("gpu_bound", True),
                            ("idle", True), ("gpu_bound", False), ("idle", True),
                            ("gpu_bound", False), ("gpu_bound", False), ("idle", True)])
    # gpu_bound (settled) has not held two windows in a row when idle is settled: held,
    # twice; once it has, a settled idle takes over again.
    assert labels == ["idle", "idle"] + ["gpu_bound"] * 6 + ["idle"]
    # A label taken by the plain hold has held already.
    h = Hysteresis(2)
    labels = settle_run(h, [("idle", False), ("gpu_bound", False), ("gpu_bound", False),
                            ("cpu_bound", True)])
    assert labels == ["idle", "idle", "gpu_bound", "cpu_bound"]


def test_the_first_label_replaced_nothing_and_can_be_settled_away_at_once() -> None:
    h = Hysteresis(2)
    assert settle_run(h, [("unknown", False), ("idle", True)]) == ["unknown", "idle"]


def test_may_settle_says_when_settling_would_matter() -> None:
    h = Hysteresis(2)
    assert not h.may_settle("idle")  # no label yet: the first is taken anyway
    h.update("idle", 0.9, 0.0)
    assert not h.may_settle("idle")  # no change
    assert not h.may_settle("vram_bound", hard=True)  # hard evidence is taken anyway
    assert h.may_settle("gpu_bound")
    h.update("gpu_bound", 0.9, 1.0)  # pending, one of two
    assert not h.may_settle("gpu_bound")  # the hold takes it with this window anyway
    assert h.may_settle("cpu_bound")
    assert not Hysteresis(1).may_settle("idle")
    one = Hysteresis(1)
    one.update("idle", 0.9, 0.0)
    assert not one.may_settle("gpu_bound")  # a hold of one takes every change at once


def test_settled_is_ignored_where_it_may_not_apply() -> None:
    h = Hysteresis(2)
    h.update("idle", 0.9, 0.0)
    h.update("gpu_bound", 0.9, 1.0, settled=True)  # taken, not yet established
    d = h.update("idle", 0.9, 2.0, settled=True)
    assert (d.label, d.held) == ("gpu_bound", True)
    d = h.update("vram_bound", 1.0, 3.0, hard=True, settled=True)
    assert d.transition is not None and d.transition.hard and not d.transition.settled
