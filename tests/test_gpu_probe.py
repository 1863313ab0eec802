"""The GPU probe against the fake NVML boundary (the project's only fake).

Scenarios from the issue: 1, 2 and 8 GPUs; NotSupported on chosen calls; a GPU
lost mid-run; old drivers without the v2 memory call or nvmlDeviceGetSamples;
GPM unsupported; the library missing.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pynvml
import pytest

from ai_bottleneck.probes import nvml
from ai_bottleneck.probes.base import Availability
from ai_bottleneck.probes.gpu import GpuProbe, Options, create
from ai_bottleneck.probes.options import OptionError
from tests.fakes.fake_nvml import (
    BACKEND_SPEC,
    STATE_ENV,
    FakeClock,
    FakeGpmMetricsGet,
    FakeGpu,
    FakeNvml,
    FakeProcess,
    make_gpus,
    update_gpu,
    write_state,
)

ROOT = Path(__file__).resolve().parents[1]


def probe_for(fake: FakeNvml, clock: FakeClock, **options: Any) -> GpuProbe:
    # The fake's PIDs are not this host's: no /proc to name or place them by.
    options.setdefault("proc_root", "/nonexistent/proc")
    return GpuProbe(Options(**options), backend=fake, clock=clock, monotonic=clock)


def gpu_samples(samples: Any) -> list[Any]:
    return [s for s in samples if "pid" not in s.labels]


def by_gpu(samples: Any) -> dict[str, Any]:
    return {s.labels["gpu"]: s for s in gpu_samples(samples)}


def scripted(count: int) -> list[FakeGpu]:
    """GPUs whose readings differ by index, so a mix-up between GPUs shows."""
    gpus = make_gpus(count, sample_period_seconds=None)
    for i, gpu in enumerate(gpus):
        gpu.utilization_percent = 10 + 10 * i
        gpu.memory_used_bytes = (i + 1) * 2**30
        gpu.power_milliwatts = 100_000 + 1000 * i
        gpu.temperature_celsius = 40 + i
        gpu.sm_clock_mhz = 1500 + i
        gpu.pcie_rx_kilobytes_per_second = 100 + i
        gpu.pcie_tx_kilobytes_per_second = 200 + i
        gpu.gpm = {"sm_util": 50 + i, "sm_occupancy": 20 + i, "tensor_util": 30 + i,
                   "dram_bw_util": 40 + i}
        gpu.processes = [FakeProcess(pid=1000 + i, name="/usr/bin/python3",
                                     used_memory_bytes=(i + 1) * 2**29)]
    return gpus


@pytest.mark.parametrize("count", [1, 2, 8])
def test_every_gpu_reports_its_own_readings(count: int) -> None:
    clock = FakeClock()
    fake = FakeNvml(scripted(count), clock=clock)
    probe = probe_for(fake, clock)
    availability = probe.check()
    assert availability.usable
    assert availability.reason.startswith(f"{count} GPU(s)")
    clock.advance(1.0)
    samples = probe.sample()
    gpus = by_gpu(samples)
    assert sorted(gpus, key=int) == [str(i) for i in range(count)]
    assert len({s.labels["uuid"] for s in gpus.values()}) == count
    for i in range(count):
        s = gpus[str(i)]
        assert s.ok
        assert s.labels == {"gpu": str(i), "uuid": fake.gpus[i].uuid,
                            "name": "NVIDIA H100 80GB HBM3",
                            "pci_bus_id": fake.gpus[i].pci_bus_id}
        v = s.values
        assert v["utilization_ratio"] == pytest.approx((10 + 10 * i) / 100)
        assert v["memory_used_bytes"] == (i + 1) * 2**30
        assert v["memory_total_bytes"] == 80 * 2**30
        assert v["memory_reserved_bytes"] == 512 * 2**20
        assert v["power_watts"] == pytest.approx(100 + i)
        assert v["power_limit_watts"] == pytest.approx(700)
        assert v["temperature_celsius"] == 40 + i
        assert v["sm_clock_hertz"] == (1500 + i) * 1e6
        assert v["sm_clock_max_hertz"] == 1980e6
        assert v["pcie_rx_bytes_per_second"] == (100 + i) * 1024
        assert v["pcie_tx_bytes_per_second"] == (200 + i) * 1024
        assert v["sm_active_ratio"] == pytest.approx((50 + i) / 100)
        assert v["sm_occupancy_ratio"] == pytest.approx((20 + i) / 100)
        assert v["tensor_active_ratio"] == pytest.approx((30 + i) / 100)
        assert v["dram_active_ratio"] == pytest.approx((40 + i) / 100)
        assert v["gpm_available"] == 1
        assert v["process_count"] == 1
        assert v["process_memory_used_bytes"] == (i + 1) * 2**29
        assert all(isinstance(x, float) and math.isfinite(x) for x in v.values())
    procs = [s for s in samples if "pid" in s.labels]
    assert len(procs) == count
    assert procs[-1].labels == {"gpu": str(count - 1), "uuid": fake.gpus[count - 1].uuid,
                                "pid": str(1000 + count - 1), "process_name": "python3"}
    assert procs[-1].values == {"process_memory_used_bytes": count * 2**29}
    json.dumps([s.to_json() for s in samples], allow_nan=False)
    probe.close()
    assert fake.init_count == 0
    assert not fake.gpm_samples_live


class RealStructs(FakeNvml):
    """The fake's readings handed out in the real pynvml ctypes structures."""

    c_nvmlGpmMetricsGet_t = pynvml.c_nvmlGpmMetricsGet_t

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gpm_by_address: dict[int, Any] = {}

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        fake = super().nvmlDeviceGetPciInfo(handle)
        info = pynvml.nvmlPciInfo_t()
        info.busId = fake.busId
        return info

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        fake = super().nvmlDeviceGetMemoryInfo(handle, version)
        real = pynvml.c_nvmlMemory_v2_t() if version else pynvml.c_nvmlMemory_t()
        for name, *_ in real._fields_:
            setattr(real, name, getattr(fake, name))
        return real

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        fake = super().nvmlDeviceGetUtilizationRates(handle)
        real = pynvml.c_nvmlUtilization_t()
        real.gpu, real.memory = fake.gpu, fake.memory
        return real

    def nvmlDeviceGetSamples(self, handle: Any, sampling_type: int,
                             last_seen_time_stamp: int) -> Any:
        value_type, fake = super().nvmlDeviceGetSamples(handle, sampling_type,
                                                        last_seen_time_stamp)
        real = (pynvml.c_nvmlSample_t * len(fake))()
        for r, f in zip(real, fake, strict=True):
            r.timeStamp, r.sampleValue.uiVal = f.timeStamp, f.sampleValue.uiVal
        return value_type, real[0:len(fake)]

    def nvmlGpmSampleAlloc(self) -> Any:
        fake = super().nvmlGpmSampleAlloc()
        struct = pynvml.struct_c_nvmlGpmSample_t()
        self.gpm_by_address[ctypes.addressof(struct)] = (struct, fake)
        return pynvml.c_nvmlGpmSample_t(struct)

    def _fake_gpm(self, pointer: Any) -> Any:
        return self.gpm_by_address[ctypes.addressof(pointer.contents)][1]

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        super().nvmlGpmSampleFree(self._fake_gpm(sample))

    def nvmlGpmSampleGet(self, handle: Any, sample: Any) -> Any:
        super().nvmlGpmSampleGet(handle, self._fake_gpm(sample))
        return sample

    def nvmlGpmMetricsGet(self, metrics_get: Any) -> Any:
        fake = FakeGpmMetricsGet()
        fake.version, fake.numMetrics = metrics_get.version, metrics_get.numMetrics
        fake.sample1 = self._fake_gpm(metrics_get.sample1)
        fake.sample2 = self._fake_gpm(metrics_get.sample2)
        for i in range(fake.numMetrics):
            fake.metrics[i].metricId = metrics_get.metrics[i].metricId
        super().nvmlGpmMetricsGet(fake)
        for i in range(fake.numMetrics):
            metrics_get.metrics[i].nvmlReturn = fake.metrics[i].nvmlReturn
            metrics_get.metrics[i].value = fake.metrics[i].value
        return metrics_get


