"""Network evidence beyond the NIC: the tightest capacity known (declared, shaped,
measured, a plateau), measured trouble deciding while the agent's own calls are fast,
calls still in flight at a window's end, and a bottleneck that recurs every other
window. Each case is one window of steady readings, as in test_classifier.py."""

from __future__ import annotations

from ai_bottleneck.capacity import DECLARED, LINK_SPEED, SHAPED, plateau
from ai_bottleneck.classifier import classify
from ai_bottleneck.findings import Classification
from ai_bottleneck.hysteresis import Hysteresis
from ai_bottleneck.labels import Label
from ai_bottleneck.pipeline import Labeller
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.probes.vocabulary import IN_FLIGHT_LABELS
from ai_bottleneck.reader import read
from ai_bottleneck.series import Stats
from ai_bottleneck.thresholds import Thresholds
from tests.synth import (
    T0,
    Part,
    gpu,
    host,
    http,
    scene,
    tcp,
    throughput_sample,
    window_of,
)

TEN_GBIT = 10e9
QUIET_HOST = host(cpu=0.10, busiest=0.2)
FAST = http(total=0.2, upload=0.01, server=0.18, download=0.01)


def nic_with(name: str = "eth0", *, rx: float = 1e5, tx: float = 1e5, link: float = TEN_GBIT,
             declared: float | None = None, shaped: float | None = None,
             jitter: float = 0.0) -> Part:
    """A NIC's readings with the rates the nic probe reports besides the link speed.
    ``jitter``: every other reading that much lower (a share of the rate)."""
    def part(t: float) -> Sample:
        dip = 1.0 - (jitter if int(t) % 2 else 0.0)
        values = {"rx_bits_per_second": rx * dip, "tx_bits_per_second": tx * dip,
                  "link_speed_bits_per_second": link}
        if declared is not None:
            values["declared_rx_bits_per_second"] = declared
            values["declared_tx_bits_per_second"] = declared
        if shaped is not None:
            values["shaped_tx_bits_per_second"] = shaped
        return Sample(t, "nic", {"nic": name}, values)
    return part


def in_flight(target: str = "http://inference.test/v1/run", *, started: float,
              server: float = 0.05) -> Part:
    """A call that started at ``started`` and is still running, downloading its answer."""
    def part(t: float) -> Sample | None:
        if t < started + 1:
            return None
        elapsed = t - started
        return Sample(t, "http", {"target": target, **IN_FLIGHT_LABELS}, {
            "in_flight_seconds": elapsed, "in_flight_network_seconds": elapsed - server,
            "in_flight_server_seconds": server, "in_flight_calls": 1.0})
    return part


def run(*parts: Part, th: Thresholds | None = None, **kw: object) -> Classification:
    return classify(window_of(*parts, **kw), th or Thresholds())  # type: ignore[arg-type]


def text(c: Classification) -> str:
    return "\n".join((*c.evidence, *c.warnings))


# -- the tightest capacity ---------------------------------------------------------

def test_a_declared_rate_under_the_link_speed_is_what_fills_up() -> None:
    # The purchased-rate case: a 10 Gbit/s NIC, a 20 Mbit/s plan, uploads at 19.5 Mbit/s,
    # the agent's own small calls still fast. Judged against the link it is 0.2% full.
    parts = (gpu(util=0.05), QUIET_HOST, FAST, nic_with(tx=19.5e6, declared=20e6))
    c = run(*parts)
    assert c.label is Label.NETWORK_BOUND
    assert f"eth0 tx at 98% of 20 Mbit/s ({DECLARED})" in text(c)
    assert "the path measured above is what the clients' traffic crosses" in text(c)
    without = run(gpu(util=0.05), QUIET_HOST, FAST, nic_with(tx=19.5e6))
    assert without.label is Label.BALANCED
    assert f"of 10 Gbit/s ({LINK_SPEED})" in text(without)


def test_a_shaper_on_this_host_sets_the_tx_capacity() -> None:
    c = run(gpu(util=0.05), QUIET_HOST, FAST, nic_with(tx=4.8e6, shaped=5e6))
    assert c.label is Label.NETWORK_BOUND
    assert f"eth0 tx at 96% of 5 Mbit/s ({SHAPED})" in text(c)


