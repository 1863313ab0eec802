"""GPU health in the verdict: hard faults make the window unknown with the fault named,
softer health facts are warnings. GPU samples come from the real probe over the fake
NVML, so the values are the ones the probe really writes."""

from __future__ import annotations

from collections.abc import Callable

import pynvml

from ai_bottleneck.classifier import Classification, Label, classify
from ai_bottleneck.probes.base import Sample
from ai_bottleneck.probes.gpu import GpuProbe, Options
from ai_bottleneck.windows import Window
from tests import synth
from tests.fakes.fake_nvml import FakeClock, FakeNvml

SECONDS = 10


def verdict(fake: FakeNvml, clock: FakeClock, *, during: Callable[[int], None] | None = None,
            probe: GpuProbe | None = None) -> Classification:
    """Ten one-second passes of the GPU probe beside a busy host and a served endpoint."""
    probe = probe or GpuProbe(Options(pcie=False), backend=fake, clock=clock, monotonic=clock)
    start = clock()
    samples: list[Sample] = []
    for i in range(SECONDS):
        if during is not None:
            during(i)
        clock.advance(1.0)
        samples += probe.sample()
    samples += synth.scene(synth.host(cpu=0.4), synth.http(total=0.3), seconds=SECONDS,
                           start=start + 1)
    return classify(Window.from_samples(samples, start, start + SECONDS + 1))


def busy_gpus(count: int = 2) -> tuple[FakeNvml, FakeClock]:
    clock = FakeClock(synth.T0)
    fake = FakeNvml.with_gpus(count, clock=clock, utilization_percent=99,
                              gpm={"sm_util": 95, "sm_occupancy": 60, "tensor_util": 80,
                                   "dram_bw_util": 50})
    return fake, clock


def test_healthy_busy_gpus_read_gpu_bound_without_health_noise() -> None:
    fake, clock = busy_gpus()
    c = verdict(fake, clock)
    assert c.label is Label.GPU_BOUND
    assert not [w for w in c.warnings if "XID" in w or "remap" in w]


def test_a_reset_xid_makes_the_window_unknown_naming_the_fault() -> None:
    fake, clock = busy_gpus()
    c = verdict(fake, clock, during=lambda i: fake.xid(1, 48) if i == 4 else None)
    assert c.label is Label.UNKNOWN and c.hard
    assert c.evidence[0].startswith(
        "GPU 1 needs a reset (XID 48 (double-bit (uncorrectable) ECC error)): drain it")
    assert "GPU 1: 1 XID error event(s) in this window, the latest XID 48" in " ".join(c.warnings)


def test_an_uncorrectable_ecc_error_makes_the_window_unknown() -> None:
    fake, clock = busy_gpus()

    def ecc_error(i: int) -> None:
        if i == 6:
            assert fake.gpus[0].ecc is not None
            fake.gpus[0].ecc["uncorrected_volatile"] = 2

    c = verdict(fake, clock, during=ecc_error)
    assert c.label is Label.UNKNOWN
    assert c.evidence[0].startswith(
        "GPU 0 needs a reset (2 uncorrectable ECC error(s) since the last reset)")


def test_a_gpu_fallen_off_the_bus_makes_the_window_unknown() -> None:
    fake, clock = busy_gpus()
    c = verdict(fake, clock, during=lambda i: fake.lose(0) if i == 8 else None)
    assert c.label is Label.UNKNOWN
    assert c.evidence[0].startswith("GPU 0 fell off the bus (NVML: GPU is lost)")


def test_xid_79_alone_says_fallen_off_the_bus() -> None:
    fake, clock = busy_gpus(1)
    c = verdict(fake, clock, during=lambda i: fake.xid(0, 79) if i == 2 else None)
    assert c.label is Label.UNKNOWN
    assert c.evidence[0].startswith("GPU 0 fell off the bus")


def test_a_reset_stays_needed_in_later_windows_and_nvml_reset_required_counts_too() -> None:
    fake, clock = busy_gpus()
    probe = GpuProbe(Options(pcie=False), backend=fake, clock=clock, monotonic=clock)
    fake.xid(0, 95)
    assert verdict(fake, clock, probe=probe).label is Label.UNKNOWN
    later = verdict(fake, clock, probe=probe)
    assert later.label is Label.UNKNOWN
    assert "XID 95 (uncontained ECC error)" in later.evidence[0]
    assert not [w for w in later.warnings if "XID error event" in w]  # not new in this one
    fake2, clock2 = busy_gpus()
    fake2.fail(1, "nvmlDeviceGetPowerUsage", pynvml.NVML_ERROR_RESET_REQUIRED)
    c = verdict(fake2, clock2)
    assert c.label is Label.UNKNOWN
    assert c.evidence[0].startswith("GPU 1 needs a reset (NVML: GPU needs a reset")


def test_pending_row_remap_and_warning_xids_are_warnings_not_faults() -> None:
    fake, clock = busy_gpus()
    fake.gpus[0].remapped_rows = {"correctable": 0, "uncorrectable": 1, "pending": 1,
                                  "failure": 0}
    fake.gpus[1].remapped_rows = {"correctable": 0, "uncorrectable": 0, "pending": 0,
                                  "failure": 1}
    c = verdict(fake, clock, during=lambda i: fake.xid(1, 94) if i == 3 else None)
    assert c.label is Label.GPU_BOUND
    text = "\n".join(c.warnings)
    assert "GPU 0: a row remapping is pending; it takes effect at the next GPU reset" in text
    assert "GPU 1: a row remapping has failed" in text
    assert ("GPU 1: 1 XID error event(s) in this window, the latest XID 94 (contained ECC "
            "error: the application that hit it must restart): failing hardware") in text


def test_failed_gpu_samples_without_health_values_keep_the_old_behaviour() -> None:
    # An older recording: the lost GPU's failed sample carries no health flags.
    samples = synth.scene(synth.gpu(0, util=0.99, sm=0.95), synth.host(cpu=0.4),
                          synth.http(total=0.3))
    samples += [synth.gpu_failure(synth.T0 + i, 1, "GPU is lost") for i in range(10)]
    c = classify(Window.from_samples(samples, synth.T0, synth.T0 + 10))
    assert c.label is not Label.UNKNOWN


def test_the_window_summary_and_the_report_name_unhealthy_gpus() -> None:
    from ai_bottleneck.figures import run_figures
    from ai_bottleneck.report_tables import health_lines

    fake, clock = busy_gpus()
    fake.gpus[0].remapped_rows = {"correctable": 0, "uncorrectable": 0, "pending": 1,
                                  "failure": 0}
    healthy = verdict(FakeNvml.with_gpus(1, clock=clock), clock)
    assert "gpu_health" not in healthy.summary
    c = verdict(fake, clock, during=lambda i: fake.xid(1, 74) if i == 1 else None)
    assert c.summary["gpu_health"] == {
        "0": {"state": "degraded"},
        "1": {"state": "reset_required", "reason": "XID 74 (NVLink error)"}}
    lines = health_lines(run_figures([synth.window_result(healthy),
                                      synth.window_result(c, synth.T0 + 10, synth.T0 + 20)]))
    assert lines == ["GPU health (not ok)", "  GPU 0: degraded",
                     "  GPU 1: reset_required (XID 74 (NVLink error))"]