def test_the_probe_reads_the_real_pynvml_structures() -> None:
    readings: dict[str, Any] = {}
    for backend in (FakeNvml, RealStructs):
        clock = FakeClock()
        fake = backend(scripted(2), clock=clock)
        probe = probe_for(fake, clock)
        probe.check()
        fake.push_utilization(1, [20, 40])
        clock.advance(1.0)
        readings[backend.__name__] = [(s.labels, s.values) for s in probe.sample()]
        probe.close()
        assert not fake.gpm_samples_live
    assert readings["RealStructs"] == readings["FakeNvml"]
    (gpu1,) = [v for labels, v in readings["RealStructs"] if labels.get("name")
               and labels["gpu"] == "1"]
    assert gpu1["utilization_samples"] == 2 and gpu1["gpm_available"] == 1
    assert gpu1["memory_reserved_bytes"] == 512 * 2**20


def test_clocks_event_reasons_as_bitmask_and_named_flags() -> None:
    clock = FakeClock()
    reasons = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwSlowdown
    fake = FakeNvml.with_gpus(1, clock=clock, clocks_event_reasons=reasons)
    v = gpu_samples(probe_for(fake, clock).sample())[0].values
    assert v["clocks_event_reasons_bitmask"] == reasons
    assert v["clocks_event_sw_power_cap_flag"] == 1
    assert v["clocks_event_hw_slowdown_flag"] == 1
    assert v["clocks_event_gpu_idle_flag"] == 0
    assert v["clocks_event_hw_thermal_slowdown_flag"] == 0


