"""Windows: aggregates per series, alignment, reordering, probe states."""

from __future__ import annotations

import pytest

from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.reader import read
from ai_bottleneck.series import SeriesWindow, Stats
from ai_bottleneck.windows import ProbeState, Window, WindowBuilder
from tests.synth import (
    T0,
    gpu_failure,
    gpu_process_sample,
    gpu_sample,
    host_sample,
    http_failure,
    http_sample,
    skipped_sample,
    throughput_sample,
)


def host_at(t: float, cpu: float = 0.5) -> Sample:
    return host_sample(t, cpu=cpu)


# -- statistics ---------------------------------------------------------------------

def test_stats_of_values_in_time_order() -> None:
    st = Stats.of([3.0, 1.0, 2.0, 10.0])
    assert (st.count, st.mean, st.min, st.max, st.sum, st.last) == (4, 4.0, 1.0, 10.0, 16.0,
                                                                     10.0)


@pytest.mark.parametrize(("values", "p95"), [
    ([5.0], 5.0),
    ([float(i) for i in range(1, 11)], 10.0),   # 10 values: the 10th ranks at 95%
    ([float(i) for i in range(1, 21)], 19.0),   # 20 values: the 19th is at 95%
    ([float(i) for i in range(1, 101)], 95.0),
])
def test_p95_is_nearest_rank(values: list[float], p95: float) -> None:
    assert Stats.of(values).p95 == p95


def test_series_separates_measurements_failures_and_skips() -> None:
    samples = [
        http_sample(T0 + 1, total=0.2),
        http_failure(T0 + 2, error="timed out"),
        http_failure(T0 + 3, error="HTTP 503", status=503),
        skipped_sample(T0 + 4, "http"),
        http_sample(T0 + 5, total=0.4),
    ]
    sw = SeriesWindow("http", {"target": "x"}, samples)
    assert (sw.count, sw.failures, sw.skipped) == (2, 2, 1)
    total = sw.stats("total_seconds")
    assert total is not None
    assert total.count == 2
    assert total.mean == pytest.approx(0.3)
    assert sw.errors() == ["HTTP 503", "timed out"]
    assert sw.failed_values("status") == [503.0]
    assert sw.stats("upload_seconds") is None  # never measured: absent, not zero
    assert sw.mean("upload_seconds") is None


def test_series_sorts_out_of_order_samples_so_last_is_latest() -> None:
    sw = SeriesWindow("host", {}, [host_at(T0 + 3, 0.3), host_at(T0 + 1, 0.1),
                                   host_at(T0 + 2, 0.2)])
    st = sw.stats("cpu_utilization_ratio")
    assert st is not None
    assert st.last == 0.3
    assert sw.values("cpu_utilization_ratio") == [0.1, 0.2, 0.3]


def test_counter_increase_counts_from_the_previous_window_and_survives_resets() -> None:
    def oom_total(t: float, v: float) -> Sample:
        return Sample(t, "oom", {"source": "kernel"}, {"oom_events_total": v})

    first = SeriesWindow("oom", {}, [oom_total(T0, 5.0), oom_total(T0 + 1, 5.0)])
    assert first.increase("oom_events_total") == 0.0  # the first value is a baseline
    second = SeriesWindow("oom", {}, [oom_total(T0 + 10, 7.0), oom_total(T0 + 11, 1.0)], first)
    # 5 -> 7 is +2; 7 -> 1 is a reset, so the new value 1 is growth too.
    assert second.increase("oom_events_total") == 3.0
    assert second.increase("load_failure_events_total") is None


# -- the builder: alignment and ordering ------------------------------------------------

def feed(builder: WindowBuilder, samples: list[Sample]) -> list[Window]:
    out = builder.add_many(samples)
    return out + builder.flush()


def test_windows_start_at_the_first_sample_and_close_after_the_reorder_delay() -> None:
    b = WindowBuilder(10.0, reorder_seconds=2.0)
    assert b.add(host_at(T0 + 0.5)) == []
    for i in range(1, 12):
        assert b.add(host_at(T0 + 0.5 + i)) == []  # up to 11.5 s: window 0 still open
    closed = b.add(host_at(T0 + 12.5))             # 2 s past its end: it closes
    assert [(w.start, w.end, w.sample_count) for w in closed] == [(T0 + 0.5, T0 + 10.5, 10)]
    rest = b.flush()
    assert [(w.start, w.sample_count) for w in rest] == [(T0 + 10.5, 3)]


