"""The sampling loop: time limits, crashes, the active-probe lock and budget."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence

from ai_bottleneck.assembly import record_health
from ai_bottleneck.probes.base import Skip, SkipKind
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.sampler import Round, Sampler
from ai_bottleneck.state import AgentState
from tests.plugin_probes import ActiveProbe, CounterProbe, CrashingProbe, HangingProbe


class Consumer:
    """The sampler's one consumer: keeps every round and its samples, and feeds the
    exporter's real AgentState the way the run pipeline does."""

    def __init__(self) -> None:
        self.state = AgentState(interval_seconds=0.05)
        self.rounds: list[Round] = []
        self.samples: list[Sample] = []

    def __call__(self, rounds: Sequence[Round]) -> None:
        for r in rounds:
            self.rounds.append(r)
            self.samples.extend(r.samples)
            record_health(self.state, r)

    def __getitem__(self, probe: str):  # type: ignore[no-untyped-def]
        return self.state.snapshot().probes[probe]


def test_hanging_probe_never_stalls_the_others() -> None:
    hanging, counter = HangingProbe(), CounterProbe()
    sink = health = Consumer()
    sampler = Sampler([hanging, counter], interval_seconds=0.1, consumer=sink)
    try:
        started = time.monotonic()
        sampler.run(threading.Event(), duration_seconds=1.0)
        elapsed = time.monotonic() - started
    finally:
        hanging.release.set()
        sampler.close()
    counts = [s for s in sink.samples if s.probe == "counter"]
    timeouts = [s for s in sink.samples if s.probe == "hanging"]
    assert elapsed < 2.5  # the hung call held nothing up
    assert len(counts) >= 6
    assert len(timeouts) == 1 and timeouts[0].error == "timed out after 0.3s"
    assert not health["hanging"].up and health["hanging"].errors_total["timeout"] == 1
    assert health["counter"].up


def test_crash_is_a_failed_sample_and_the_loop_goes_on() -> None:
    sink = health = Consumer()
    sampler = Sampler([CrashingProbe(), CounterProbe()], interval_seconds=0.05, consumer=sink)
    try:
        for _ in range(3):
            sampler.tick()
            time.sleep(0.06)  # the next call is due one interval later
    finally:
        sampler.close()
    crashes = [s for s in sink.samples if s.probe == "crashing"]
    assert len(crashes) == 3
    assert crashes[0].error == "probe crashed: ZeroDivisionError: bug in probe"
    assert health["crashing"].errors_total["crash"] == 3
    assert [s.values["count"] for s in sink.samples if s.probe == "counter"] == [1, 2, 3]


class RecordingBudget:
    def __init__(self, refuse: Skip | None = None) -> None:
        self.refuse = refuse
        self.spent: list[tuple[str, float]] = []
        self.asked: list[tuple[str, float, float | None]] = []

    def permit(self, probe_name: str, expected_bytes: float,
               nic_utilization_ratio: float | None) -> Skip | None:
        self.asked.append((probe_name, expected_bytes, nic_utilization_ratio))
        return self.refuse

    def spend(self, probe_name: str, bytes_used: float) -> None:
        self.spent.append((probe_name, bytes_used))


def test_active_probes_never_overlap_and_spend_the_budget() -> None:
    a, b = ActiveProbe("a", 0.15, 1000), ActiveProbe("b", 0.15, 2000)
    budget, sink = RecordingBudget(), Consumer()
    sampler = Sampler([a, b], interval_seconds=0.05, consumer=sink, budget=budget)
    try:
        sampler.run(threading.Event(), duration_seconds=1.2)
    finally:
        sampler.close()
    runs = sorted(a.running + b.running)
    assert len(a.running) >= 1 and len(b.running) >= 1
    for (_s1, e1), (s2, _e2) in itertools.pairwise(runs):
        assert s2 >= e1 - 1e-3, "two active probes ran at the same time"
    assert ("a", 1000) in budget.spent and ("b", 2000) in budget.spent
    # Neither starves the other: they take turns.
    assert abs(len(a.running) - len(b.running)) <= 1


