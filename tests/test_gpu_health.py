"""GPU health through the fake NVML: XID events, ECC counters, row remapping, retired
pages, a GPU fallen off the bus, and the health state each adds up to."""

from __future__ import annotations

from typing import Any

import pynvml
import pytest

from ai_bottleneck.exporter import build_registry
from ai_bottleneck.probes.gpu import GpuProbe, Options
from ai_bottleneck.probes.gpu_health import MAX_EVENTS_PER_PASS, HealthState, state_of
from ai_bottleneck.state import AgentState
from tests.fakes.fake_nvml import FakeClock, FakeNvml


def probe_for(fake: FakeNvml, clock: FakeClock, **options: Any) -> GpuProbe:
    return GpuProbe(Options(pcie=False, **options), backend=fake, clock=clock, monotonic=clock)


def passes(probe: GpuProbe, clock: FakeClock) -> dict[str, Any]:
    clock.advance(1.0)
    return {s.labels["gpu"]: s for s in probe.sample() if "pid" not in s.labels}


def test_xid_events_are_counted_without_waiting_and_a_reset_xid_sticks() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(2, clock=clock)
    probe = probe_for(fake, clock)
    assert probe.check().usable
    v = passes(probe, clock)["0"].values
    assert v["xid_errors_total"] == 0 and v["xid_reset_required_errors_total"] == 0
    assert "xid_last_code" not in v
    assert state_of(v) is HealthState.OK
    fake.xid(0, 13)  # an application's fault: counted, the GPU stays healthy
    v = passes(probe, clock)["0"].values
    assert (v["xid_errors_total"], v["xid_last_code"]) == (1, 13)
    assert state_of(v) is HealthState.OK
    fake.xid(0, 48)
    for _ in range(3):  # a GPU that needs a reset needs it until it gets one
        gpus = passes(probe, clock)
        v = gpus["0"].values
        assert (v["xid_errors_total"], v["xid_reset_required_errors_total"]) == (2, 1)
        assert v["xid_last_code"] == 48
        assert state_of(v) is HealthState.RESET_REQUIRED
        assert state_of(gpus["1"].values) is HealthState.OK
    assert fake.event_wait_timeouts and set(fake.event_wait_timeouts) == {0}


def test_xid_79_is_a_gpu_fallen_off_the_bus() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock)
    probe = probe_for(fake, clock)
    fake.xid(0, 79)
    assert state_of(passes(probe, clock)["0"].values) is HealthState.LOST


def test_an_xid_storm_is_drained_a_bounded_number_per_pass() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock)
    probe = probe_for(fake, clock)
    fake.xid(0, *([31] * (MAX_EVENTS_PER_PASS + 10)))
    assert passes(probe, clock)["0"].values["xid_errors_total"] == MAX_EVENTS_PER_PASS
    assert passes(probe, clock)["0"].values["xid_errors_total"] == MAX_EVENTS_PER_PASS + 10


def test_no_xid_events_where_registering_is_not_supported() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, unsupported=["nvmlDeviceRegisterEvents"])
    probe = probe_for(fake, clock)
    v = passes(probe, clock)["0"].values
    assert "xid_errors_total" not in v  # not "0 events": nobody was listening
    assert not fake.event_sets_live  # the set made for it was freed
    assert "nvmlEventSetWait_v2" not in fake.calls
    assert state_of(v) is HealthState.OK


def test_ecc_counters_and_uncorrectable_errors_need_a_reset() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock)
    probe = probe_for(fake, clock)
    fake.gpus[0].ecc = {"corrected_volatile": 5, "uncorrected_volatile": 0,
                        "corrected_aggregate": 120, "uncorrected_aggregate": 2}
    v = passes(probe, clock)["0"].values
    assert v["ecc_corrected_volatile_errors_total"] == 5
    assert v["ecc_uncorrected_volatile_errors_total"] == 0
    assert v["ecc_corrected_aggregate_errors_total"] == 120
    assert v["ecc_uncorrected_aggregate_errors_total"] == 2  # in the GPU's past: not a fault
    assert state_of(v) is HealthState.OK
    fake.gpus[0].ecc["uncorrected_volatile"] = 1
    assert state_of(passes(probe, clock)["0"].values) is HealthState.RESET_REQUIRED


def test_ecc_off_leaves_the_counters_out_and_does_not_ask_again() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, ecc=None)
    probe = probe_for(fake, clock)
    for _ in range(3):
        v = passes(probe, clock)["0"].values
        assert not any(k.startswith("ecc_") for k in v)
    assert fake.calls["nvmlDeviceGetTotalEccErrors"] == 4  # each counter asked once


@pytest.mark.parametrize("rows, state", [
    ({"correctable": 3, "uncorrectable": 1, "pending": 0, "failure": 0}, HealthState.OK),
    ({"correctable": 3, "uncorrectable": 2, "pending": 1, "failure": 0}, HealthState.DEGRADED),
    ({"correctable": 0, "uncorrectable": 0, "pending": 0, "failure": 1}, HealthState.DEGRADED),
])
def test_row_remapping(rows: dict[str, int], state: HealthState) -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, remapped_rows=rows)
    v = passes(probe_for(fake, clock), clock)["0"].values
    assert v["remapped_rows_correctable"] == rows["correctable"]
    assert v["remapped_rows_uncorrectable"] == rows["uncorrectable"]
    assert v["row_remap_pending_flag"] == rows["pending"]
    assert v["row_remap_failure_flag"] == rows["failure"]
    assert state_of(v) is state


