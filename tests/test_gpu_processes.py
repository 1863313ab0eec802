"""GPU processes to containers, pods and services: the probe's process labels, with the
cardinality bound; one test runs a real process in a real cgroup the test makes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ai_bottleneck.classifier import classify
from ai_bottleneck.exporter import build_registry
from ai_bottleneck.figures import run_figures
from ai_bottleneck.probes.base import Sample
from ai_bottleneck.probes.gpu import GpuProbe, Options
from ai_bottleneck.probes.gpu_processes import in_host_pid_namespace
from ai_bottleneck.report_tables import workload_lines
from ai_bottleneck.state import AgentState
from ai_bottleneck.windows import Window
from tests import synth
from tests.fakes.fake_nvml import FakeClock, FakeNvml, FakeProcess

CID = "3f4e2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f"
CID2 = "9" * 64
UID = "8e0b5c2a-6f4d-4b1e-9a7c-2d3e4f5a6b7c"
GIB = 2**30


def procs(samples: list[Sample]) -> dict[str, Sample]:
    return {s.labels["pid"]: s for s in samples if "pid" in s.labels}


def fake_proc(root: Path, pid: int, cgroup: str) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "cgroup").write_text(cgroup)


def test_processes_carry_container_pod_and_service_labels(tmp_path: Path) -> None:
    proc, pods = tmp_path / "proc", tmp_path / "log" / "pods"
    containers = tmp_path / "log" / "containers"
    fake_proc(proc, 101, f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
                         f"{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope\n")
    fake_proc(proc, 102, f"0::/system.slice/docker-{CID2}.scope\n")
    fake_proc(proc, 103, "0::/system.slice/tgi.service\n")
    pods.mkdir(parents=True)
    containers.mkdir(parents=True)
    (pods / f"inference_vllm-7d9f8-abcde_{UID}").mkdir()
    (containers / f"vllm-7d9f8-abcde_inference_server-{CID}.log").write_text("")
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, processes=[
        FakeProcess(101, "/usr/bin/python3", 40 * GIB), FakeProcess(102, "python3", 8 * GIB),
        FakeProcess(103, "text-generation-launcher", 4 * GIB),
        FakeProcess(104, "python3", GIB)])  # 104: not visible from here (no /proc entry)
    probe = GpuProbe(Options(pcie=False, proc_root=str(proc), pod_logs_root=str(pods)),
                     backend=fake, clock=clock, monotonic=clock)
    got = procs(list(probe.sample()))
    base = {"gpu": "0", "uuid": fake.gpus[0].uuid}
    assert got["101"].labels == {**base, "pid": "101", "process_name": "python3",
                                 "container_id": CID, "pod_uid": UID, "namespace": "inference",
                                 "pod": "vllm-7d9f8-abcde", "container": "server"}
    assert got["102"].labels == {**base, "pid": "102", "process_name": "python3",
                                 "container_id": CID2}
    assert got["103"].labels == {**base, "pid": "103",
                                 "process_name": "text-generation-launcher",
                                 "systemd_unit": "tgi.service"}
    assert got["104"].labels == {**base, "pid": "104", "process_name": "python3"}
    assert got["104"].values == {"process_memory_used_bytes": GIB}  # memory kept


def test_a_pod_named_by_the_kubelet_later_is_picked_up_after_the_rescan_interval(
        tmp_path: Path) -> None:
    proc, pods = tmp_path / "proc", tmp_path / "pods"
    fake_proc(proc, 101, f"0::/kubepods/besteffort/pod{UID}/crio-{CID}\n")
    pods.mkdir()
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, processes=[FakeProcess(101, "python3", GIB)])
    probe = GpuProbe(Options(pcie=False, proc_root=str(proc), pod_logs_root=str(pods)),
                     backend=fake, clock=clock, monotonic=clock)
    assert "pod" not in procs(list(probe.sample()))["101"].labels
    (pods / f"team-a_trainer-0_{UID}").mkdir()
    clock.advance(5.0)
    assert "pod" not in procs(list(probe.sample()))["101"].labels  # not rescanned yet
    clock.advance(30.0)
    labels = procs(list(probe.sample()))["101"].labels
    assert (labels["namespace"], labels["pod"], labels["pod_uid"]) == ("team-a", "trainer-0", UID)


def test_process_series_per_gpu_are_bounded_and_the_rest_folded(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    many = [FakeProcess(1000 + k, "python3", (k + 1) * 2**20) for k in range(100)]
    fake = FakeNvml.with_gpus(2, clock=clock, processes=many)
    probe = GpuProbe(Options(pcie=False, max_processes=8, proc_root=str(tmp_path)),
                     backend=fake, clock=clock, monotonic=clock)
    samples = list(probe.sample())
    for gpu in ("0", "1"):
        mine = [s for s in samples if s.labels.get("gpu") == gpu and "pid" in s.labels]
        assert len(mine) == 9
        kept = {s.labels["pid"] for s in mine} - {"other"}
        assert kept == {str(1000 + k) for k in range(92, 100)}  # the eight biggest
        other = next(s for s in mine if s.labels["pid"] == "other")
        assert other.values == {"process_count": 92,
                                "process_memory_used_bytes": sum((k + 1) * 2**20
                                                                 for k in range(92))}
        whole = next(s for s in samples if s.labels.get("gpu") == gpu and "pid" not in s.labels)
        assert whole.values["process_count"] == 100
        assert whole.values["process_memory_used_bytes"] == sum((k + 1) * 2**20
                                                                for k in range(100))
    state = AgentState(clock=clock, interval_seconds=1)
    state.register_probe("gpu")
    state.record_samples("gpu", samples)
    registry = build_registry(state, process_metrics=False)
    name = "ai_bottleneck_gpu_process_memory_used_bytes"
    series = [s for m in registry.collect() if m.name == name for s in m.samples]
    assert len(series) == 2 * 9
    assert registry.get_sample_value("ai_bottleneck_gpu_processes_folded",
                                     {"gpu": "1", "uuid": fake.gpus[1].uuid}) == 92


# -- a real process in a real cgroup ---------------------------------------------------------


def _cgroup_base() -> tuple[Path, str] | None:
    """A cgroup hierarchy this test may write to: (mount point, how /proc shows its lines)."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return root, "0::"  # cgroup v2
    if (root / "pids" / "cgroup.procs").exists():
        return root / "pids", ":pids:"  # cgroup v1: the pids controller
    return None


