"""The real engine's lab scenarios (tests/lab/engine.py), the parts that need no root: the
agent config they write, the request bodies, the stand-in GPU's reading of /slots, and,
against the real llama.cpp server, the token counts the scenarios are built on."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import httpx
import pytest

from ai_bottleneck.config import load_config
from ai_bottleneck.discovery import discover
from tests.lab.engine import (
    PROMPT_TEXT,
    TOKENS_PER_PROMPT_REPEAT,
    EngineLoad,
    _config,
    engine_scenarios,
    upload_document,
)
from tests.lab.engine_gpu import busy_slots, state_of
from tests.lab.runner import QUICK, scaled
from tests.lab.suite import scenarios_for
from tests.llama_server import llama_server


def test_the_four_scenarios_expect_the_issues_labels_and_scale_like_the_others() -> None:
    scenarios = engine_scenarios(5.0, 5)
    assert {n: [p.expected_label for p in s.phases] for n, s in scenarios.items()} == {
        "engine_balanced": ["balanced"], "engine_gpu_bound": ["gpu_bound"],
        "engine_vram_bound": ["vram_bound"], "engine_network_bound": ["network_bound"]}
    assert set(scenarios) <= set(scenarios_for(QUICK))
    for scenario in scenarios.values():
        assert [p.duration_seconds for p in scaled(scenario, QUICK).phases] == [25.0]
        # The KV cache split between the slots; each phase's requests fit in one slot.
        per_slot = scenario.context // scenario.slots
        load = scenario.phases[0].load
        assert load is not None
        if load.upload_bytes is None:
            assert (load.prompt_repeats + 1) * TOKENS_PER_PROMPT_REPEAT + load.n_predict < (
                per_slot)


@pytest.mark.parametrize("probe_upload", [None, 75_000])
def test_the_agent_config_reads_the_engine_and_times_a_completion(
        tmp_path: Path, probe_upload: int | None) -> None:
    scenario = engine_scenarios(5.0, 5)["engine_gpu_bound"]
    if probe_upload is not None:
        scenario = engine_scenarios(5.0, 5)["engine_network_bound"]
    path = tmp_path / "agent.toml"
    path.write_text(_config(scenario, QUICK, "http://198.18.7.2:8080", tmp_path / "llama.log",
                            "abh1x1", tmp_path), encoding="utf-8")
    config = load_config(path)
    assert set(config.enabled_probes) == {"gpu", "host", "nic", "http", "oom", "engine"}
    assert config.probe_options("engine")["targets"] == ["http://198.18.7.2:8080/metrics"]
    (target,) = config.probe_options("http")["targets"]
    body = Path(target["body_file"]).read_bytes()
    if probe_upload is None:
        assert target["expect_status"] == [200]
        assert json.loads(body)["n_predict"] == 16
    else:
        assert target["expect_status"] == [200, 400]
        assert len(body) == probe_upload
    found = discover(config.probe_option_tables, only=["http", "engine", "oom"],
                     strict_options=True)
    assert sorted(d.name for d in found) == ["engine", "http", "oom"]
    for d in found:
        assert d.probe is not None, d.availability.reason
        d.probe.close()


def test_bodies_are_json_of_the_size_asked() -> None:
    document = upload_document(1_000_000)
    assert len(document) == 1_000_000
    assert json.loads(document)["prompt"].startswith(PROMPT_TEXT)
    one, two = (json.loads(EngineLoad(clients=2, prompt_repeats=5).body(i)) for i in (0, 1))
    assert one["prompt"] != two["prompt"] and one["prompt"].endswith(PROMPT_TEXT * 5)
    assert one["cache_prompt"] is False and one["ignore_eos"] is True


def test_the_stand_in_gpu_is_busy_while_the_slots_are() -> None:
    slot = {"n_ctx": 2048}
    assert busy_slots([{**slot, "is_processing": True}, {**slot, "is_processing": False}]) == (
        1, 2)
    assert busy_slots({"error": "off"}) is None
    history = deque([(0.0, 0, 2), (0.1, 1, 2), (0.2, 2, 2), (0.3, 2, 2)])
    state = state_of(history, pid=1234)
    assert state.utilization_percent == 75  # three of four polls with a slot busy
    assert state.sm_active_percent == 62.5  # (0 + 0.5 + 1 + 1) / 4
    assert state.pid == 1234 and state.busy_slots == 2
    idle = state_of(deque(), pid=1)
    assert (idle.utilization_percent, idle.sm_active_percent) == (0, 0.0)


@pytest.mark.slow
def test_the_long_prompt_fills_most_of_a_slot_in_the_real_tokenizer(tmp_path: Path) -> None:
    """The vram scenario's premise, checked with the real server's tokenizer: its prompt
    and answer fill 88-100% of a 2,048-token slot."""
    scenario = engine_scenarios(5.0, 5)["engine_vram_bound"]
    load = scenario.phases[0].load
    assert load is not None
    prompt = json.loads(load.body(3))["prompt"]
    with llama_server(tmp_path, slots=scenario.slots, context=scenario.context) as server:
        r = httpx.post(server.base_url + "/tokenize", json={"content": prompt,
                                                            "add_special": True}, timeout=10)
    r.raise_for_status()
    tokens = len(r.json()["tokens"])
    per_slot = scenario.context // scenario.slots
    assert 0.85 * per_slot <= tokens, tokens
    assert tokens + load.n_predict <= per_slot, tokens