# -- utilization from the driver's sample buffer ---------------------------------------------


def test_bursts_between_polls_are_averaged_not_missed() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, sample_period_seconds=None,
                              utilization_percent=0)
    probe = probe_for(fake, clock)
    probe.check()
    fake.push_utilization(0, [0, 100, 100, 0])
    clock.advance(1.0)
    v = gpu_samples(probe.sample())[0].values
    # The driver's latest value is 0, but half of the interval was busy.
    assert v["utilization_ratio"] == pytest.approx(0.5)
    assert v["utilization_samples"] == 4
    # Nothing newer: not counted twice; the latest value stands in, without a count.
    clock.advance(1.0)
    v = gpu_samples(probe.sample())[0].values
    assert v["utilization_ratio"] == 0
    assert "utilization_samples" not in v
    fake.push_utilization(0, [90])
    clock.advance(1.0)
    v = gpu_samples(probe.sample())[0].values
    assert v["utilization_ratio"] == pytest.approx(0.9)
    assert v["utilization_samples"] == 1


def test_driver_sampler_feeds_the_average_at_its_period() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, utilization_percent=30,
                              sample_period_seconds=0.25)
    probe = probe_for(fake, clock)
    probe.check()
    clock.advance(1.0)
    v = gpu_samples(probe.sample())[0].values
    assert v["utilization_ratio"] == pytest.approx(0.3)
    assert v["utilization_samples"] == 4  # 1.0 s at 0.25 s, since the attach


def test_first_pass_leaves_out_samples_from_before_the_agent_started() -> None:
    # The driver keeps seconds of samples; a GPU that was busy until the agent started
    # and idle since must read idle on the first pass, not the buffer's old mean.
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, utilization_percent=100,
                              sample_period_seconds=0.25)
    clock.advance(5.0)
    probe = probe_for(fake, clock)
    probe.check()
    fake.gpus[0].utilization_percent = 0
    clock.advance(1.0)
    v = gpu_samples(probe.sample())[0].values
    assert v["utilization_ratio"] == 0
    assert v["utilization_samples"] == 4  # 0.25, 0.5, 0.75 and 1.0 s after the start


def test_glitched_driver_samples_are_dropped() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, sample_period_seconds=None)
    probe = probe_for(fake, clock)
    probe.check()
    fake.push_utilization(0, [40, 4294967295, 60])
    clock.advance(1.0)
    v = gpu_samples(probe.sample())[0].values
    assert v["utilization_ratio"] == pytest.approx(0.5)
    assert v["utilization_samples"] == 2