def test_out_of_order_samples_within_the_reorder_delay_land_in_their_own_window() -> None:
    in_order = [host_at(T0 + i, cpu=i / 30) for i in range(30)]
    shuffled = list(in_order)
    # Swap neighbours across window boundaries: each arrives up to 1.5 s late.
    for i in (9, 19):
        shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
    a = feed(WindowBuilder(10.0, origin=T0), in_order)
    b = feed(WindowBuilder(10.0, origin=T0), shuffled)
    assert [w.sample_count for w in b] == [10, 10, 10]
    assert ([w.of("host")[0].values("cpu_utilization_ratio") for w in a]
            == [w.of("host")[0].values("cpu_utilization_ratio") for w in b])
    assert all(w.late_samples == 0 for w in b)


def test_a_sample_later_than_the_delay_is_kept_in_the_oldest_open_window_and_counted() -> None:
    b = WindowBuilder(10.0, origin=T0, reorder_seconds=1.0)
    closed = b.add_many([host_at(T0 + i) for i in range(12)])  # window 0 closed at 11 s
    assert [w.start for w in closed] == [T0]
    b.add(http_sample(T0 + 3, total=40.0))  # a slow call stamped at its start, reported late
    (w,) = b.flush()
    assert w.start == T0 + 10
    assert w.late_samples == 1
    assert b.late_samples == 1
    http = w.of("http")[0].stats("total_seconds")
    assert http is not None
    assert http.max == 40.0  # the slow call is still evidence


def test_a_sample_before_the_origin_goes_to_the_first_window_as_late() -> None:
    b = WindowBuilder(10.0)
    b.add(host_at(T0 + 1))
    b.add(gpu_sample(T0 + 0.9, util=0.5))  # another probe's sample from the same tick
    (w,) = b.flush()
    assert w.start == T0 + 1
    assert w.sample_count == 2
    assert w.late_samples == 1


def test_windows_with_no_samples_are_not_emitted() -> None:
    ws = feed(WindowBuilder(10.0, origin=T0), [host_at(T0 + 1), host_at(T0 + 45)])
    assert [w.start for w in ws] == [T0, T0 + 40]


def test_label_order_does_not_split_a_series() -> None:
    a = Sample(T0, "nic", {"nic": "eth0", "driver": "virtio"}, {"rx_bits_per_second": 1.0})
    b = Sample(T0 + 1, "nic", {"driver": "virtio", "nic": "eth0"}, {"rx_bits_per_second": 3.0})
    (w,) = feed(WindowBuilder(10.0), [a, b])
    (sw,) = w.of("nic")
    assert sw.mean("rx_bits_per_second") == 2.0


@pytest.mark.parametrize("singly", [False, True])
def test_series_are_in_time_order_however_their_samples_came(singly: bool) -> None:
    # The builder skips sorting a window's series only when no sample came older than
    # one before it; out-of-order arrivals and a series in two label orders are sorted.
    late = [host_at(T0 + 3, cpu=0.3), host_at(T0 + 1, cpu=0.1), host_at(T0 + 2, cpu=0.2)]
    a = Sample(T0 + 5, "nic", {"nic": "eth0", "driver": "virtio"}, {"rx_bits_per_second": 5.0})
    b = Sample(T0 + 4, "nic", {"driver": "virtio", "nic": "eth0"}, {"rx_bits_per_second": 4.0})
    c = Sample(T0 + 6, "nic", {"nic": "eth0", "driver": "virtio"}, {"rx_bits_per_second": 6.0})
    samples = [*late, a, c, b]
    builder = WindowBuilder(10.0, origin=T0)
    if singly:
        ws = [w for s in samples for w in builder.add(s)] + builder.flush()
    else:
        ws = feed(builder, samples)
    (w,) = ws
    assert w.of("host")[0].values("cpu_utilization_ratio") == [0.1, 0.2, 0.3]
    assert w.of("host")[0].last("cpu_utilization_ratio") == 0.3
    assert w.of("nic")[0].values("rx_bits_per_second") == [4.0, 5.0, 6.0]
    merged = feed(WindowBuilder(10.0, origin=T0), [a, b, c])  # in time order but for b
    assert merged[0].of("nic")[0].values("rx_bits_per_second") == [4.0, 5.0, 6.0]
    runs = feed(WindowBuilder(10.0, origin=T0), [b, a, Sample(
        T0 + 7, "nic", {"driver": "virtio", "nic": "eth0"}, {"rx_bits_per_second": 7.0})])
    assert runs[0].of("nic")[0].values("rx_bits_per_second") == [4.0, 5.0, 7.0]