@contextmanager
def process_in_cgroup(relative: str) -> Iterator[int]:
    """A sleeping process moved into a new cgroup ``relative`` under the hierarchy; both
    removed afterwards, also on failure."""
    found = _cgroup_base()
    if found is None or os.geteuid() != 0:
        pytest.skip("needs root and a writable cgroup hierarchy")
    base, _ = found
    made: list[Path] = []
    path = base
    for part in relative.strip("/").split("/"):
        path = path / part
        if not path.exists():
            path.mkdir()
            made.append(path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (path / "cgroup.procs").write_text(str(child.pid))
        yield child.pid
    finally:
        child.kill()
        child.wait(timeout=10)
        for directory in reversed(made):
            for _ in range(50):  # the kernel frees a cgroup a moment after its last task
                try:
                    directory.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)


@pytest.mark.root
def test_a_real_process_in_a_kubernetes_shaped_cgroup_is_attributed() -> None:
    relative = f"kubepods-aibtest/besteffort/pod{UID}/{CID}"
    with process_in_cgroup(relative) as pid:
        cgroup_text = Path(f"/proc/{pid}/cgroup").read_text()
        assert f"/kubepods-aibtest/besteffort/pod{UID}/{CID}" in cgroup_text
        clock = FakeClock()
        fake = FakeNvml.with_gpus(1, clock=clock, processes=[FakeProcess(pid, "python3", GIB)])
        probe = GpuProbe(Options(pcie=False), backend=fake, clock=clock, monotonic=clock)
        labels = procs(list(probe.sample()))[str(pid)].labels
    assert labels["container_id"] == CID
    assert labels["pod_uid"] == UID


def test_the_report_names_gpu_memory_by_workload(tmp_path: Path) -> None:
    proc, pods = tmp_path / "proc", tmp_path / "log" / "pods"
    fake_proc(proc, 101, f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/"
                         f"cri-containerd-{CID}.scope\n")
    fake_proc(proc, 102, f"0::/system.slice/docker-{CID2}.scope\n")
    pods.mkdir(parents=True)
    (pods / f"inference_vllm-0_{UID}").mkdir()
    clock = FakeClock(synth.T0)
    fake = FakeNvml.with_gpus(2, clock=clock, utilization_percent=50)
    fake.gpus[0].processes = [FakeProcess(101, "python3", 40 * GIB)]
    fake.gpus[1].processes = [FakeProcess(102, "python3", 6 * GIB),
                              FakeProcess(103, "python3", 512 * 2**20)]
    probe = GpuProbe(Options(pcie=False, proc_root=str(proc), pod_logs_root=str(pods)),
                     backend=fake, clock=clock, monotonic=clock)
    samples: list[Sample] = []
    for _ in range(5):
        clock.advance(1.0)
        samples += probe.sample()
    samples += synth.scene(synth.host(cpu=0.2), seconds=5, start=synth.T0 + 1)
    c = classify(Window.from_samples(samples, synth.T0, synth.T0 + 6))
    assert c.summary["gpu_workloads"] == {
        "pod inference/vllm-0 on GPU 0": {"memory_used_bytes": 40 * GIB},
        f"container {CID2[:12]} on GPU 1": {"memory_used_bytes": 6 * GIB},
        "process python3 (pid 103) on GPU 1": {"memory_used_bytes": 512 * 2**20}}
    assert workload_lines(run_figures([synth.window_result(c)])) == [
        "GPU memory by workload (peak)", "  pod inference/vllm-0 on GPU 0: 40 GiB",
        f"  container {CID2[:12]} on GPU 1: 6 GiB", "  process python3 (pid 103) on GPU 1: 512 MiB"]


def test_process_names_fall_back_to_the_host_proc_comm(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_proc(proc, 101, f"0::/system.slice/docker-{CID2}.scope\n")
    (proc / "101" / "comm").write_text("tritonserver\n")
    clock = FakeClock()
    fake = FakeNvml.with_gpus(1, clock=clock, processes=[FakeProcess(101, "x", GIB),
                                                         FakeProcess(102, "y", GIB)])
    fake.remove_functions("nvmlSystemGetProcessName")  # no name from NVML for either
    probe = GpuProbe(Options(pcie=False, proc_root=str(proc)), backend=fake, clock=clock,
                     monotonic=clock)
    got = procs(list(probe.sample()))
    assert got["101"].labels["process_name"] == "tritonserver"
    assert got["102"].labels["process_name"] == "unknown"


def test_pid_namespace_is_read_from_nspid(tmp_path: Path) -> None:
    host, nested, old = tmp_path / "host", tmp_path / "nested", tmp_path / "old"
    host.write_text("Name:\tpython3\nNSpid:\t4242\n")
    nested.write_text("Name:\tpython3\nNSpid:\t4242\t7\n")
    old.write_text("Name:\tpython3\n")  # a kernel before 4.1: unknown, so not trusted
    assert in_host_pid_namespace(str(host))
    assert not in_host_pid_namespace(str(nested))
    assert not in_host_pid_namespace(str(old))
    assert not in_host_pid_namespace(str(tmp_path / "missing"))
