"""The lab's shared-host scenarios: their definition, the agent config the runner writes
for them, and the placement on real cgroups (the service and its children moved into a
test-made cgroup, other work in another, a CPU cap that holds), undone afterwards. The
scenarios themselves are played, scored and kept in the corpus like every other
(tests/test_lab_scenarios.py, tests/test_lab_corpus.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ai_bottleneck.config import load_config
from tests.lab.placement import Placement, placed
from tests.lab.runner import QUICK, agent_config
from tests.lab.schedule import SHARED_HOST_SCENARIOS, build_scenarios

PARENT = ("import subprocess, sys, time\n"
          "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
          "time.sleep(30)\n")


def _cgroup(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


def test_the_shared_host_scenarios_and_their_agent_config(tmp_path: Path) -> None:
    scenarios = build_scenarios(QUICK.window_seconds, QUICK.windows_per_phase)
    idle, starved = (scenarios[n] for n in SHARED_HOST_SCENARIOS)
    assert [p.expected_label for p in idle.phases] == ["idle"]
    assert idle.placement == Placement(other_burners=-1) and idle.phases[0].load is None
    assert [p.expected_label for p in starved.phases] == ["cpu_bound"]
    assert starved.placement is not None and starved.placement.service_cores == 0.3
    path = tmp_path / "agent.toml"
    path.write_text(agent_config(QUICK, infer_url="http://198.18.7.2:8080/infer",
                                 service_log=tmp_path / "log", nic="abh1x1", scenario=idle,
                                 cgroup_root=Path("/sys/fs/cgroup")), encoding="utf-8")
    config = load_config(path)
    # Nothing names the service: the agent takes the GPU process's cgroup.
    assert config.probe_options("service") == {"cgroup_root": "/sys/fs/cgroup"}
    assert "service" in config.required_probes
    plain = tmp_path / "plain.toml"
    plain.write_text(agent_config(QUICK, infer_url="http://198.18.7.2:8080/infer",
                                  service_log=tmp_path / "log", nic="abh1x1"), encoding="utf-8")
    assert "service" not in load_config(plain).enabled_probes  # the other scenarios: as before


@pytest.mark.root
def test_placement_moves_the_service_caps_it_and_undoes_everything() -> None:
    service = subprocess.Popen([sys.executable, "-c", PARENT])
    try:
        deadline = time.monotonic() + 10
        while not psutil.Process(service.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        (child,) = psutil.Process(service.pid).children()
        with placed(Placement(service_cores=0.3, other_burners=1), service.pid,
                    seconds=20) as where:
            assert where.cgroup_root is not None
            assert _cgroup(service.pid) == _cgroup(child.pid) == where.service_cgroup
            assert where.service_cgroup.endswith(f"aiblab-{os.getpid()}.slice/service")
            (burner,) = where.processes.values()
            assert _cgroup(burner).endswith("/other")
            assert where.cap in ("cpu.max", "v1 cfs quota")
            # The cap holds: a loop started in the service's cgroup gets about 0.3 CPUs.
            loop = subprocess.Popen([sys.executable, "-c",
                                     "import time\nend = time.time() + 3\n"
                                     "while time.time() < end: pass\n"])
            try:
                slice_dir = Path(f"{where.cgroup_root}{where.service_cgroup}")
                (slice_dir / "cgroup.procs").write_text(str(loop.pid))
                twin = Path(f"/sys/fs/cgroup/cpu/aiblab-{os.getpid()}.slice-service")
                if twin.exists():
                    (twin / "cgroup.procs").write_text(str(loop.pid))
                start = psutil.Process(loop.pid).cpu_times()
                time.sleep(2.0)
                end = psutil.Process(loop.pid).cpu_times()
            finally:
                loop.kill()
                loop.wait(timeout=10)
            cores = (end.user + end.system - start.user - start.system) / 2.0
            assert cores < 0.45, cores
        assert "aiblab-" not in _cgroup(service.pid)  # moved back out; the cgroups are gone
        assert not Path(f"{where.cgroup_root}{where.service_cgroup}").exists()
        assert not psutil.pid_exists(burner) or psutil.Process(burner).status() == "zombie"
    finally:
        for p in psutil.Process(service.pid).children(recursive=True):
            p.kill()
        service.kill()
        service.wait(timeout=10)
