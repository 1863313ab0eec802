"""The config's top-level [service] table, its alias [probes.service], `diagnose
--service` and `run --service`: each names the service one way, the flag over the
config, and a conflict is one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_bottleneck.assembly import build_probes
from ai_bottleneck.config import ConfigError, parse_config
from ai_bottleneck.daemon import Agent
from ai_bottleneck.diagnose import FLAG_OPTIONS, flag_overrides
from tests import clitool

KNOWN = ("gpu", "host", "service")


def _config(raw: dict[str, object]) -> object:
    return parse_config(raw, source="cfg.toml", known_probes=KNOWN)


def test_the_service_table_names_the_service_for_the_probe() -> None:
    config = parse_config({"service": {"unit": "vllm.service"}}, known_probes=KNOWN)
    assert config.probe_options("service") == {"unit": "vllm.service"}
    config = parse_config({"service": {"container": "3f4e2a1b9c8d"},
                           "probes": {"service": {"top_processes": 3}}}, known_probes=KNOWN)
    assert config.probe_options("service") == {"container": "3f4e2a1b9c8d", "top_processes": 3}
    # Said the same way in both tables: no conflict.
    config = parse_config({"service": {"unit": "a.service"},
                           "probes": {"service": {"unit": "a.service", "enabled": True}}},
                          known_probes=KNOWN)
    assert config.probe_options("service") == {"unit": "a.service"}
    assert config.required_probes == ("service",)
    # Without [service], [probes.service] works as it always did.
    config = parse_config({"probes": {"service": {"process": "python3"}}}, known_probes=KNOWN)
    assert config.probe_options("service") == {"process": "python3"}


@pytest.mark.parametrize(("raw", "fragments"), [
    ({"service": {"unit": "a.service"}, "probes": {"service": {"cgroup": "x/y"}}},
     ("cfg.toml: service.unit:", "conflicts with probes.service.cgroup", "one table")),
    ({"service": {"unit": "a.service"}, "probes": {"service": {"unit": "b.service"}}},
     ("cfg.toml: service.unit:", "'a.service' conflicts with probes.service.unit")),
    ({"service": {"unit": "a.service", "process": "python3"}},
     ("cfg.toml: service:", "name the service one way: unit and process")),
    ({"service": {"pid": 4}}, ("cfg.toml: service.pid:", "unknown")),
    ({"service": {"gpu_processes": "yes"}}, ("cfg.toml: service.gpu_processes:",)),
    ({"service": "vllm"}, ("cfg.toml: service:", "expected a table")),
])
def test_a_bad_or_conflicting_service_table_is_one_line(raw: dict[str, object],
                                                        fragments: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        _config(raw)
    text = str(info.value)
    assert "\n" not in text
    for fragment in fragments:
        assert fragment in text, text


def test_check_config_exits_2_on_a_conflict_and_accepts_a_good_table(tmp_path: Path) -> None:
    env = clitool.clean_env(tmp_path)
    good = tmp_path / "good.toml"
    good.write_text('[service]\ncontainer = "3f4e2a1b9c8d"\n')
    proc = clitool.run(["check-config", str(good)], env, tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[service]\nunit = "a.service"\n\n[probes.service]\nprocess = "x"\n')
    clitool.assert_one_line_error(clitool.run(["check-config", str(bad)], env, tmp_path),
                                  "service.unit", "conflicts with probes.service.process")
    bad.write_text('[service]\ncontainer = "not-hex"\n')
    clitool.assert_one_line_error(clitool.run(["check-config", str(bad)], env, tmp_path),
                                  "probes.service", "not a container ID")


def test_the_flag_replaces_the_service_the_config_names(tmp_path: Path) -> None:
    config = parse_config({"service": {"unit": "vllm.service"},
                           "probes": {"service": {"cgroup_root": str(tmp_path)}}})
    probes = build_probes(config, flag_overrides((), (), None, config, "python3-nothere"),
                          origins=FLAG_OPTIONS)
    try:
        # The config's unit is gone (one name, not two), the flag's process is looked for.
        assert "service python3-nothere" in probes.unavailable.get("service", ""), probes
    finally:
        probes.close()


def test_run_takes_service_too(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nlisten = "127.0.0.1:0"\n\n[probes.service]\n'
                   f'cgroup_root = "{tmp_path}"\n')
    agent = Agent(cfg, service="none.service")
    run = agent._build(agent.config)
    try:
        assert run.probes.unavailable["service"].startswith("service none.service:")
    finally:
        run.probes.close()
    help_text = clitool.run(["run", "--help"], clitool.clean_env(tmp_path), tmp_path).stdout
    assert "--service" in help_text


@pytest.mark.root
def test_diagnose_service_finds_a_container_by_its_id_in_real_cgroups(tmp_path: Path) -> None:
    """A real cgroup shaped like a Docker container's scope, two CPU loops in it capped at
    0.3 CPUs: `diagnose --service <ID prefix>` finds it and judges it starved."""
    import json
    import subprocess
    import sys

    from tests.cgroups import cgroup2_root, made_slice
    from tests.fakes.fake_nvml import make_gpus, write_state

    cid = "c0ffee" + "0123456789abcdef" * 3 + "0123456789"
    assert len(cid) == 64
    state, cfg = tmp_path / "gpu.json", tmp_path / "agent.toml"
    write_state(state, make_gpus(1, utilization_percent=1))
    burn = "import time\nend = time.time() + 20\nwhile time.time() < end: pass\n"
    with cgroup2_root() as root, made_slice(root) as made:
        cfg.write_text(f'[agent]\ninterval_seconds = "0.5s"\n\n[probes.service]\n'
                       f'cgroup_root = "{root}"\n\n[probes.nic]\nenabled = false\n')
        loops = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2)]
        try:
            made.move(f"docker-{cid}.scope", [loop.pid for loop in loops])
            made.limit_cpu(f"docker-{cid}.scope", 0.3)
            proc = clitool.run(["diagnose", "--duration", "6s", "--window", "3s", "--json",
                                "--service", cid[:12]],
                               clitool.fake_gpu_env(tmp_path, state, cfg), tmp_path)
        finally:
            for loop in loops:
                loop.kill()
                loop.wait(timeout=10)
    clitool.assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    windows = json.loads(proc.stdout)["windows"]
    texts = [" | ".join(w["evidence"]) for w in windows]
    assert all(f"service {cid[:12]}: CPU" in t for t in texts[1:]), texts
    last = windows[-1]
    assert last["raw_label"] == "cpu_bound", texts[-1]
    assert "CPU pressure: tasks waited for a CPU" in texts[-1]
    assert f"(pid {loops[0].pid}, service)" in texts[-1]
