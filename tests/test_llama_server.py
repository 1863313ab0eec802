"""The engine probe against the real llama.cpp server (tests/llama_server.py) serving a
tiny random model on this CPU: more concurrent requests than slots, so that the
server defers some, read through its real /metrics endpoint."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from ai_bottleneck.probes.base import Sample
from ai_bottleneck.probes.engine import create
from tests import clitool
from tests.fakes.fake_nvml import make_gpus, write_state
from tests.llama_server import llama_server
from tests.netns import netns_link

CLIENTS = 6          # three times the two slots
TOKENS = 1500        # per request; long enough to see requests queue
SCRAPE_EVERY = 0.1
LIMIT_SECONDS = 120  # the whole load, however slow the machine


def _complete(base_url: str) -> int:
    r = httpx.post(base_url + "/completion", timeout=LIMIT_SECONDS, json={
        "prompt": "the model token cache", "n_predict": TOKENS, "ignore_eos": True,
        "cache_prompt": False, "temperature": 1.0})
    r.raise_for_status()
    return int(r.json()["tokens_predicted"])


@pytest.mark.slow
def test_requests_beyond_the_slots_show_as_waiting_in_the_real_metrics(tmp_path: Path) -> None:
    with llama_server(tmp_path, slots=2) as server:
        probe = create({"targets": [server.metrics_url]})
        assert probe.check().usable
        samples: list[Sample] = []
        try:
            samples += probe.sample()  # the baseline, before any request
            with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
                futures = [pool.submit(_complete, server.base_url) for _ in range(CLIENTS)]
                deadline = time.monotonic() + LIMIT_SECONDS
                while (not all(f.done() for f in futures)) and time.monotonic() < deadline:
                    samples += probe.sample()
                    time.sleep(SCRAPE_EVERY)
                predicted = [f.result(timeout=max(1.0, deadline - time.monotonic()))
                             for f in futures]
            samples += probe.sample()
        finally:
            probe.close()
    assert predicted == [TOKENS] * CLIENTS
    assert all(s.ok for s in samples), [s.error for s in samples if not s.ok]
    assert {s.labels["engine"] for s in samples} == {"llamacpp"}
    running = [s.values["requests_running"] for s in samples]
    waiting = [s.values["requests_waiting"] for s in samples]
    assert max(running) == server.slots, running
    assert max(waiting) >= 1, waiting  # deferred: more requests than slots
    assert max(r + w for r, w in zip(running, waiting, strict=True)) <= CLIENTS
    assert samples[0].values["requests_running"] == 0
    # Counters grew by what was generated; the window quantity is time per token.
    first, last = samples[0].values, samples[-1].values
    assert last["generation_tokens_total"] - first["generation_tokens_total"] == (
        TOKENS * CLIENTS)
    per_token = [s.values["inter_token_seconds"] for s in samples
                 if "inter_token_seconds" in s.values]
    assert per_token and all(0 < x < 1 for x in per_token), per_token
    # Builds since mid-2025 export no KV cache gauge: the probe reads /slots instead
    # (probes/engine_slots.py). The 8,192-token context is split between the two slots;
    # each running request holds its prompt and what it has generated so far.
    assert {s.values["kv_cache_capacity_tokens"] for s in samples} == {8192}
    kv = [s.values["kv_cache_usage_ratio"] for s in samples]
    assert kv[0] == 0  # the baseline: nothing running
    held = [u * 8192 / max(s.values["requests_running"], 1) for u, s in zip(
        kv, samples, strict=True)]
    assert all(0 <= h <= TOKENS + 40 for h in held), held  # prompt (<40) + answer per slot
    assert max(kv) > 0.1, kv  # two slots deep into 1,500-token answers at some scrape


@pytest.mark.slow
def test_diagnose_of_a_real_engine_with_requests_beyond_its_slots_on_a_busy_gpu(
        tmp_path: Path) -> None:
    """`diagnose --engine` against the real server kept at three times its slots while
    the (fake) GPU is busy: requests wait for compute, so gpu_bound, with the engine's
    queue in the evidence."""
    config = tmp_path / "config.toml"
    config.write_text("[agent]\ninterval_seconds = 0.5\n", encoding="utf-8")
    state = tmp_path / "nvml.json"
    write_state(state, make_gpus(1, utilization_percent=95, gpm={
        "sm_util": 95, "sm_occupancy": 50, "tensor_util": 40, "dram_bw_util": 30}))
    env = clitool.fake_gpu_env(tmp_path, state, config)
    stop = threading.Event()

    def client(base_url: str) -> int:
        done = 0
        deadline = time.monotonic() + LIMIT_SECONDS
        while not stop.is_set() and time.monotonic() < deadline:
            _complete(base_url)
            done += 1
        return done

    with llama_server(tmp_path, slots=2) as server, \
            concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client, server.base_url) for _ in range(CLIENTS)]
        try:
            proc = clitool.run(["diagnose", "--duration", "8s", "--window", "2s", "--json",
                                "--engine", server.metrics_url], env, tmp_path)
        finally:
            stop.set()
        finished = sum(f.result(timeout=LIMIT_SECONDS) for f in futures)
    clitool.assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    labels = [w["label"] for w in out["windows"]]
    assert finished >= CLIENTS
    assert out["verdict"]["label"] == "gpu_bound", (labels, out["verdict"])
    evidence = "\n".join(e for w in out["windows"] for e in w["evidence"])
    assert "llamacpp at" in evidence and "request(s) waiting on average" in evidence


@pytest.mark.root
@pytest.mark.slow
def test_diagnose_of_a_real_engine_behind_a_thin_link_is_network_bound(tmp_path: Path) -> None:
    """The real server in a network namespace behind a 5 Mbit/s tbf link (the article's
    thin pipe), 1 MB prompts uploaded to it, the (fake) GPU idle: the time is on the
    wire, and the engine, scraped through the same link, says nothing waited."""
    config = tmp_path / "config.toml"
    state = tmp_path / "nvml.json"
    write_state(state, make_gpus(1, utilization_percent=3, gpm={
        "sm_util": 2, "sm_occupancy": 1, "tensor_util": 1, "dram_bw_util": 1}))
    with netns_link(rate_in_bits_per_second=5e6) as link, \
            llama_server(tmp_path, slots=2, link=link) as server:
        # A prompt longer than the context: read whole, tokenized, refused with 400 (the
        # upload is the request; the model never runs).
        prompt = tmp_path / "prompt.json"
        prompt.write_text(json.dumps({"prompt": "the model " * 100_000, "n_predict": 1}),
                          encoding="utf-8")
        config.write_text(
            "[agent]\ninterval_seconds = 0.5\n"
            "[probes.http]\ninterval_seconds = 0.5\n"
            f'targets = [{{ url = "{server.base_url}/completion", method = "POST", '
            f'body_file = "{prompt}", expect_status = [200, 400], timeout_seconds = 8 }}]\n'
            f'[probes.nic]\ninclude = ["{link.host_dev}"]\n', encoding="utf-8")
        env = clitool.fake_gpu_env(tmp_path, state, config)
        proc = clitool.run(["diagnose", "--duration", "8s", "--window", "2s", "--json",
                            "--engine", server.metrics_url], env, tmp_path)
    clitool.assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    labels = [w["label"] for w in out["windows"]]
    assert out["verdict"]["label"] == "network_bound", (labels, out["verdict"])
    assert labels.count("network_bound") >= len(labels) - 1, labels
    engine = [w["summary"].get("engine") for w in out["windows"]]
    assert all(e and next(iter(e.values())).get("requests_waiting") == 0 for e in engine), engine