@pytest.mark.parametrize("old", ["driver", "binding"])
def test_without_sample_buffer_falls_back_to_latest_utilization(
        old: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ai_bottleneck.probes.nvml")
    clock = FakeClock()
    fake = FakeNvml.with_gpus(2, clock=clock, utilization_percent=77)
    if old == "driver":
        fake.remove_symbols("nvmlDeviceGetSamples")
    else:
        fake.remove_functions("nvmlDeviceGetSamples")
        assert not hasattr(fake, "nvmlDeviceGetSamples")
    probe = probe_for(fake, clock)
    for _ in range(3):
        clock.advance(1.0)
        for s in gpu_samples(probe.sample()):
            assert s.values["utilization_ratio"] == pytest.approx(0.77)
            assert "utilization_samples" not in s.values
    logged = [r for r in caplog.records if "nvmlDeviceGetSamples" in r.getMessage()]
    assert len(logged) == 1
    assert fake.calls.get("nvmlDeviceGetSamples", 0) <= 1


# -- NotSupported and other per-value errors ----------------------------------------------------


def test_not_supported_values_are_absent_never_zero_and_not_asked_again() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(2, clock=clock)
    fake.gpus[1].unsupported += ["nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature",
                                 "nvmlDeviceGetPcieThroughput", "nvmlDeviceGetUtilizationRates",
                                 "nvmlDeviceGetSamples"]
    probe = probe_for(fake, clock)
    for _ in range(3):
        clock.advance(1.0)
        gpus = by_gpu(probe.sample())
        ok, limited = gpus["0"].values, gpus["1"].values
        for key in ("power_watts", "temperature_celsius", "pcie_rx_bytes_per_second",
                    "pcie_tx_bytes_per_second", "utilization_ratio"):
            assert key in ok
            assert key not in limited
        assert limited["memory_used_bytes"] == ok["memory_used_bytes"]
        assert gpus["1"].ok
    # GPU 0 read power three times, GPU 1 once: the NotSupported answer is remembered.
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 4
    # GPU 0 once on the first pass (no sample since it was attached), never after;
    # GPU 1 once (NotSupported).
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 2


def test_transient_error_leaves_the_value_out_for_one_pass_only() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, power_milliwatts=250_000)
    probe = probe_for(fake, clock)
    fake.fail(0, "nvmlDeviceGetPowerUsage", pynvml.NVML_ERROR_UNKNOWN, times=1)
    first = gpu_samples(probe.sample())[0]
    assert first.ok and "power_watts" not in first.values
    second = gpu_samples(probe.sample())[0]
    assert second.values["power_watts"] == 250


def test_no_permission_for_processes_leaves_them_out() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, processes=[FakeProcess(pid=7)])
    fake.fail(0, "nvmlDeviceGetComputeRunningProcesses", pynvml.NVML_ERROR_NO_PERMISSION)
    samples = probe_for(fake, clock).sample()
    assert len(samples) == 1
    assert "process_count" not in samples[0].values
    assert "memory_used_bytes" in samples[0].values


# -- lost GPUs ---------------------------------------------------------------------------------


def test_gpu_lost_mid_run_reports_the_error_and_the_others_keep_sampling() -> None:
    clock = FakeClock()
    fake = FakeNvml(scripted(3), clock=clock)
    probe = probe_for(fake, clock)
    assert probe.check().usable
    clock.advance(1.0)
    assert all(s.ok for s in probe.sample())
    fake.lose(1, after_calls=4)  # falls off the bus part way through its next reading
    for _ in range(3):
        clock.advance(1.0)
        gpus = by_gpu(probe.sample())
        assert gpus["0"].ok and gpus["2"].ok
        assert gpus["2"].values["utilization_ratio"] == pytest.approx(0.3)
        lost = gpus["1"]
        assert not lost.ok
        assert lost.labels == {"gpu": "1", "uuid": fake.gpus[1].uuid}
        assert "lost" in lost.error and "\n" not in lost.error
        assert lost.values == {"health_ok_flag": 0.0, "health_degraded_flag": 0.0,
                               "health_reset_required_flag": 0.0, "health_lost_flag": 1.0}
    fake.recover(1)
    clock.advance(1.0)
    assert by_gpu(probe.sample())["1"].ok