def test_the_tightest_of_declared_and_shaped_wins() -> None:
    r = read(window_of(nic_with(tx=1e6, declared=50e6, shaped=20e6)))
    (n,) = r.nics
    assert n.tx_capacity is not None and n.rx_capacity is not None
    assert (n.tx_capacity.bits_per_second, n.tx_capacity.source) == (20e6, SHAPED)
    # A shaper only limits what leaves: rx keeps the declared rate.
    assert (n.rx_capacity.bits_per_second, n.rx_capacity.source) == (50e6, DECLARED)
    assert n.tx_utilization is not None and abs(n.tx_utilization - 0.05) < 1e-9


def test_a_plateau_is_a_ceiling_only_beside_congestion() -> None:
    flat = nic_with(rx=7.6e6, jitter=0.05)  # an answer stream held flat near 7.6 Mbit/s
    steady = run(gpu(util=0.05), QUIET_HOST, FAST, flat)
    assert steady.label is Label.BALANCED  # a steady workload is flat too
    congested = run(gpu(util=0.05), QUIET_HOST, FAST, flat, tcp(0.07))
    assert congested.label is Label.NETWORK_BOUND
    assert "eth0 rx at 98% of 7.6 Mbit/s (the plateau it held" in text(congested)
    assert "TCP retransmits were 7.0%" in text(congested)


def test_a_bursty_link_is_no_plateau() -> None:
    assert plateau(Stats(10, 5e6, 9e6, 1e6, 9e6, 5e7, 2e6), min_samples=5,
                   floor_bits_per_second=1e6, flat_ratio=0.8) is None
    assert plateau(Stats(3, 5e6, 5e6, 5e6, 5e6, 1.5e7, 5e6), min_samples=5,
                   floor_bits_per_second=1e6, flat_ratio=0.8) is None  # too few readings
    found = plateau(Stats(10, 5e6, 5e6, 4.5e6, 5e6, 5e7, 5e6), min_samples=5,
                    floor_bits_per_second=1e6, flat_ratio=0.8)
    assert found is not None and found.peak_bits_per_second == 5e6 and found.flatness == 0.9


def test_traffic_at_what_a_test_got_means_the_path_is_full() -> None:
    # The saturated internal hop: bulk uploads at 38 Mbit/s, an iperf3 test that got 38.3.
    c = run(gpu(util=0.05), QUIET_HOST, FAST, nic_with(tx=38e6),
            extra=[throughput_sample(T0 + 2, "iperf3", "10.0.0.2", 38.3e6)])
    assert c.label is Label.NETWORK_BOUND
    assert "of 38.3 Mbit/s (what iperf3 10.0.0.2" in text(c)


# -- measured shortfalls decide, not warn --------------------------------------------

def test_a_measured_shortfall_decides_while_the_own_calls_are_fast() -> None:
    c = run(gpu(util=0.05), QUIET_HOST, FAST, nic_with(tx=30e6),
            extra=[throughput_sample(T0 + 2, "iperf3", "10.0.0.2", 40e6)])
    assert c.label is Label.NETWORK_BOUND
    assert "iperf3 10.0.0.2: 40 Mbit/s, under 50% of 1 Gbit/s (internal minimum)" in text(c)


def test_retransmits_over_the_threshold_decide_under_load() -> None:
    c = run(gpu(util=0.05), QUIET_HOST, FAST, nic_with(tx=30e6), tcp(0.09))
    assert c.label is Label.NETWORK_BOUND
    assert "TCP retransmits 9.0%" in text(c)


def test_a_stale_shortfall_on_an_idle_host_is_idle_with_a_warning() -> None:
    c = run(gpu(util=0.0), host(cpu=0.02), nic_with(tx=1e4),
            extra=[throughput_sample(T0 + 2, "iperf3", "10.0.0.2", 40e6)])
    assert c.label is Label.IDLE
    assert any("under the internal minimum" in w for w in c.warnings)


