"""The service under diagnosis, against real cgroups the test makes: an idle service on
a host another process saturates reads idle (the host load named); a service that is
itself CPU-starved reads cpu_bound (its processes named)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from ai_bottleneck.classifier import Classification, Label, classify
from ai_bottleneck.probes.base import Sample
from ai_bottleneck.probes.host import HostProbe
from ai_bottleneck.probes.service import Options, ServiceProbe, options_for, process_ticks
from ai_bottleneck.windows import Window
from tests.cgroups import cgroup2_root

PASSES = 6
BURN = "import time\nend = time.time() + 30\nwhile time.time() < end: pass\n"
SLEEP = "import time; time.sleep(30)"


@contextmanager
def cgroup2() -> Iterator[Path]:
    """A cgroup-v2 hierarchy (tests/cgroups.py); needs root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make cgroups")
    with cgroup2_root() as root:
        yield root


@contextmanager
def scene(root: Path, service: int, other: int) -> Iterator[tuple[str, list[int]]]:
    """Cgroups aibtest-<pid>/{service,other}; the service runs ``service`` CPU burners
    (a sleeper when 0), the other cgroup ``other``. All killed and removed afterwards."""
    top = root / f"aibtest-{os.getpid()}"
    groups = {"service": top / "service", "other": top / "other"}
    procs: list[subprocess.Popen[bytes]] = []
    top.mkdir()
    try:
        for g in groups.values():
            g.mkdir()
        for group, count in (("service", service), ("other", other)):
            for _ in range(count or (1 if group == "service" else 0)):
                code = BURN if count else SLEEP
                p = subprocess.Popen([sys.executable, "-c", code])
                procs.append(p)
                (groups[group] / "cgroup.procs").write_text(str(p.pid))
        yield f"{top.name}/service", [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)
        for g in [*groups.values(), top]:
            for _ in range(100):
                with suppress(FileNotFoundError):
                    try:
                        g.rmdir()
                        break
                    except OSError:
                        time.sleep(0.02)


def run(root: Path, cgroup: str) -> Classification:
    service = ServiceProbe(Options(cgroup=cgroup, cgroup_root=str(root)))
    host = HostProbe()
    assert service.check().usable
    samples: list[Sample] = []
    service.sample()
    host.sample()
    start = time.time()
    for _ in range(PASSES):
        time.sleep(1.0)
        samples += service.sample()
        samples += host.sample()
    return classify(Window.from_samples(samples, start, time.time() + 0.001))


@pytest.mark.root
def test_idle_service_on_a_host_busy_with_other_work_reads_idle() -> None:
    cpus = os.cpu_count() or 1
    with cgroup2() as root, scene(root, service=0, other=cpus) as (cgroup, _pids):
        c = run(root, cgroup)
    text = " | ".join(c.evidence)
    assert c.label is Label.IDLE, text
    assert "the host is busy with other work" in text and "CPU outside the service" in text
    assert "python" in text  # the burners are named


@pytest.mark.root
def test_service_starved_of_cpu_reads_cpu_bound_and_names_its_processes() -> None:
    cpus = os.cpu_count() or 1
    with cgroup2() as root, scene(root, service=2 * cpus, other=0) as (cgroup, pids):
        c = run(root, cgroup)
    text = " | ".join(c.evidence)
    assert c.label is Label.CPU_BOUND, text
    assert "top CPU in the window: python" in text and ", service)" in text
    assert any(f"pid {pid}, service" in text for pid in pids)


def test_unconfigured_or_missing_service_is_unusable_with_a_reason(tmp_path: Path) -> None:
    assert "no service named" in ServiceProbe().check().reason
    probe = ServiceProbe(Options(cgroup="system.slice/none.service", cgroup_root=str(tmp_path)))
    assert "no cgroup-v2 directory found" in probe.check().reason
    (sample,) = probe.sample()
    assert not sample.ok and sample.labels == {"service": "system.slice/none.service"}


def test_process_ticks_parses_a_name_with_spaces_and_parentheses(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "stat").write_text(
        "7 (my (odd) name) S 1 7 7 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 0 0\n")
    assert process_ticks(str(tmp_path), 7) == ("my (odd) name", 300)
    assert process_ticks(str(tmp_path), 8) is None


def _window(host_cpu: float, service: dict[str, float] | None) -> Window:
    from tests import synth

    samples = synth.scene(synth.host(cpu=host_cpu))
    for i in range(10):
        if service is not None:
            samples.append(Sample(synth.T0 + i, "service", {"service": "api.service"}, service))
            samples.append(Sample(synth.T0 + i, "service", {
                "service": "api.service", "pid": "900", "process_name": "make",
                "in_service": "0"}, {"process_cpu_cores": 1.9}))
    return Window.from_samples(samples, synth.T0, synth.T0 + 10)


def test_the_rules_judge_the_service_and_keep_the_host_as_context() -> None:
    assert classify(_window(0.97, None)).label is Label.CPU_BOUND  # host-wide, as before
    idle = classify(_window(0.97, {"cpu_utilization_ratio": 0.01,
                                   "cpu_pressure_some_ratio": 0.0}))
    assert idle.label is Label.IDLE
    assert ("the host is busy with other work: 96% CPU outside the service "
            "(make (pid 900) 1.90 cores)") in idle.evidence
    starved = classify(_window(0.97, {"cpu_utilization_ratio": 0.5,
                                      "cpu_pressure_some_ratio": 0.7,
                                      "busiest_thread_core_ratio": 1.0}))
    assert starved.label is Label.CPU_BOUND
    assert any("one thread of service api.service uses 100% of a core" in e
               for e in starved.evidence)


def test_service_flag_means_unit_cgroup_or_process() -> None:
    assert options_for("vllm.service") == {"unit": "vllm.service"}
    assert options_for("system.slice/vllm.service") == {"cgroup": "system.slice/vllm.service"}
    assert options_for("tritonserver") == {"process": "tritonserver"}
    assert options_for("4242") == {"process": "4242"}


@pytest.mark.root
def test_diagnose_service_judges_the_service_in_a_real_cgroup(tmp_path: Path) -> None:
    import json

    from tests.clitool import clean_env, command

    cpus = os.cpu_count() or 1
    with cgroup2() as root, scene(root, service=0, other=cpus) as (cgroup, _pids):
        config = tmp_path / "config.toml"
        # The NIC probe off: other traffic on a shared test machine would read as load.
        config.write_text(f'[probes.service]\ncgroup_root = "{root}"\n'
                          '[probes.iperf3]\nenabled = false\n[probes.nic]\nenabled = false\n')
        out = subprocess.run([*command(), "diagnose", "--duration", "6s", "--window", "3s",
                              "--service", cgroup, "--config", str(config), "--json"],
                             check=False, capture_output=True, text=True, timeout=60,
                             env=clean_env(tmp_path))
    assert out.returncode == 0, out.stderr
    windows = json.loads(out.stdout)["windows"]
    judged = [w for w in windows if any("outside the service" in e for e in w["evidence"])]
    assert judged, windows
    seen = [(w["label"], w["evidence"]) for w in windows]
    assert all(w["label"] == "idle" for w in judged), seen  # host-wide: cpu_bound
