"""With no service named, the service is the processes holding GPU memory: the fake NVML
reports processes whose PIDs are real processes in real cgroups the test makes, the
agent hands their PIDs to the service probe, the rules judge those cgroups, and a replay
of the recording labels the same. Without GPU processes in cgroups of their own, the
host is judged as before."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ai_bottleneck.assembly import assemble_replay, build_probes
from ai_bottleneck.config import parse_config
from ai_bottleneck.diagnose import run_diagnose
from ai_bottleneck.probes.base import Sample, SampleFollower
from ai_bottleneck.probes.service import GPU_PROCESSES, Options, ServiceProbe, options_for
from ai_bottleneck.probes.service_cgroups import (
    describe,
    find_container,
    hierarchy,
    own_cgroups,
)
from tests.cgroups import cgroup2_root, made_slice
from tests.fakes.fake_nvml import STATE_ENV, FakeProcess, make_gpus, write_state

GIB = 2**30
BURN = "import time\nend = time.time() + {s}\nwhile time.time() < end: pass\n"
SLEEP = "import time; time.sleep({s})"
CID = "3f4e2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f"


def _proc(root: Path, pid: int, cgroup: str) -> None:
    (root / str(pid)).mkdir(parents=True, exist_ok=True)
    (root / str(pid) / "cgroup").write_text(f"0::{cgroup}\n")


def test_own_cgroups_leave_out_the_root_the_agents_and_nested_ones(tmp_path: Path) -> None:
    _proc(tmp_path, 1, "/system.slice/vllm.service")
    _proc(tmp_path, 2, "/")                                   # the whole host
    _proc(tmp_path, 3, "/user.slice/session-1.scope")         # the agent's own
    _proc(tmp_path, 4, "/kubepods.slice/pod-a.slice")
    _proc(tmp_path, 5, "/kubepods.slice/pod-a.slice/cri-containerd-x.scope")  # nested
    _proc(tmp_path, 6, "/user.slice")                         # holds the agent
    _proc(tmp_path, 8, "/../../system.slice/x.service")       # another cgroup namespace's
    found = own_cgroups(str(tmp_path), [1, 2, 3, 4, 5, 6, 7, 8],  # 7: gone
                        agent_cgroup="/user.slice/session-1.scope")
    assert found == ["/kubepods.slice/pod-a.slice", "/system.slice/vllm.service"]
    assert describe([f"/c{i}" for i in range(6)]) == "/c0, /c1, /c2, /c3 +2 more"


def test_follow_takes_the_gpu_process_pids_of_a_round() -> None:
    probe = ServiceProbe(Options(cgroup_root="/nonexistent"))
    assert isinstance(probe, SampleFollower)
    gpu = [Sample(1.0, "gpu", {"gpu": "0", "pid": "41"}, {"process_memory_used_bytes": 1.0}),
           Sample(1.0, "gpu", {"gpu": "0", "pid": "other"}, {"process_count": 3.0}),
           Sample(1.0, "gpu", {"gpu": "0"}, {"utilization_ratio": 0.1})]
    probe.follow(gpu)
    assert probe._gpu_pids == {41}
    probe.follow([Sample(2.0, "host", {}, {"cpu_utilization_ratio": 0.5})])
    assert probe._gpu_pids == {41}  # no gpu samples in the round: nothing changes
    probe.follow(gpu[2:])
    assert probe._gpu_pids == frozenset()  # the gpu probe saw no process


def test_names_a_container_and_finds_the_v2_tree_of_a_hybrid_layout(tmp_path: Path) -> None:
    assert options_for(CID[:12]) == {"container": CID[:12]}
    assert options_for("4242") == {"process": "4242"}
    unified = tmp_path / "unified"
    scope = unified / "system.slice" / f"docker-{CID}.scope"
    scope.mkdir(parents=True)
    for d in (unified, scope):
        (d / "cgroup.procs").write_text("")
    assert hierarchy(str(tmp_path)) == str(unified)
    assert find_container(str(unified), CID[:12]) == str(scope)
    probe = ServiceProbe(Options(container=CID[:16], cgroup_root=str(tmp_path)))
    assert probe.check().usable and str(scope) in probe.check().reason
    with pytest.raises(ValueError, match="not a container ID"):
        Options(container="xyz")
    with pytest.raises(ValueError, match="name the service one way"):
        Options(unit="a.service", process="python3")


def test_default_mode_gives_no_sample_without_gpu_processes_of_their_own(
        tmp_path: Path) -> None:
    (tmp_path / "cgroup.procs").write_text("")
    probe = ServiceProbe(Options(cgroup_root=str(tmp_path)))
    availability = probe.check()
    assert availability.usable and "processes holding GPU memory" in availability.reason
    assert probe.sample() == []
    probe.follow([Sample(1.0, "gpu", {"gpu": "0", "pid": str(os.getpid())}, {})])
    if (Path("/proc/self/cgroup").read_text().strip().endswith("::/")):
        assert probe.sample() == []  # this process runs in the root cgroup: the host
    off = ServiceProbe(Options(cgroup_root=str(tmp_path), gpu_processes=False))
    assert not off.check().usable and "no service named" in off.check().reason


# -- real cgroups, the real agent path --------------------------------------------------


@contextmanager
def _scene(seconds: float, *, service_burns: int, other_burns: int,
           service_cores: float | None = None) -> Iterator[tuple[Path, str, int]]:
    """A test-made slice with cgroups service/ and other/: the service's GPU process (a
    sleeper, or burners), the other cgroup's burners. Yields (root, service cgroup path,
    GPU pid)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(code: str) -> int:
        p = subprocess.Popen([sys.executable, "-c", code.format(s=seconds)])
        procs.append(p)
        return p.pid
    with cgroup2_root() as root, made_slice(root) as made:
        try:
            gpu_pid = start(BURN if service_burns else SLEEP)
            made.move("service", [gpu_pid] + [start(BURN) for _ in range(service_burns - 1)])
            made.move("other", [start(BURN) for _ in range(other_burns)])
            if service_cores is not None:
                made.limit_cpu("service", service_cores)
            yield root, made.path_of("service"), gpu_pid
        finally:
            for p in procs:
                p.kill()
                p.wait(timeout=10)