def test_a_full_path_serving_within_the_objective_is_a_warning_with_numbers() -> None:
    # The GPU is working (not under-used), so the path is not the label; it is not
    # "nothing to fix" either.
    c = run(gpu(util=0.55), QUIET_HOST, FAST, nic_with(tx=19.6e6, declared=20e6))
    assert c.label is Label.BALANCED
    assert any("eth0 tx is full: 20 Mbit/s (rate declared in [links]) at 98%" in w
               and "no headroom" in w for w in c.warnings)


# -- calls in flight --------------------------------------------------------------

def test_a_call_still_running_is_evidence_not_missing() -> None:
    # A 3 MB answer through a shaped egress: the agent's own call has run 9 s of the
    # window, nearly all of it downloading; no call finished in the window.
    c = run(gpu(util=0.05), QUIET_HOST, nic_with(rx=7.9e6), in_flight(started=T0 - 1))
    assert c.label is Label.NETWORK_BOUND
    assert "a call still running after 10 s at the window's end > objective 1 s" in text(c)
    assert "running for 10 s so far: network 9.95 s" in text(c)
    assert "http missing" not in text(c)


def test_a_running_call_shorter_than_the_finished_ones_changes_nothing() -> None:
    w = window_of(gpu(util=0.05), QUIET_HOST, http(total=3.0, upload=0.1, server=2.8,
                                                   download=0.1),
                  in_flight(started=T0 + 8))
    (h,) = read(w).http
    assert h.calls == 10 and h.in_flight_seconds is not None
    assert not h.in_flight_worst
    assert h.p95_seconds == 3.0 and h.server_share is not None and h.server_share > 0.9


# -- a bottleneck that recurs every other window --------------------------------------

def test_a_bottleneck_alternating_with_balanced_is_taken() -> None:
    h = Hysteresis(2)
    labels = [h.update(raw, 0.8, float(i)).label for i, raw in enumerate(
        ["balanced", "balanced", "network_bound", "balanced", "network_bound", "balanced",
         "network_bound", "balanced"])]
    assert labels == ["balanced"] * 4 + ["network_bound"] * 4
    t = h.transitions[-1]
    assert (t.to_label, t.recurring, t.settled, t.hard) == ("network_bound", True, False, False)


def test_recurrence_needs_half_of_the_span_and_nothing_else_in_it() -> None:
    once = Hysteresis(2)
    assert [once.update(r, 0.8, float(i)).label for i, r in enumerate(
        ["balanced", "balanced", "network_bound", "balanced", "balanced", "balanced"])] \
        == ["balanced"] * 6
    mixed = Hysteresis(2)  # an idle window in the span: not evidence arriving late
    assert [mixed.update(r, 0.8, float(i)).label for i, r in enumerate(
        ["idle", "idle", "network_bound", "idle", "network_bound", "idle"])] == ["idle"] * 6
    rival = Hysteresis(2)  # two bottlenecks alternating: neither recurs alone
    assert set(rival.update(r, 0.8, float(i)).label for i, r in enumerate(
        ["balanced", "gpu_bound", "network_bound", "gpu_bound", "network_bound"])) \
        == {"balanced"}


def test_the_labeller_says_why_a_recurring_label_was_taken() -> None:
    busy = (gpu(util=0.05), QUIET_HOST, FAST)
    samples: list[Sample] = []
    for i in range(6):
        start = T0 + 10 * i
        congested = (nic_with(tx=19.5e6, declared=20e6),) if i % 2 else (nic_with(tx=2e6),)
        samples += scene(*busy, *congested, start=start)
    labeller = Labeller(10.0, Thresholds(hysteresis_settled_at_once=False), origin=T0)
    results = [*labeller.feed_many(samples), *labeller.finish()]
    raw = [r.raw_label for r in results]
    assert raw == ["balanced", "network_bound"] * 3
    taken = next(r for r in results if r.transition is not None and r.transition.recurring)
    assert taken.label == "network_bound"
    assert any("recurs in at least half of the last 4 windows" in e for e in taken.evidence)
    assert results[-1].label == "network_bound"  # and the alternation keeps it
