"""Window means: the passive probes' rates and ratios in /metrics are the latest
window's means, not the last sample's one-second figure."""

from __future__ import annotations

import pytest

from ai_bottleneck.exporter import build_registry
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.state import AgentState, series_key
from ai_bottleneck.window_means import WindowMeans, is_window_mean


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def nic(t: float, rx_bps: float, rx_total: float) -> Sample:
    return Sample(t, "nic", {"nic": "eth0"}, {"rx_bits_per_second": rx_bps,
                                             "rx_bytes_total": rx_total,
                                             "link_speed_bits_per_second": 1e9})


def test_which_values_are_window_means() -> None:
    assert is_window_mean("nic", "rx_bits_per_second")
    assert is_window_mean("host", "cpu_utilization_ratio")
    assert is_window_mean("gpu", "utilization_ratio")
    assert not is_window_mean("nic", "rx_bytes_total")
    assert not is_window_mean("iperf3", "bits_per_second")  # one transfer's figure
    assert not is_window_mean("http", "total_seconds")


def test_close_averages_the_windows_samples_and_keeps_the_next_windows() -> None:
    means = WindowMeans()
    means.add_many([nic(100.0 + i, 8e6 * (i + 1), 1e6 * i) for i in range(12)])
    means.add_many([Sample(105.0, "nic", {"nic": "eth0"}, {}, error="read failed"),
                    Sample(105.0, "http", {"target": "a"}, {"total_ratio": 1.0})])
    got = means.close(100.0, 110.0)
    key = series_key("nic", {"nic": "eth0"})
    assert set(got) == {key}
    assert got[key]["rx_bits_per_second"] == pytest.approx(8e6 * 5.5)  # mean of 1..10
    assert "rx_bytes_total" not in got[key]
    assert means.pending == 2  # t=110 and t=111 belong to the next window
    assert means.close(110.0, 120.0)[key]["rx_bits_per_second"] == pytest.approx(8e6 * 11.5)
    assert means.pending == 0


def test_exported_rate_is_the_window_mean_until_the_next_window() -> None:
    clock = Clock()
    state = AgentState(clock=clock, interval_seconds=1, window_seconds=10)
    state.register_probe("nic")
    registry = build_registry(state, process_metrics=False)
    means = WindowMeans()
    # 9 quiet seconds, then one second at 80 Mbit/s: the window mean is 8 Mbit/s
    for i in range(10):
        clock.t = 1000.0 + i
        batch = [nic(clock.t, 8e7 if i == 9 else 0.0, 1e7 * (i == 9))]
        means.add_many(batch)
        state.record_samples("nic", batch)

    def rx_bytes_per_second() -> float | None:
        return registry.get_sample_value("ai_bottleneck_nic_rx_bytes_per_second",
                                         {"nic": "eth0"})

    assert rx_bytes_per_second() == pytest.approx(1e7)  # before the first window: the latest
    state.record_window("balanced", 0.5, 1000.0, 1010.0, means=means.close(1000.0, 1010.0))
    assert rx_bytes_per_second() == pytest.approx(1e6)  # 8 Mbit/s = 1 MB/s
    clock.t = 1010.0
    state.record_samples("nic", [nic(clock.t, 0.0, 1e7)])  # next window's first second
    assert rx_bytes_per_second() == pytest.approx(1e6)  # still the window mean
    assert registry.get_sample_value("ai_bottleneck_nic_rx_bytes_total",
                                     {"nic": "eth0"}) == 1e7  # counters: as read
