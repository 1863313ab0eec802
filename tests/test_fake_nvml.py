"""The fake NVML itself: shaped like pynvml, behaving like it where that is known."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import pynvml
import pytest

from tests.fakes.fake_nvml import (
    STATE_ENV,
    FakeClock,
    FakeGpu,
    FakeNvml,
    FakeProcess,
    from_env,
    make_gpus,
    read_state,
    update_gpu,
    write_state,
)


def started(fake: FakeNvml) -> FakeNvml:
    fake.nvmlInit()
    return fake


def test_every_fake_function_has_the_real_signature() -> None:
    names = [n for n in dir(FakeNvml) if n.startswith("nvml")]
    assert len(names) > 25
    for name in names:
        real = getattr(pynvml, name)  # AttributeError: the fake invented a function
        fake_params = list(inspect.signature(getattr(FakeNvml, name)).parameters.values())[1:]
        real_params = list(inspect.signature(real).parameters.values())
        assert len(fake_params) == len(real_params), name
        for fake_p, real_p in zip(fake_params, real_params, strict=True):
            has_default = fake_p.default is not inspect.Parameter.empty
            assert has_default == (real_p.default is not inspect.Parameter.empty), name


def test_module_constants_come_from_pynvml_and_unknown_functions_do_not_exist() -> None:
    fake = FakeNvml()
    assert fake.NVML_TEMPERATURE_GPU == pynvml.NVML_TEMPERATURE_GPU
    assert fake.nvmlMemory_v2 == pynvml.nvmlMemory_v2
    assert not hasattr(fake, "nvmlDeviceGetBAR1MemoryInfo")
    assert not hasattr(fake, "NO_SUCH_CONSTANT")


def test_calls_need_init_and_shutdown_is_counted() -> None:
    fake = FakeNvml(make_gpus(1))
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
    fake.nvmlInit()
    fake.nvmlInit()
    assert fake.nvmlDeviceGetCount() == 1
    fake.nvmlShutdown()
    assert fake.nvmlDeviceGetCount() == 1  # NVML counts initialisations
    fake.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlShutdown()


def test_start_failures_raise_the_real_classes() -> None:
    with pytest.raises(pynvml.NVMLError_LibraryNotFound):
        FakeNvml(library_missing=True).nvmlInit()
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        FakeNvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED).nvmlInit()


def test_sample_buffer_returns_only_newer_samples_and_not_found_when_none() -> None:
    clock = FakeClock()
    fake = started(FakeNvml(make_gpus(1, utilization_percent=42, sample_period_seconds=0.5),
                            clock=clock))
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    kind = pynvml.NVML_GPU_UTILIZATION_SAMPLES
    clock.advance(1.0)
    value_type, samples = fake.nvmlDeviceGetSamples(handle, kind, 0)
    assert value_type == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    assert [s.sampleValue.uiVal for s in samples] == [42, 42, 42]
    stamps = [s.timeStamp for s in samples]
    assert stamps == sorted(stamps) and stamps[1] - stamps[0] == 500_000
    with pytest.raises(pynvml.NVMLError_NotFound):
        fake.nvmlDeviceGetSamples(handle, kind, stamps[-1])
    clock.advance(0.5)
    _, newer = fake.nvmlDeviceGetSamples(handle, kind, stamps[-1])
    assert [s.timeStamp for s in newer] == [stamps[-1] + 500_000]
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetSamples(handle, pynvml.NVML_TOTAL_POWER_SAMPLES, 0)


def test_memory_v1_counts_the_reserve_as_used_v2_keeps_it_apart() -> None:
    fake = started(FakeNvml(make_gpus(1, memory_used_bytes=3 * 2**30)))
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    v1 = fake.nvmlDeviceGetMemoryInfo(handle)
    v2 = fake.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    assert v1.used == 3 * 2**30 + 512 * 2**20 and v1.used + v1.free == v1.total
    assert v2.used == 3 * 2**30 and v2.used + v2.reserved + v2.free == v2.total
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        fake.nvmlDeviceGetMemoryInfo(handle, version=1)


def test_faults_lost_gpus_and_old_drivers() -> None:
    fake = started(FakeNvml(make_gpus(2)))
    h0, h1 = fake.nvmlDeviceGetHandleByIndex(0), fake.nvmlDeviceGetHandleByIndex(1)
    fake.fail(0, "nvmlDeviceGetPowerUsage", pynvml.NVML_ERROR_TIMEOUT, times=2)
    for _ in range(2):
        with pytest.raises(pynvml.NVMLError_Timeout):
            fake.nvmlDeviceGetPowerUsage(h0)
    assert fake.nvmlDeviceGetPowerUsage(h0) == 70_000
    fake.lose(1, after_calls=1)
    assert fake.nvmlDeviceGetName(h1) == "NVIDIA H100 80GB HBM3"
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        fake.nvmlDeviceGetName(h1)
    assert fake.nvmlDeviceGetName(h0)  # the other GPU is fine
    fake.remove_symbols("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetPowerUsage")
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        fake.nvmlDeviceGetPowerUsage(h0)
    with pytest.raises(pynvml.NVMLLibraryMismatchError):
        fake.nvmlDeviceGetComputeRunningProcesses(h0)
    assert fake.nvmlDeviceGetComputeRunningProcesses_v2(h0) == []


def test_removed_functions_vanish_from_that_fake_only() -> None:
    old, new = FakeNvml(), FakeNvml()
    old.remove_functions("nvmlDeviceGetSamples")
    assert not hasattr(old, "nvmlDeviceGetSamples")
    assert getattr(old, "nvmlDeviceGetSamples", None) is None
    assert hasattr(new, "nvmlDeviceGetSamples")
    assert isinstance(old, FakeNvml)


def test_gpm_needs_two_samples_of_one_supported_gpu() -> None:
    clock = FakeClock()
    gpus = make_gpus(2, gpm={"sm_util": 75.5})
    gpus[1].gpm = None
    fake = started(FakeNvml(gpus, clock=clock))
    h0, h1 = fake.nvmlDeviceGetHandleByIndex(0), fake.nvmlDeviceGetHandleByIndex(1)
    assert fake.nvmlGpmQueryDeviceSupport(h0).isSupportedDevice == 1
    assert fake.nvmlGpmQueryDeviceSupport(h1).isSupportedDevice == 0
    a, b = fake.nvmlGpmSampleAlloc(), fake.nvmlGpmSampleAlloc()
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlGpmSampleGet(h1, a)
    request = fake.c_nvmlGpmMetricsGet_t()
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = 2
    request.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
    request.metrics[1].metricId = pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL
    request.sample1, request.sample2 = a, b
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlGpmMetricsGet(request)  # neither sample taken yet
    fake.nvmlGpmSampleGet(h0, a)
    clock.advance(1.0)
    fake.nvmlGpmSampleGet(h0, b)
    fake.nvmlGpmMetricsGet(request)
    assert (request.metrics[0].nvmlReturn, request.metrics[0].value) == (0, 75.5)
    assert request.metrics[1].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    fake.nvmlGpmSampleFree(a)
    fake.nvmlGpmSampleFree(b)
    assert not fake.gpm_samples_live
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlGpmSampleFree(a)


def test_pci_info_and_process_names_look_like_the_library() -> None:
    fake = started(FakeNvml(make_gpus(1, processes=[FakeProcess(pid=9, name="/bin/srv")])))
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    pci = fake.nvmlDeviceGetPciInfo(handle)
    assert pci.busId == b"00000000:18:00.0" and pci.bus == 0x18
    assert fake.nvmlSystemGetProcessName(9) == "/bin/srv"
    with pytest.raises(pynvml.NVMLError_NotFound):
        fake.nvmlSystemGetProcessName(10)


def test_state_file_round_trip_and_live_changes(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    gpus = make_gpus(2, processes=[FakeProcess(pid=1, used_memory_bytes=5)])
    gpus[0].extra["oom_events_total"] = 3
    write_state(path, gpus, missing_symbols=["nvmlDeviceGetSamples"])
    assert read_state(path)["gpus"][0]["oom_events_total"] == 3
    assert [FakeGpu.from_json(g) for g in read_state(path)["gpus"]] == gpus
    monkeypatch.setenv(STATE_ENV, str(path))
    fake = started(from_env())
    handle = fake.nvmlDeviceGetHandleByIndex(1)
    assert fake.missing_symbols == {"nvmlDeviceGetSamples"}
    assert fake.nvmlDeviceGetUtilizationRates(handle).gpu == 0
    update_gpu(path, 1, utilization_percent=88, oom_events_total=1,
               processes=[{"pid": 2, "name": "x"}])
    assert fake.nvmlDeviceGetUtilizationRates(handle).gpu == 88
    assert fake.gpus[1].extra == {"oom_events_total": 1}
    assert fake.nvmlSystemGetProcessName(2) == "x"
    path.write_text("{not json")  # a writer that does not replace atomically
    assert fake.nvmlDeviceGetUtilizationRates(handle).gpu == 88  # last good state kept
    path.write_text(json.dumps({"library_missing": True, "gpus": []}))
    with pytest.raises(pynvml.NVMLError_LibraryNotFound):
        fake.nvmlInit()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".fake-nvml-")]


def test_from_env_without_a_state_file_says_what_is_missing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(STATE_ENV, raising=False)
    with pytest.raises(ValueError, match=STATE_ENV):
        from_env()
    monkeypatch.setenv(STATE_ENV, str(tmp_path / "absent.json"))
    with pytest.raises(FileNotFoundError):
        from_env()


def test_health_and_mig_calls_raise_the_real_classes_and_round_trip_the_state_file(
        tmp_path: Path) -> None:
    from tests.fakes.fake_nvml import FakeMigInstance

    gpus = make_gpus(2, ecc=None, remapped_rows=None)
    gpus[1].mig = [FakeMigInstance(3, uuid="MIG-x")]
    gpus[1].xid_events = [94]
    path = tmp_path / "state.json"
    write_state(path, gpus)
    fake = started(FakeNvml.from_file(path))
    h0, h1 = fake.nvmlDeviceGetHandleByIndex(0), fake.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetTotalEccErrors(h0, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                         pynvml.NVML_VOLATILE_ECC)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetRemappedRows(h0)
    events = fake.nvmlEventSetCreate()
    fake.nvmlDeviceRegisterEvents(h1, pynvml.nvmlEventTypeXidCriticalError, events)
    data = fake.nvmlEventSetWait_v2(events, 0)
    assert (data.eventType, data.eventData) == (pynvml.nvmlEventTypeXidCriticalError, 94)
    with pytest.raises(pynvml.NVMLError_Timeout):
        fake.nvmlEventSetWait_v2(events, 0)
    fake.nvmlEventSetFree(events)
    assert fake.nvmlDeviceGetMigMode(h0) == [0, 0]
    assert fake.nvmlDeviceGetMigMode(h1) == [pynvml.NVML_DEVICE_MIG_ENABLE] * 2
    mig = fake.nvmlDeviceGetMigDeviceHandleByIndex(h1, 0)
    assert fake.nvmlDeviceGetGpuInstanceId(mig) == 3 and fake.nvmlDeviceGetUUID(mig) == "MIG-x"
    with pytest.raises(pynvml.NVMLError_NotFound):
        fake.nvmlDeviceGetMigDeviceHandleByIndex(h1, 1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetUtilizationRates(mig)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetUtilizationRates(h1)  # the parent in MIG mode
    fake.gpus[1].lost = True
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        fake.nvmlDeviceGetUUID(mig)  # a lost parent loses its instances