def test_refused_active_probe_records_a_skip() -> None:
    probe = ActiveProbe("a", 0.0, 10)
    sink = health = Consumer()
    sampler = Sampler([probe], interval_seconds=0.05, consumer=sink,
                      budget=RecordingBudget(refuse=Skip(SkipKind.BUDGET,
                                                         "traffic budget used up")))
    try:
        sampler.tick()
    finally:
        sampler.close()
    assert probe.running == []
    assert sink.samples[0].values == {"skipped": 1.0}
    assert sink.samples[0].labels == {"skip_reason": "traffic budget used up",
                                      "skip_kind": "budget"}
    # A skip is neither a measurement nor a failure: the probe is not marked down.
    assert health["a"].up is not False and health["a"].skips_total == {"budget": 1}


def test_probe_interval_is_honoured() -> None:
    slow = CounterProbe()
    slow.interval_seconds = 0.5
    fast, sink = CounterProbe(), Consumer()
    fast.name = "fast"
    sampler = Sampler([slow, fast], interval_seconds=0.1, consumer=sink)
    try:
        sampler.run(threading.Event(), duration_seconds=1.0)
    finally:
        sampler.close()
    n_slow = sum(1 for s in sink.samples if s.probe == "counter")
    n_fast = sum(1 for s in sink.samples if s.probe == "fast")
    assert 2 <= n_slow <= 3
    assert n_fast >= 8


def test_real_budget_skips_when_the_hour_is_spent() -> None:
    from ai_bottleneck.budget import ActiveBudget

    probe, sink = ActiveProbe("a", 0.0, 600), Consumer()
    budget = ActiveBudget(bytes_per_hour=1000, busy_nic_ratio=0.5)
    sampler = Sampler([probe], interval_seconds=0.05, consumer=sink, budget=budget)
    try:
        for _ in range(3):
            sampler.tick()
            time.sleep(0.06)
    finally:
        sampler.close()
    assert len(probe.running) == 1  # 600 bytes spent; another 600 would exceed 1000
    skips = [s for s in sink.samples if "skipped" in s.values]
    assert len(skips) == 2 and "traffic" in skips[0].labels["skip_reason"]


def test_round_duration_is_the_probes_own_time() -> None:
    """Each round's duration is how long that probe's sample() took, not when the loop
    got round to collecting it."""
    slow = ActiveProbe("slow", 0.2, 0)
    slow.active = False
    quick, health = CounterProbe(), Consumer()
    sampler = Sampler([slow, quick], interval_seconds=0.5, consumer=health)
    try:
        sampler.tick()
    finally:
        sampler.close()
    durations = {r.probe: r.duration_seconds for r in health.rounds}
    assert durations["slow"] >= 0.2
    assert durations["counter"] < 0.1


class LoadedLink(CounterProbe):
    """A passive probe whose samples say how busy the link is (LinkLoadSource)."""

    def __init__(self, ratio: float | None) -> None:
        super().__init__()
        self.name = "link"
        self.ratio = ratio

    def link_utilization(self, samples: Sequence[Sample]) -> float | None:
        return self.ratio


def test_link_load_reaches_the_budget_through_the_declared_hook() -> None:
    """The sampler knows no probe by name: any LinkLoadSource tells the budget how
    busy the link is, and a probe that is not one tells it nothing."""
    for link, expected in ((LoadedLink(0.83), 0.83), (LoadedLink(None), None),
                           (CounterProbe(), None)):
        active, budget = ActiveProbe("a", 0.0, 10), RecordingBudget()
        sampler = Sampler([link, active], interval_seconds=0.05, consumer=Consumer(),
                          budget=budget)
        try:
            sampler.tick()  # the link's round lands; the active probe ran before it
            time.sleep(0.06)
            sampler.tick()
        finally:
            sampler.close()
        assert budget.asked[-1] == ("a", active.expected_bytes(), expected)
