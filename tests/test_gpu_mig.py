"""MIG instances through the fake NVML: enumerated, read per instance (memory, GPM),
labelled by GPU and instance, exported, and the busiest instance decides the label."""

from __future__ import annotations

from typing import Any

from ai_bottleneck.classifier import Label, classify
from ai_bottleneck.exporter import build_registry
from ai_bottleneck.probes.base import Sample
from ai_bottleneck.probes.gpu import GpuProbe, Options
from ai_bottleneck.state import AgentState
from ai_bottleneck.windows import Window
from tests import synth
from tests.fakes.fake_nvml import (
    FakeClock,
    FakeGpu,
    FakeMigInstance,
    FakeNvml,
    FakeProcess,
    make_gpus,
)

GIB = 2**30


def quiet_gpm(sm: float = 3.0) -> dict[str, float]:
    return {"sm_util": sm, "sm_occupancy": sm / 2, "tensor_util": 0.0, "dram_bw_util": 2.0}


def mig_host(saturated_instance: int | None = 2) -> tuple[FakeNvml, FakeClock]:
    """GPU 0 in MIG mode with four instances (one saturated), GPU 1 an ordinary quiet GPU."""
    clock = FakeClock(synth.T0)
    instances = []
    for k, gi in enumerate((1, 2, 5, 6)):
        gpm = quiet_gpm()
        if k == saturated_instance:
            gpm = {"sm_util": 97.0, "sm_occupancy": 70.0, "tensor_util": 85.0,
                   "dram_bw_util": 60.0}
        instances.append(FakeMigInstance(
            gi, name="NVIDIA H100 80GB HBM3 MIG 1g.10gb", uuid=f"MIG-0000000{k}-aaaa",
            memory_used_bytes=(k + 1) * GIB, memory_total_bytes=10 * GIB, gpm=gpm))
    gpus = make_gpus(2, utilization_percent=2, gpm=quiet_gpm(), sample_period_seconds=None)
    gpus[0].mig = instances
    return FakeNvml(gpus, clock=clock), clock


def passes(fake: FakeNvml, clock: FakeClock, count: int = 1,
           **options: Any) -> tuple[GpuProbe, list[Sample]]:
    options.setdefault("proc_root", "/nonexistent/proc")  # the fake's PIDs are not this host's
    probe = GpuProbe(Options(pcie=False, **options), backend=fake, clock=clock, monotonic=clock)
    out: list[Sample] = []
    for _ in range(count):
        clock.advance(1.0)
        out += probe.sample()
    return probe, out


def instances_of(samples: list[Sample]) -> dict[str, Sample]:
    return {s.labels["mig"]: s for s in samples if "mig" in s.labels}