def test_gpu_lost_before_start_is_reported_and_picked_up_once_back() -> None:
    clock = FakeClock()
    fake = FakeNvml(make_gpus(2), clock=clock)
    fake.gpus[0].lost = True
    probe = probe_for(fake, clock)
    assert probe.check().usable
    gpus = by_gpu(probe.sample())
    assert gpus["0"].labels == {"gpu": "0", "uuid": ""}
    assert "lost" in gpus["0"].error
    assert gpus["1"].ok
    fake.recover(0)
    gpus = by_gpu(probe.sample())
    assert gpus["0"].ok and gpus["0"].labels["uuid"] == fake.gpus[0].uuid


def test_a_broken_backend_call_fails_that_gpu_in_one_line() -> None:
    class Broken(FakeNvml):
        def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
            if handle.index == 0:
                raise ValueError("bad\nstate")
            return super().nvmlDeviceGetPowerUsage(handle)

    clock = FakeClock()
    gpus = by_gpu(probe_for(Broken(make_gpus(2), clock=clock), clock).sample())
    assert gpus["0"].error == "reading the GPU failed: bad state"
    assert gpus["1"].ok


# -- old drivers and bindings ------------------------------------------------------------------


def test_old_driver_without_v2_memory_call_uses_v1(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ai_bottleneck.probes.nvml")
    clock = FakeClock()
    fake = FakeNvml.with_gpus(2, clock=clock, memory_used_bytes=10 * 2**30)
    fake.remove_symbols("nvmlDeviceGetMemoryInfo_v2")
    probe = probe_for(fake, clock)
    for _ in range(3):
        for s in gpu_samples(probe.sample()):
            # v1 counts the driver's reserve as used, and has no reserve of its own
            assert s.values["memory_used_bytes"] == 10 * 2**30 + 512 * 2**20
            assert s.values["memory_total_bytes"] == 80 * 2**30
            assert "memory_reserved_bytes" not in s.values
    assert len([r for r in caplog.records if "nvmlDeviceGetMemoryInfo" in r.getMessage()]) == 1


def test_old_binding_without_memory_version_argument_uses_v1() -> None:
    class OldBinding(FakeNvml):
        def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:  # type: ignore[override]
            return super().nvmlDeviceGetMemoryInfo(handle)

    clock = FakeClock()
    fake = OldBinding(make_gpus(1, memory_used_bytes=2**30), clock=clock)
    probe = probe_for(fake, clock)
    for _ in range(2):
        v = gpu_samples(probe.sample())[0].values
        assert v["memory_used_bytes"] == 2**30 + 512 * 2**20
        assert "memory_reserved_bytes" not in v


def test_old_driver_clock_reasons_and_processes_fall_back() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, clocks_event_reasons=1,
                              processes=[FakeProcess(pid=5, used_memory_bytes=100)])
    fake.remove_symbols("nvmlDeviceGetCurrentClocksEventReasons",
                        "nvmlDeviceGetComputeRunningProcesses_v3")
    samples = probe_for(fake, clock).sample()
    v = gpu_samples(samples)[0].values
    assert v["clocks_event_reasons_bitmask"] == 1
    assert v["clocks_event_gpu_idle_flag"] == 1
    assert v["process_count"] == 1
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 1
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v2"] == 1


def test_old_binding_without_temperature_function_uses_the_newer_one() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, temperature_celsius=71)
    fake.remove_functions("nvmlDeviceGetTemperature")
    v = gpu_samples(probe_for(fake, clock).sample())[0].values
    assert v["temperature_celsius"] == 71


# -- GPM ---------------------------------------------------------------------------------------