def test_add_and_add_many_give_the_same_windows() -> None:
    samples = [host_at(T0 + i * 0.7) for i in range(50)]
    one = WindowBuilder(10.0)
    singly = [w for s in samples for w in one.add(s)] + one.flush()
    batch = feed(WindowBuilder(10.0), samples)
    assert [(w.start, w.sample_count) for w in singly] == [(w.start, w.sample_count)
                                                           for w in batch]


@pytest.mark.parametrize(("window", "reorder"), [(0.0, 1.0), (10.0, -1.0)])
def test_bad_builder_settings_are_refused(window: float, reorder: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        WindowBuilder(window, reorder_seconds=reorder)


# -- what a window knows about its probes ---------------------------------------------

def test_probe_states() -> None:
    samples = [
        host_at(T0),
        gpu_sample(T0, 0, util=0.5), gpu_failure(T0 + 1, 1, "GPU is lost"),
        http_failure(T0, error="connection refused"),
        skipped_sample(T0, "iperf3", "traffic budget spent"),
    ]
    w = Window.from_samples(samples, T0, T0 + 10, unavailable={"download": "no URL set"},
                            expected=("nic",))
    states = {name: st.state for name, st in w.statuses().items()}
    assert states == {
        "host": ProbeState.OK, "gpu": ProbeState.PARTIAL, "http": ProbeState.FAILING,
        "iperf3": ProbeState.SKIPPED, "download": ProbeState.UNAVAILABLE,
        "nic": ProbeState.MISSING,
    }
    assert "connection refused" in str(w.status("http"))
    assert w.status("oom").state is ProbeState.ABSENT


def test_a_probe_seen_before_is_missing_when_a_window_has_none_of_it() -> None:
    samples = [host_at(T0), http_sample(T0, total=0.1), host_at(T0 + 12)]
    ws = feed(WindowBuilder(10.0, origin=T0), samples)
    assert ws[0].status("http").state is ProbeState.OK
    assert ws[1].status("http").state is ProbeState.MISSING


def test_process_entries_are_not_gpus() -> None:
    samples = [gpu_sample(T0, 0, util=0.7), gpu_process_sample(T0, 0, 1234, 5e9)]
    r = read(Window.from_samples(samples, T0, T0 + 10))
    assert [g.id for g in r.gpus] == ["0"]
    assert r.gpus[0].utilization == 0.7


def test_active_probe_results_are_carried_into_later_windows_with_their_age() -> None:
    b = WindowBuilder(10.0, origin=T0, reorder_seconds=0.0)
    samples = [throughput_sample(T0 + 5, "iperf3", "10.0.0.2", 9e8)]
    samples += [host_at(T0 + i) for i in range(1, 40)]
    samples.insert(20, Sample(T0 + 21, "iperf3", {"target": "10.0.0.2"}, error="refused"))
    ws = feed(b, samples)
    assert [sw.probe for sw in ws[0].of("iperf3")] == ["iperf3"]
    r = read(ws[3])
    (t,) = r.throughputs
    assert t.bits_per_second == 9e8
    assert t.age_seconds == pytest.approx(35.0)  # from T0+5 to the end of window 3 (T0+40)
    assert ws[2].status("iperf3").state is ProbeState.FAILING  # the failed run is reported
    assert ws[3].status("iperf3").state is ProbeState.ABSENT  # periodic: absence is normal


def test_series_that_went_away_are_forgotten_after_a_day() -> None:
    b = WindowBuilder(600.0, origin=T0, reorder_seconds=0.0)
    hour = 3600.0
    # 30 GPU processes come and go in the first 30 hours, one an hour; the host
    # reports for 60 hours.
    samples = [gpu_process_sample(T0 + i * hour, 0, 1000 + i, 1e9) for i in range(30)]
    samples += [host_at(T0 + i * 600.0) for i in range(60 * 6)]
    samples.sort(key=lambda s: s.t)
    b.add_many([s for s in samples if s.t < T0 + 30 * hour])
    assert b.tracked_series == 31  # every process so far, and the host
    b.add_many([s for s in samples if s.t >= T0 + 30 * hour])
    b.flush()
    # Pruned at window 320 (53 h): every process was last seen more than a day before.
    assert b.tracked_series == 1


# -- splitting a window --------------------------------------------------------------

def test_split_cuts_every_series_at_the_middle_and_keeps_counting_counters() -> None:
    def oom_total(t: float, v: float) -> Sample:
        return Sample(t, "oom", {"source": "kernel"}, {"oom_events_total": v})

    b = WindowBuilder(10.0, origin=T0, reorder_seconds=0.0)
    samples = [oom_total(T0 + i, 2.0) for i in range(10)]
    samples += [oom_total(T0 + 10 + i, 2.0 if i < 7 else 4.0) for i in range(10)]
    samples += [host_at(T0 + 10 + i, cpu=0.1 if i < 5 else 0.9) for i in range(10)]
    samples.sort(key=lambda s: s.t)
    first_window, window = feed(b, samples)
    early, late = window.split()
    assert (early.start, early.end, late.start, late.end) == (T0 + 10, T0 + 15, T0 + 15,
                                                              T0 + 20)
    assert (early.sample_count, late.sample_count) == (10, 10)
    assert early.sample_count + late.sample_count == window.sample_count
    (host_early,), (host_late,) = early.of("host"), late.of("host")
    assert host_early.mean("cpu_utilization_ratio") == pytest.approx(0.1)
    assert host_late.mean("cpu_utilization_ratio") == pytest.approx(0.9)
    (oom_early,), (oom_late,) = early.of("oom"), late.of("oom")
    # The growth (2 -> 4 at T0+17) is in the second half only, counted once overall.
    assert oom_early.increase("oom_events_total") == 0.0
    assert oom_late.increase("oom_events_total") == 2.0
    (oom_whole,) = window.of("oom")
    assert oom_whole.increase("oom_events_total") == 2.0
    assert oom_early.previous is oom_whole.previous is first_window.of("oom")[0]
    assert oom_late.previous is oom_early


def test_split_keeps_probe_status_and_carries_an_active_result_into_the_second_half() -> None:
    w = Window.from_samples(
        [throughput_sample(T0 + 2, "iperf3", "10.0.0.2", 9e8),
         *[host_at(T0 + i) for i in range(10)]],
        T0, T0 + 10, unavailable={"gpu": "no NVIDIA driver"}, expected=("host", "http"))
    early, late = w.split()
    assert [sw.probe for sw in early.of("iperf3")] == ["iperf3"]
    assert late.of("iperf3") == () and [sw.probe for sw in late.carried] == ["iperf3"]
    (t,) = read(late).throughputs
    assert t.age_seconds == pytest.approx(8.0)  # from T0+2 to the end of the second half
    for half in (early, late):
        assert half.status("gpu").state is ProbeState.UNAVAILABLE
        assert half.status("http").state is ProbeState.MISSING
        assert half.status("host").state is ProbeState.OK


def test_split_at_a_chosen_time_and_a_cut_outside_is_refused() -> None:
    w = Window.from_samples([host_at(T0 + i) for i in range(10)], T0, T0 + 10)
    early, late = w.split(T0 + 3)
    assert (early.sample_count, late.sample_count) == (3, 7)
    assert early.status("http").state is ProbeState.ABSENT
    for bad in (T0, T0 + 10, T0 + 11):
        with pytest.raises(ValueError, match="not inside"):
            w.split(bad)