def test_every_instance_is_a_sample_with_its_memory_and_gpm() -> None:
    fake, clock = mig_host()
    probe, samples = passes(fake, clock, 2)
    last = instances_of(samples[len(samples) // 2:])
    assert sorted(last, key=int) == ["1", "2", "5", "6"]
    five = last["5"]
    assert five.labels == {"gpu": "0", "uuid": fake.gpus[0].uuid, "mig": "5",
                           "mig_uuid": "MIG-00000002-aaaa",
                           "name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb"}
    assert five.values["memory_used_bytes"] == 3 * GIB
    assert five.values["memory_total_bytes"] == 10 * GIB
    assert five.values["gpm_available"] == 1
    assert five.values["sm_active_ratio"] == 0.97
    assert last["1"].values["sm_active_ratio"] == 0.03
    parent = next(s for s in samples[len(samples) // 2:] if s.labels.get("gpu") == "0"
              and "mig" not in s.labels and "pid" not in s.labels)
    assert "utilization_ratio" not in parent.values  # NVML has none for a GPU in MIG mode
    assert parent.values["gpm_available"] == 0
    assert not any("mig" in s.labels for s in samples if s.labels.get("gpu") == "1")
    assert fake.calls["nvmlDeviceGetMigDeviceHandleByIndex"] == 7  # every slot, 3 empty
    probe.close()
    assert not fake.gpm_samples_live


def test_instances_without_gpm_still_give_memory() -> None:
    fake, clock = mig_host()
    assert fake.gpus[0].mig is not None
    for inst in fake.gpus[0].mig:
        inst.gpm = None
    _, samples = passes(fake, clock, 2)
    inst = instances_of(samples)["2"]
    assert inst.values["memory_used_bytes"] == 2 * GIB
    assert inst.values["gpm_available"] == 0 and "sm_active_ratio" not in inst.values


def test_mig_option_off_and_gpus_without_mig() -> None:
    fake, clock = mig_host()
    _, samples = passes(fake, clock, mig=False)
    assert not instances_of(samples) and "nvmlDeviceGetMigMode" not in fake.calls
    clock = FakeClock()
    v100 = FakeNvml([FakeGpu(name="Tesla V100", unsupported=["nvmlDeviceGetMigMode"])],
                    clock=clock)
    _, samples = passes(v100, clock)
    assert samples and all(s.ok for s in samples) and not instances_of(samples)


def test_a_lost_mig_gpu_frees_its_instances_buffers_and_comes_back() -> None:
    fake, clock = mig_host()
    fake.gpus[0].lost = True
    probe, samples = passes(fake, clock)
    assert not next(s for s in samples if s.labels.get("gpu") == "0").ok
    assert len(fake.gpm_samples_live) == 2  # GPU 1's only
    fake.recover(0)
    clock.advance(1.0)
    samples = probe.sample()
    assert len(instances_of(samples)) == 4
    probe.close()
    assert not fake.gpm_samples_live


def window_for(fake: FakeNvml, clock: FakeClock) -> Window:
    start = clock()
    _, samples = passes(fake, clock, 10)
    samples += synth.scene(synth.host(cpu=0.3), synth.http(total=0.4), start=start + 1)
    return Window.from_samples(samples, start, start + 11)


def test_the_saturated_instance_decides_gpu_bound() -> None:
    fake, clock = mig_host(saturated_instance=2)
    c = classify(window_for(fake, clock))
    assert c.label is Label.GPU_BOUND
    assert "GPU 0 MIG instance 5" in c.evidence[0]


def test_quiet_instances_do_not_make_a_bottleneck() -> None:
    fake, clock = mig_host(saturated_instance=None)
    c = classify(window_for(fake, clock))
    assert c.label is not Label.GPU_BOUND


def test_instances_are_exported_with_gpu_and_instance_labels() -> None:
    fake, clock = mig_host()
    state = AgentState(clock=clock, interval_seconds=1)
    state.register_probe("gpu")
    registry = build_registry(state, process_metrics=False)
    _, samples = passes(fake, clock, 2)
    state.record_samples("gpu", samples)
    labels = {"gpu": "0", "uuid": fake.gpus[0].uuid, "mig": "5",
              "mig_uuid": "MIG-00000002-aaaa", "name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb"}
    assert registry.get_sample_value("ai_bottleneck_gpu_mig_sm_active_ratio", labels) == 0.97
    assert registry.get_sample_value("ai_bottleneck_gpu_mig_memory_used_bytes",
                                     labels) == 3 * GIB
    # the instance's memory is not mixed into the GPU's own series
    gpu0 = {"gpu": "0", "uuid": fake.gpus[0].uuid, "name": fake.gpus[0].name}
    assert registry.get_sample_value("ai_bottleneck_gpu_memory_used_bytes", gpu0) == 0


def test_processes_on_a_mig_gpu_carry_their_instance() -> None:
    fake, clock = mig_host()
    fake.gpus[0].processes = [FakeProcess(501, "python3", 3 * GIB, gpu_instance_id=5),
                              FakeProcess(502, "python3", GIB, gpu_instance_id=1)]
    fake.gpus[1].processes = [FakeProcess(503, "python3", GIB)]
    _, samples = passes(fake, clock)
    procs = {s.labels["pid"]: s.labels for s in samples if "pid" in s.labels}
    assert procs["501"]["mig"] == "5" and procs["502"]["mig"] == "1"
    assert "mig" not in procs["503"]
    window = window_for(fake, clock)
    workloads = classify(window).summary["gpu_workloads"]
    assert workloads["process python3 (pid 501) on GPU 0 MIG instance 5"] == {
        "memory_used_bytes": 3 * GIB}
