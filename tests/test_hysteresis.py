"""Hysteresis: flapping input gives no flapping label; hard evidence switches at once."""

from __future__ import annotations

import pytest

from agent.hysteresis import Hysteresis


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