def test_retired_pages_on_a_gpu_before_row_remapping() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, name="Tesla V100-SXM2-32GB", gpm=None,
                              remapped_rows=None,
                              retired_pages={"single_bit": 2, "double_bit": 1, "pending": 1})
    v = passes(probe_for(fake, clock), clock)["0"].values
    assert "remapped_rows_correctable" not in v and "row_remap_pending_flag" not in v
    assert (v["retired_pages_single_bit"], v["retired_pages_double_bit"]) == (2, 1)
    assert v["retired_pages_pending_flag"] == 1
    assert state_of(v) is HealthState.DEGRADED


@pytest.mark.parametrize("code, state", [
    (pynvml.NVML_ERROR_GPU_IS_LOST, HealthState.LOST),
    (pynvml.NVML_ERROR_RESET_REQUIRED, HealthState.RESET_REQUIRED),
])
def test_a_gpu_that_cannot_be_read_says_why_in_its_state(code: int, state: HealthState) -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(2, clock=clock)
    probe = probe_for(fake, clock)
    probe.check()
    fake.fail(1, "nvmlDeviceGetPowerUsage", code)
    gpus = passes(probe, clock)
    assert not gpus["1"].ok
    assert state_of(gpus["1"].values) is state
    assert state_of(gpus["0"].values) is HealthState.OK


def test_lost_before_attach_is_a_lost_state_too() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(2, clock=clock)
    fake.gpus[1].lost = True
    gpus = passes(probe_for(fake, clock), clock)
    assert state_of(gpus["1"].values) is HealthState.LOST


def test_event_sets_are_freed_on_close_and_health_option_off_reads_none() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(4, clock=clock)
    probe = probe_for(fake, clock)
    passes(probe, clock)
    assert len(fake.event_sets_live) == 4
    probe.close()
    assert not fake.event_sets_live
    fake = FakeNvml.with_gpus(1, clock=clock)
    v = passes(probe_for(fake, clock, health=False), clock)["0"].values
    assert state_of(v) is None
    assert not any(n.startswith("nvmlEvent") or "Ecc" in n for n in fake.calls)


def test_health_survives_the_gpu_being_lost_and_coming_back() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock)
    probe = probe_for(fake, clock)
    fake.xid(0, 74)
    passes(probe, clock)
    fake.lose(0)
    assert state_of(passes(probe, clock)["0"].values) is HealthState.LOST
    fake.recover(0)
    v = passes(probe, clock)["0"].values
    assert v["xid_reset_required_errors_total"] == 1
    assert state_of(v) is HealthState.RESET_REQUIRED


def test_health_is_exported_as_counters_and_a_one_hot_state_set() -> None:
    clock = FakeClock(1_800_000_000.0)
    fake = FakeNvml.with_gpus(2, clock=clock)
    probe = probe_for(fake, clock)
    state = AgentState(clock=clock, interval_seconds=1)
    state.register_probe("gpu")
    registry = build_registry(state, process_metrics=False)
    fake.xid(0, 48)
    fake.gpus[0].ecc = {"corrected_volatile": 7, "uncorrected_volatile": 1,
                        "corrected_aggregate": 9, "uncorrected_aggregate": 1}
    clock.advance(1.0)
    state.record_samples("gpu", probe.sample())
    g0 = {"gpu": "0", "uuid": fake.gpus[0].uuid}
    g0_named = {**g0, "name": fake.gpus[0].name}

    def health(labels: dict[str, str]) -> dict[str, float | None]:
        return {s: registry.get_sample_value("ai_bottleneck_gpu_health", {**labels, "state": s})
                for s in ("ok", "degraded", "reset_required", "lost")}

    assert health(g0) == {"ok": 0, "degraded": 0, "reset_required": 1, "lost": 0}
    assert registry.get_sample_value("ai_bottleneck_gpu_xid_errors_total", g0_named) == 1
    assert registry.get_sample_value("ai_bottleneck_gpu_xid_reset_required_errors_total",
                                     g0_named) == 1
    assert registry.get_sample_value("ai_bottleneck_gpu_xid_last_code", g0_named) == 48
    assert registry.get_sample_value("ai_bottleneck_gpu_ecc_errors_total", {
        **g0_named, "error_type": "corrected", "counter": "volatile"}) == 7
    assert registry.get_sample_value("ai_bottleneck_gpu_ecc_errors_total", {
        **g0_named, "error_type": "uncorrected", "counter": "aggregate"}) == 1
    assert registry.get_sample_value("ai_bottleneck_gpu_remapped_rows", {
        **g0_named, "cause": "correctable"}) == 0
    g1 = {"gpu": "1", "uuid": fake.gpus[1].uuid}
    assert health(g1) == {"ok": 1, "degraded": 0, "reset_required": 0, "lost": 0}
    fake.lose(1)  # falls off the bus: its failed sample replaces the good state at once
    clock.advance(1.0)
    state.record_samples("gpu", probe.sample())
    assert health(g1) == {"ok": 0, "degraded": 0, "reset_required": 0, "lost": 1}
    assert registry.get_sample_value("ai_bottleneck_gpu_up", g1) == 0
