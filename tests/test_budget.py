"""The active-probe budget: sliding traffic window, busy-NIC skip; skip records."""

from __future__ import annotations

import pytest

from ai_bottleneck.budget import ActiveBudget, BudgetOptions, bytes_in_samples, expected_bytes_of
from ai_bottleneck.probes.base import Skip, SkipKind, is_skipped, skip_kind, skipped_sample
from ai_bottleneck.probes.options import OptionError, parse_options
from ai_bottleneck.probes.sample import Sample

MB = 1e6


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_window_slides_old_spending_out() -> None:
    clock = FakeClock(0.0)
    budget = ActiveBudget(bytes_per_hour=1000 * MB, busy_nic_ratio=None, clock=clock)
    budget.spend("iperf3", 600 * MB)
    clock.now = 1800.0
    budget.spend("download", 300 * MB)
    clock.now = 1900.0
    assert budget.spent() == pytest.approx(900 * MB)
    assert budget.remaining() == pytest.approx(100 * MB)
    skip = budget.permit("iperf3", 200 * MB, None)
    assert skip is not None and skip.kind is SkipKind.BUDGET
    assert "traffic budget" in skip.reason and "900.0 MB of 1000.0 MB" in skip.reason
    # The 600 MB from t=0 leaves the window at t=3600, i.e. 1700 s from now.
    assert "room again in 1700 s" in str(skip)
    clock.now = 3599.0
    assert budget.permit("iperf3", 200 * MB, None) is not None
    clock.now = 3600.0
    assert budget.permit("iperf3", 200 * MB, None) is None
    assert budget.spent() == pytest.approx(300 * MB)
    clock.now = 1800.0 + 3600.0
    assert budget.spent() == 0.0


def test_spend_at_explicit_times_and_small_runs_fit() -> None:
    clock = FakeClock(10_000.0)
    budget = ActiveBudget(bytes_per_hour=100 * MB, busy_nic_ratio=0.5, clock=clock)
    budget.spend("iperf3", 50 * MB, at=10_000.0 - 3700)  # already outside the window
    budget.spend("iperf3", 50 * MB, at=10_000.0 - 100)
    assert budget.spent() == pytest.approx(50 * MB)
    assert budget.permit("iperf3", 50 * MB, 0.1) is None
    assert budget.permit("iperf3", 51 * MB, 0.1) is not None
    # Nonsense amounts never count.
    budget.spend("iperf3", float("nan"))
    budget.spend("iperf3", -5.0)
    assert budget.spent() == pytest.approx(50 * MB)


def test_exhausted_budget_admits_not_even_a_run_without_estimate() -> None:
    clock = FakeClock(0.0)
    budget = ActiveBudget(bytes_per_hour=100 * MB, busy_nic_ratio=None, clock=clock)
    budget.spend("download", 100 * MB)
    clock.now = 10.0
    skip = budget.permit("download", 0.0, None)
    assert skip is not None and "room again in 3590 s" in skip.reason
    assert ActiveBudget(bytes_per_hour=0, clock=clock).permit("iperf3", 0.0, None) is not None


def test_run_larger_than_whole_budget_says_so() -> None:
    budget = ActiveBudget(bytes_per_hour=10 * MB, clock=FakeClock())
    skip = budget.permit("download", 25 * MB, None)
    assert skip is not None and skip.kind is SkipKind.BUDGET
    assert "more than the whole budget" in skip.reason


def test_no_limit_means_traffic_never_blocks() -> None:
    budget = ActiveBudget(bytes_per_hour=None, busy_nic_ratio=None, clock=FakeClock())
    budget.spend("iperf3", 1e15)
    assert budget.permit("iperf3", 1e15, 0.99) is None
    assert budget.remaining() is None


def test_busy_nic_skips_with_reason() -> None:
    budget = ActiveBudget(bytes_per_hour=None, busy_nic_ratio=0.5, clock=FakeClock())
    skip = budget.permit("iperf3", 0.0, 0.83)
    assert skip is not None and skip.kind is SkipKind.NIC_BUSY
    assert "NIC busy: 83%" in skip.reason and "50%" in skip.reason
    assert budget.permit("iperf3", 0.0, 0.5) is not None  # at the limit counts as busy
    assert budget.permit("iperf3", 0.0, 0.49) is None
    # Unknown utilization (no link speed): the check cannot apply.
    assert budget.permit("iperf3", 0.0, None) is None
    assert budget.permit("iperf3", 0.0, float("nan")) is None


def test_skipped_sample_is_neither_value_nor_failure() -> None:
    s = skipped_sample("iperf3", "NIC busy:\n 83% in use", labels={"target": "a:5201"}, t=5.0)
    assert s.ok
    assert dict(s.values) == {"skipped": 1.0}
    assert s.labels == {"target": "a:5201", "skip_reason": "NIC busy: 83% in use",
                        "skip_kind": "other"}  # a bare reason names no kind
    assert is_skipped(s)
    assert skip_kind(s) is SkipKind.OTHER
    kinded = skipped_sample("iperf3", Skip(SkipKind.NIC_BUSY, "NIC busy: 83% in use"), t=5.0)
    assert kinded.labels["skip_kind"] == "nic_busy"
    assert skip_kind(Sample.from_json(kinded.to_json())) is SkipKind.NIC_BUSY
    # Older recordings and plugins' skips carry no kind, or one this version lacks.
    assert skip_kind(Sample(5.0, "iperf3", {"skip_reason": "x"}, {"skipped": 1.0})) is (
        SkipKind.OTHER)
    assert skip_kind(Sample(5.0, "iperf3", {"skip_reason": "x", "skip_kind": "future"},
                            {"skipped": 1.0})) is SkipKind.OTHER
    assert is_skipped(Sample.from_json(s.to_json()))
    assert not is_skipped(Sample(t=1.0, probe="iperf3", values={"bits_per_second": 1.0}))


def test_traffic_helpers() -> None:
    class Estimating:
        def expected_bytes(self) -> float:
            return 5e6

    class Silent:
        pass

    class Broken:
        def expected_bytes(self) -> float:
            return float("inf")

    assert expected_bytes_of(Estimating()) == 5e6
    assert expected_bytes_of(Silent()) == 0.0
    assert expected_bytes_of(Broken()) == 0.0
    samples = [Sample(t=1.0, probe="iperf3", values={"bytes": 100.0}),
               Sample(t=1.0, probe="iperf3", error="unable to connect to server"),
               Sample(t=1.0, probe="iperf3", values={"bytes": 50.0})]
    assert bytes_in_samples(samples) == 150.0


def test_options_parse_units_and_reject_nonsense() -> None:
    opts = parse_options(BudgetOptions, {"hourly_traffic_bytes": "1.5GB",
                                          "busy_nic_ratio": "70%"})
    assert opts.hourly_traffic_bytes == 1.5e9 and opts.busy_nic_ratio == pytest.approx(0.7)
    budget = ActiveBudget.from_options(opts, clock=FakeClock())
    assert budget.bytes_per_hour == 1.5e9
    assert parse_options(BudgetOptions, {"hourly_traffic_bytes": None}).hourly_traffic_bytes is None
    with pytest.raises(OptionError, match="busy_nic_ratio"):
        parse_options(BudgetOptions, {"busy_nic_ratio": 1.5})
    with pytest.raises(ValueError, match="window_seconds"):
        ActiveBudget(1.0, window_seconds=0)