def test_gpm_unsupported_says_only_coarse_utilization_was_available() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(2, clock=clock, gpm=None, utilization_percent=60)
    probe = probe_for(fake, clock)
    probe.check()
    for _ in range(2):
        clock.advance(1.0)
        for s in gpu_samples(probe.sample()):
            assert s.values["gpm_available"] == 0
            assert s.values["utilization_ratio"] == pytest.approx(0.6)
            for key in ("sm_active_ratio", "sm_occupancy_ratio", "tensor_active_ratio",
                        "dram_active_ratio"):
                assert key not in s.values
    assert "nvmlGpmSampleAlloc" not in fake.calls


def test_gpm_metrics_cover_the_interval_between_two_passes() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, gpm={"sm_util": 10, "sm_occupancy": 5,
                                                   "tensor_util": 0})
    probe = probe_for(fake, clock)
    probe.check()  # takes the first GPM sample
    fake.gpus[0].gpm = {"sm_util": 90, "sm_occupancy": 45, "tensor_util": 70}
    clock.advance(1.0)
    v = gpu_samples(probe.sample())[0].values
    assert v["gpm_available"] == 1
    assert v["sm_active_ratio"] == pytest.approx(0.9)
    assert v["tensor_active_ratio"] == pytest.approx(0.7)
    assert "dram_active_ratio" not in v  # this GPU did not give that metric
    # Sampled again within 100 ms: GPM has no meaningful interval; says so.
    clock.advance(0.01)
    assert gpu_samples(probe.sample())[0].values["gpm_available"] == 0
    probe.close()
    assert not fake.gpm_samples_live


def test_gpm_without_permission_is_dropped_and_its_buffers_freed(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ai_bottleneck.probes.nvml")
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock)
    probe = probe_for(fake, clock)
    probe.check()
    fake.fail(0, "nvmlGpmSampleGet", pynvml.NVML_ERROR_NO_PERMISSION)
    for _ in range(3):
        clock.advance(1.0)
        s = gpu_samples(probe.sample())[0]
        assert s.ok and s.values["gpm_available"] == 0
    assert not fake.gpm_samples_live
    assert len([r for r in caplog.records if "GPM" in r.getMessage()]) == 1


def test_gpm_option_off_never_touches_gpm() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock)
    v = gpu_samples(probe_for(fake, clock, gpm=False).sample())[0].values
    assert v["gpm_available"] == 0
    assert not any(name.startswith("nvmlGpm") for name in fake.calls)


# -- processes ---------------------------------------------------------------------------------


def test_processes_without_memory_figure_or_name() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(2, clock=clock)
    fake.gpus[0].processes = [FakeProcess(pid=11, name="/opt/server", used_memory_bytes=None)]
    samples = probe_for(fake, clock).sample()
    gpus = by_gpu(samples)
    assert gpus["0"].values["process_count"] == 1
    assert "process_memory_used_bytes" not in gpus["0"].values  # unknown, not 0
    assert gpus["1"].values["process_count"] == 0
    assert gpus["1"].values["process_memory_used_bytes"] == 0  # no process: truly nothing
    (proc,) = [s for s in samples if "pid" in s.labels]
    assert proc.labels["process_name"] == "server" and proc.values == {}
    fake.fail(0, "nvmlDeviceGetComputeRunningProcesses", pynvml.NVML_ERROR_UNKNOWN, times=1)
    fake.gpus[0].processes = [FakeProcess(pid=12)]
    fake.gpus[1].processes = [FakeProcess(pid=13)]
    fake.remove_symbols("nvmlSystemGetProcessName")
    samples = probe_for(fake, clock).sample()
    assert [s.labels["process_name"] for s in samples if "pid" in s.labels] == ["unknown"]


# -- the library missing and start-up ----------------------------------------------------------


@pytest.mark.parametrize(("fake_args", "words"), [
    ({"library_missing": True}, "no NVIDIA driver: NVML library"),
    ({"init_error": pynvml.NVML_ERROR_DRIVER_NOT_LOADED}, "NVIDIA driver not loaded"),
    ({"init_error": pynvml.NVML_ERROR_NO_PERMISSION}, "no permission"),
    ({"init_error": pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH}, "versions differ"),
])
def test_unavailable_with_a_reason_a_person_can_act_on(fake_args: dict[str, Any],
                                                        words: str) -> None:
    clock = FakeClock()
    fake = FakeNvml(make_gpus(1), clock=clock, **fake_args)
    probe = probe_for(fake, clock)
    availability = probe.check()
    assert not availability.usable
    assert words in availability.reason
    (sample,) = probe.sample()
    assert sample.error == availability.reason
    probe.close()