def _diagnose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: Path,
              gpu_pid: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """`diagnose` for 6 s in 3 s windows with the fake NVML naming ``gpu_pid``; the
    windows and those of a replay of its recording."""
    state = tmp_path / "gpu.json"
    write_state(state, make_gpus(1, utilization_percent=2, processes=[
        FakeProcess(gpu_pid, "python3", 8 * GIB)]))
    monkeypatch.setenv("AI_BOTTLENECK_NVML_BACKEND", "tests.fakes.fake_nvml:from_env")
    monkeypatch.setenv(STATE_ENV, str(state))
    config = parse_config({
        "agent": {"interval_seconds": 0.5, "window_seconds": 3},
        "probes": {"gpu": {"enabled": True}, "host": {"enabled": True},
                   "service": {"enabled": True, "cgroup_root": str(root)},
                   **{name: {"enabled": False} for name in (
                       "nic", "http", "iperf3", "download", "oom", "engine")}}})
    record = tmp_path / "record.jsonl"
    result = run_diagnose(config, build_probes(config), duration_seconds=6.5,
                          window_seconds=3, record_path=record)
    live = [w.to_json() for w in result.windows]
    replayed = [r.to_json() for r in assemble_replay(record).results]
    return live, replayed


def _steady(windows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The windows after the first (whose first pass has no rates yet)."""
    return windows[1:]


@pytest.mark.root
def test_idle_gpu_process_on_a_busy_host_reads_idle_and_replays_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpus = os.cpu_count() or 1
    with _scene(12, service_burns=0, other_burns=cpus) as (root, cgroup, gpu_pid):
        live, replayed = _diagnose(tmp_path, monkeypatch, root, gpu_pid)
    steady = _steady(live)
    assert steady, live
    for w in steady:
        text = " | ".join(w["evidence"])  # type: ignore[arg-type]
        assert w["raw_label"] == "idle", text
        assert f"service {GPU_PROCESSES} ({cgroup})" in text
        assert "the host is busy with other work" in text
    assert [(w["label"], w["evidence"]) for w in replayed] == \
        [(w["label"], w["evidence"]) for w in live]


@pytest.mark.root
def test_starved_gpu_process_reads_cpu_bound_with_its_pressure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _scene(12, service_burns=2, other_burns=0, service_cores=0.3) as (
            root, cgroup, gpu_pid):
        live, replayed = _diagnose(tmp_path, monkeypatch, root, gpu_pid)
    steady = _steady(live)
    assert steady, live
    for w in steady:
        text = " | ".join(w["evidence"])  # type: ignore[arg-type]
        assert w["raw_label"] == "cpu_bound", text
        assert "CPU pressure" in text and f"service {GPU_PROCESSES} ({cgroup})" in text
        assert f"pid {gpu_pid}, service" in text
    assert [(w["label"], w["evidence"]) for w in replayed] == \
        [(w["label"], w["evidence"]) for w in live]


def test_without_a_gpu_probe_the_default_service_does_not_run(tmp_path: Path) -> None:
    (tmp_path / "cgroup.procs").write_text("")
    off = {name: {"enabled": False} for name in ("nic", "http", "iperf3", "download", "oom",
                                                 "engine")}
    config = parse_config({"probes": {"gpu": {"enabled": False}, "service": {
        "cgroup_root": str(tmp_path)}, **off}})
    probes = build_probes(config)
    try:
        assert "service" not in probes.names
        reason = probes.unavailable["service"]
        assert reason.startswith("no service named") and "but the gpu probe does not run " \
            "here (turned off in the config" in reason, reason
    finally:
        probes.close()
    # A named service needs no GPU probe.
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "cgroup.procs").write_text("")
    config = parse_config({"service": {"cgroup": "api"}, "probes": {
        "gpu": {"enabled": False}, "service": {"cgroup_root": str(tmp_path)}, **off}})
    probes = build_probes(config)
    try:
        assert "service" in probes.names, probes.unavailable
    finally:
        probes.close()


def test_the_service_counts_the_processes_of_the_cgroups_below_it(tmp_path: Path) -> None:
    unit = tmp_path / "system.slice" / "api.service"
    (unit / "worker").mkdir(parents=True)
    (tmp_path / "cgroup.procs").write_text("")
    (unit / "cgroup.procs").write_text(f"{os.getpid()}\n")
    (unit / "worker" / "cgroup.procs").write_text("1\n")
    (unit / "cpu.stat").write_text("usage_usec 1000\n")
    probe = ServiceProbe(Options(unit="api.service", cgroup_root=str(tmp_path),
                                 top_processes=0))
    assert probe.check().usable
    (first, *_rest) = probe.sample()
    assert first.labels == {"service": "api.service"}
    assert first.values["process_count"] == 2.0
