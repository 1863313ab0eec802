"""The scenario runner's parts that need no root: the agent config it writes, phase
scaling, the timeline kept with a recording, and its CPU accounting."""

from __future__ import annotations

import os
from pathlib import Path

from ai_bottleneck.config import load_config
from ai_bottleneck.discovery import discover
from tests.lab.cpu import CpuMeter
from tests.lab.runner import FULL, QUICK, agent_config, scaled, timeline_from_json
from tests.lab.schedule import build_scenarios
from tests.lab.score import TimedPhase


def test_the_agent_config_is_valid_and_points_every_probe_at_the_lab(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    log = tmp_path / "service.log"
    path.write_text(agent_config(QUICK, infer_url="http://198.18.7.2:8080/infer",
                                 service_log=log, nic="abh1x1"), encoding="utf-8")
    config = load_config(path)
    assert (config.agent.window_seconds, config.agent.interval_seconds) == (5.0, 0.5)
    assert config.thresholds.latency_objective_seconds == QUICK.latency_objective_seconds
    assert set(config.enabled_probes) == {"gpu", "host", "nic", "http", "oom"}
    http = config.probe_options("http")
    assert http["interval_seconds"] == 0.5
    (target,) = http["targets"]
    assert (target["url"], target["method"], target["body_bytes"]) == (
        "http://198.18.7.2:8080/infer", "POST", QUICK.probe_body_bytes)
    assert config.probe_options("oom")["files"] == [str(log)]
    assert config.probe_options("nic")["include"] == ["abh1x1"]
    # Every probe accepts its options (strict: a wrong key or value raises).
    found = discover(config.probe_option_tables, only=["http", "nic", "oom"],
                     strict_options=True)
    assert sorted(d.name for d in found) == ["http", "nic", "oom"]
    for d in found:
        assert d.probe is not None, d.availability.reason
        d.probe.close()


def test_a_scenario_adds_its_tables_iperf3_peer_and_own_call(tmp_path: Path) -> None:
    scenarios = build_scenarios(QUICK.window_seconds, QUICK.windows_per_phase)
    path = tmp_path / "agent.toml"
    path.write_text(agent_config(QUICK, infer_url="http://198.18.7.2:8080/infer",
                                 service_log=tmp_path / "service.log", nic="abh1x1",
                                 scenario=scenarios["purchased_rate"]), encoding="utf-8")
    config = load_config(path)
    assert config.probe_option_tables["nic"]["links"] == {
        "nics": {"abh1x1": {"bits_per_second": "20Mbit"}}}
    (target,) = config.probe_options("http")["targets"]
    assert target["body_bytes"] == 2_000
    path.write_text(agent_config(QUICK, infer_url="http://198.18.7.2:8080/infer",
                                 service_log=tmp_path / "service.log", nic="abh1x1",
                                 scenario=scenarios["internal_hop"],
                                 iperf3_target="198.18.7.2:5299"), encoding="utf-8")
    config = load_config(path)
    assert config.probe_options("iperf3")["targets"] == ["198.18.7.2:5299"]
    (d,) = discover(config.probe_option_tables, only=["iperf3"], strict_options=True)
    assert d.probe is not None, d.availability.reason
    d.probe.close()


def test_phases_scale_to_the_settings_and_the_timeline_round_trips() -> None:
    scenario = scaled(build_scenarios(7.0, 2)["transitions"], FULL)
    assert [p.duration_seconds for p in scenario.phases] == [120.0] * 4
    timeline = scenario.timeline(1000.0)
    document = {"phases": [{"name": p.name, "label": p.label, "start": p.start, "end": p.end}
                           for p in timeline]}
    assert timeline_from_json(document) == timeline
    assert timeline[-1] == TimedPhase("idle_again", "idle", 1360.0, 1480.0)


def test_cpu_meter_counts_this_process_alone() -> None:
    meter = CpuMeter({"load_generator": os.getpid()})
    deadline = os.times().elapsed + 0.3
    while os.times().elapsed < deadline:  # burn about 0.3 s of one core
        sum(range(1000))
    shares = meter.shares()
    assert set(shares) == {"host", "load_generator", "other"}
    assert 0 < shares["load_generator"] <= shares["host"] + 0.05
    assert shares["other"] >= 0