def test_no_gpu_at_all_is_unusable() -> None:
    clock = FakeClock()
    fake = FakeNvml([], clock=clock)
    probe = probe_for(fake, clock)
    assert probe.check() == Availability.no("NVML found no NVIDIA GPU on this host")
    probe.close()
    assert fake.init_count == 0


def test_start_is_retried_sparingly_and_succeeds_once_the_driver_is_there() -> None:
    clock = FakeClock()
    fake = FakeNvml(make_gpus(1), clock=clock, library_missing=True)
    probe = probe_for(fake, clock)
    for _ in range(5):
        clock.advance(1.0)
        assert not probe.sample()[0].ok
    assert fake.calls["nvmlInit"] == 1
    fake.library_missing = False
    clock.advance(30.0)
    assert probe.sample()[0].ok
    probe.close()
    assert fake.init_count == 0


def test_real_nvml_library_missing_here_gives_the_reason() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        expected = nvml.describe(exc)
        library_missing = isinstance(exc, pynvml.NVMLError_LibraryNotFound)
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this host has a working NVIDIA driver")
    probe = GpuProbe(backend=pynvml)
    availability = probe.check()
    assert not availability.usable
    assert availability.reason == expected
    if library_missing:
        assert availability.reason.startswith("no NVIDIA driver: NVML library libnvidia-ml.so.1")
    probe.close()


def test_nvml_is_initialised_once_and_shut_down_on_close() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(2, clock=clock)
    probe = probe_for(fake, clock)
    probe.check()
    for _ in range(3):
        probe.sample()
    assert fake.calls["nvmlInit"] == 1
    assert fake.init_count == 1
    probe.close()
    probe.close()
    assert fake.init_count == 0
    assert fake.calls["nvmlShutdown"] == 1


def test_a_hung_read_does_not_stack_up_a_second_one() -> None:
    entered, release = threading.Event(), threading.Event()

    class Hanging(FakeNvml):
        def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
            entered.set()
            release.wait(10)
            return super().nvmlDeviceGetPowerUsage(handle)

    clock = FakeClock()
    probe = probe_for(Hanging(make_gpus(1), clock=clock), clock)
    worker = threading.Thread(target=probe.sample)
    worker.start()
    try:
        assert entered.wait(10)
        (second,) = probe.sample()
        assert "has not returned" in (second.error or "")
    finally:
        release.set()
        worker.join(10)
    assert probe.sample()[0].ok


# -- options and the entry point ---------------------------------------------------------------


def test_options() -> None:
    probe = create({"timeout_seconds": "2s", "pcie": False})
    assert probe.timeout_seconds == 2.0 and probe.options.pcie is False
    assert probe.name == "gpu" and probe.active is False and probe.interval_seconds is None
    with pytest.raises(OptionError, match="pci"):
        create({"pci": False})
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock)
    v = gpu_samples(probe_for(fake, clock, pcie=False, processes=False).sample())[0].values
    assert "pcie_rx_bytes_per_second" not in v and "process_count" not in v
    assert "nvmlDeviceGetPcieThroughput" not in fake.calls
    assert "nvmlDeviceGetComputeRunningProcesses" not in fake.calls


def test_sample_buffer_option_off_reads_the_latest_value_only() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, utilization_percent=20)
    probe = probe_for(fake, clock, sample_buffer=False)
    clock.advance(1.0)
    v = gpu_samples(probe.sample())[0].values
    assert v["utilization_ratio"] == pytest.approx(0.2) and "utilization_samples" not in v
    assert "nvmlDeviceGetSamples" not in fake.calls


def test_backend_from_environment_follows_the_state_file_live(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "nvml.json"
    write_state(state, make_gpus(2, utilization_percent=5, memory_used_bytes=2**30))
    monkeypatch.setenv(nvml.BACKEND_ENV, BACKEND_SPEC)
    monkeypatch.setenv(STATE_ENV, str(state))
    probe = create({})
    assert probe.check().usable
    assert by_gpu(probe.sample())["1"].values["memory_used_bytes"] == 2**30
    update_gpu(state, 1, memory_used_bytes=80 * 2**30, lost=False)
    assert by_gpu(probe.sample())["1"].values["memory_used_bytes"] == 80 * 2**30
    update_gpu(state, 0, lost=True)
    gpus = by_gpu(probe.sample())
    assert not gpus["0"].ok and gpus["1"].ok
    probe.close()


def test_bad_backend_setting_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(nvml.BACKEND_ENV, "tests.fakes.no_such_module:from_env")
    availability = create({}).check()
    assert not availability.usable
    assert availability.reason.startswith(f"{nvml.BACKEND_ENV}='tests.fakes.no_such_module")
    monkeypatch.setenv(nvml.BACKEND_ENV, "no-colon")
    assert "expected 'module:callable'" in create({}).check().reason


def test_discovered_through_the_entry_point_in_a_subprocess(tmp_path: Path) -> None:
    state = tmp_path / "nvml.json"
    write_state(state, make_gpus(8, utilization_percent=95))
    script = (
        "import atexit, json\n"
        "backends = []\n"
        # registered before NVML starts, so it runs after NVML's own exit hook
        "atexit.register(lambda: print('init_count', backends[0].init_count))\n"
        "from ai_bottleneck.discovery import discover\n"
        "(found,) = discover(only=['gpu'])\n"
        "backends.append(found.probe._nvml.backend)\n"
        "print(json.dumps([s.to_json() for s in found.probe.sample()]))\n"
    )
    env = {**os.environ, nvml.BACKEND_ENV: BACKEND_SPEC, STATE_ENV: str(state),
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    lines = result.stdout.strip().splitlines()
    samples = json.loads(lines[0])
    assert [s["labels"]["gpu"] for s in samples] == [str(i) for i in range(8)]
    assert all(s["values"]["memory_total_bytes"] == 80 * 2**30 for s in samples)
    assert lines[1] == "init_count 0"  # NVML shut down at exit without close()


# -- defects found against NVIDIA's mock NVML ------------------------------------------------


def test_gpm_buffers_are_freed_when_the_gpu_is_lost_before_the_first_gpm_sample() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(8, clock=clock)
    for i in range(8):  # lost between nvmlGpmSampleAlloc and the first nvmlGpmSampleGet
        fake.fail(i, "nvmlGpmSampleGet", pynvml.NVML_ERROR_GPU_IS_LOST, times=1)
    probe = probe_for(fake, clock)
    probe.check()
    assert fake.calls["nvmlGpmSampleAlloc"] == 16
    assert not fake.gpm_samples_live
    assert fake.calls["nvmlGpmSampleFree"] == 16
    clock.advance(1.0)
    assert all(s.ok for s in gpu_samples(probe.sample()))  # back: attached, GPM open again
    assert len(fake.gpm_samples_live) == 16
    probe.close()
    assert not fake.gpm_samples_live


def test_check_is_unusable_when_no_gpu_could_be_attached() -> None:
    clock = FakeClock()
    fake = FakeNvml.with_gpus(8, clock=clock)
    for gpu in fake.gpus:
        gpu.lost = True
    probe = probe_for(fake, clock)
    availability = probe.check()
    assert not availability.usable
    assert availability.reason == ("NVML sees 8 GPU(s) but none can be read: "
                                   "GPU 0, 1, 2, 3, 4, 5, 6, 7: " + nvml.describe(
                                       pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)))
    fake.recover(3)
    availability = probe.check()
    assert availability.usable
    assert availability.reason.startswith("1 of 8 GPU(s) readable: 1x NVIDIA H100 80GB HBM3; "
                                          "GPU 0, 1, 2, 4, 5, 6, 7: GPU is lost")
    probe.close()
