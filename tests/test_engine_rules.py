"""The engine rules (agent/engine_rules.py) per rule and boundary, on synthetic windows
in the record vocabulary (tests/synth.py) with engine samples."""

from __future__ import annotations

from typing import Any

import pytest

from ai_bottleneck.classifier import classify
from ai_bottleneck.findings import Classification
from ai_bottleneck.labels import Label
from ai_bottleneck.probes.base import Sample
from ai_bottleneck.thresholds import Thresholds
from tests.synth import H100, T0, Part, gpu, host, http, nic, window_of

QUIET_NIC = nic(rx=1e5, tx=1e5)
FAST = http(total=0.3, upload=0.01, server=0.28, download=0.01)


def engine(*, running: float = 4, waiting: float = 0, kv: float | None = 0.4,
           preemptions_per_second: float = 0, engine_name: str = "vllm",
           capacity: float | None = 16000, **latency: float) -> Part:
    """One vLLM-style scrape per second; latency keys are value names without
    `_seconds` (queue, queue_p95, time_to_first_token_p95, ...)."""
    def part(t: float) -> Sample:
        values: dict[str, float] = {"requests_running": running, "requests_waiting": waiting,
                                    "preemptions_total": 100 + (t - T0) * preemptions_per_second,
                                    "generation_tokens_total": 1000 + (t - T0) * 50}
        if kv is not None:
            values["kv_cache_usage_ratio"] = kv
        if capacity is not None:
            values["kv_cache_capacity_tokens"] = capacity
        values.update({f"{k}_seconds": v for k, v in latency.items()})
        return Sample(t, "engine", {"engine": engine_name,
                                    "target": "http://127.0.0.1:8000/metrics"}, values)
    return part


def run(*parts: Part, thresholds: Thresholds | None = None, **kw: Any) -> Classification:
    return classify(window_of(*parts, **kw), thresholds or Thresholds())


def text(c: Classification) -> str:
    return "\n".join(c.evidence)


# -- the two windows -------------------------------------------------------------

def test_vllm_reserving_90_percent_with_kv_at_40_percent_and_nothing_waiting_is_balanced(
) -> None:
    c = run(gpu(util=0.55, sm=0.45, mem=0.90, name=H100), host(cpu=0.3), QUIET_NIC, FAST,
            engine(running=6, waiting=0, kv=0.40, queue=0.01, compute=0.28))
    assert c.label is Label.BALANCED, text(c)
    assert any("memory" in w for w in c.warnings)  # high reservation stays a warning


def test_kv_at_99_percent_with_12_waiting_and_preemptions_growing_is_vram_bound() -> None:
    c = run(gpu(util=0.97, sm=0.85, mem=0.90, name=H100), host(cpu=0.3), QUIET_NIC,
            http(total=6.0, upload=0.01, server=5.9, download=0.05),
            engine(running=32, waiting=12, kv=0.99, preemptions_per_second=0.5,
                   queue=4.5, queue_p95=7.0, compute=1.5))
    assert c.label is Label.VRAM_BOUND, text(c)
    assert not c.hard and c.confidence < 1.0
    evidence = text(c)
    for needle in ("KV cache 99% used", "12 request(s) waiting", "preempted in this window",
                   "4.5 s on average in the engine's queue"):
        assert needle in evidence, (needle, evidence)
    advice = "\n".join(c.advice)
    # 32 running at 99% of a 16000-token cache: ~495 tokens each, ~32 requests at once.
    assert "holds about 32 requests at once" in advice, advice
    assert "1.4x the cache" in advice and "--kv-cache-dtype fp8" in advice, advice
    assert c.summary["engine"]["http://127.0.0.1:8000/metrics"]["requests_waiting"] == 12


# -- KV rule boundaries ------------------------------------------------------------------

BUSY_GPU = gpu(util=0.97, sm=0.90, mem=0.9, name=H100)


@pytest.mark.parametrize(("kv", "waiting", "preempt", "label"), [
    (0.90, 2, 0, Label.VRAM_BOUND),     # at the threshold, with a queue
    (0.89, 2, 0, Label.GPU_BOUND),      # just under: the queue waits for compute
    (0.95, 0, 0.3, Label.VRAM_BOUND),   # preemptions alone
    (0.99, 0, 0, Label.GPU_BOUND),      # full but nobody waits or is preempted
    (0.99, 0.9, 0, Label.GPU_BOUND),    # under one request waiting on average
])
def test_kv_rule_boundaries(kv: float, waiting: float, preempt: float, label: Label) -> None:
    c = run(BUSY_GPU, host(cpu=0.3), QUIET_NIC, FAST,
            engine(running=8, waiting=waiting, kv=kv, preemptions_per_second=preempt))
    assert c.label is label, text(c)


def test_kv_threshold_is_configurable() -> None:
    parts = (BUSY_GPU, host(cpu=0.3), QUIET_NIC, FAST, engine(running=8, waiting=3, kv=0.85))
    assert run(*parts).label is Label.GPU_BOUND
    assert run(*parts, thresholds=Thresholds(engine_kv_full_ratio=0.8)).label is Label.VRAM_BOUND


# -- queue in front of a busy GPU -----------------------------------------------------------

def test_requests_waiting_on_a_busy_gpu_are_gpu_bound_with_queue_against_compute() -> None:
    c = run(BUSY_GPU, host(cpu=0.3), QUIET_NIC, http(total=3.0, server=2.9, upload=0.01),
            engine(running=16, waiting=5, kv=0.5, queue=1.2, compute=1.8))
    assert c.label is Label.GPU_BOUND, text(c)
    assert "requests wait 1.2 s in the queue for 1.8 s of compute (40%" in text(c)
    assert "room for more requests" in text(c)


def test_requests_waiting_on_an_idle_gpu_are_not_gpu_bound_by_this_rule() -> None:
    c = run(gpu(util=0.5, sm=0.4, name=H100), host(cpu=0.3), QUIET_NIC, FAST,
            engine(running=2, waiting=3, kv=0.3))
    assert c.label is not Label.GPU_BOUND or "waiting on average" not in text(c)


# -- engine idle while clients see slow requests -------------------------------------------

def test_slow_clients_with_an_idle_engine_say_the_time_is_before_the_engine() -> None:
    c = run(gpu(util=0.35, sm=0.30, name=H100), host(cpu=0.2), QUIET_NIC,
            http(total=4.0, server=3.9, upload=0.01),
            engine(running=1, waiting=0, kv=0.05, queue=0.002, compute=0.4))
    assert c.label is Label.UNKNOWN, text(c)
    assert "was idle: nothing waited" in text(c)
    assert "before the engine" in text(c)
    assert "Look in front of the engine" in c.advice[0]


def test_slow_clients_with_network_evidence_stay_network_bound() -> None:
    c = run(gpu(util=0.05, sm=0.03, name=H100), host(cpu=0.2), nic(tx=0.95e9),
            http(total=6.0, upload=5.5, server=0.3, request_bytes=5e6),
            engine(running=1, waiting=0, kv=0.05, queue=0.002, compute=0.3))
    assert c.label is Label.NETWORK_BOUND, text(c)


def test_an_engine_busy_for_as_long_as_the_clients_wait_is_not_idle() -> None:
    c = run(gpu(util=0.5, sm=0.45, name=H100), host(cpu=0.2), QUIET_NIC,
            http(total=4.0, server=3.9, upload=0.01),
            engine(running=1, waiting=0, kv=0.05, queue=0.01, compute=3.8))
    assert "was idle" not in text(c)


# -- LLM objectives -----------------------------------------------------------------------

def test_long_streamed_answers_on_time_are_not_slow() -> None:
    c = run(gpu(util=0.6, sm=0.5, name=H100), host(cpu=0.3), QUIET_NIC,
            http(total=8.0, server=7.9, upload=0.01),
            engine(running=6, waiting=0, kv=0.3, compute=7.8, time_to_first_token_p95=0.4,
                   inter_token_p95=0.03))
    assert c.label is Label.BALANCED, text(c)
    assert "because the answers are long, not slow" in text(c)


@pytest.mark.parametrize(("ttft", "itl", "slow"), [
    (2.0, 0.2, False),    # at both objectives
    (2.01, 0.05, True),   # first token late
    (0.5, 0.21, True),    # pace too slow
])
def test_ttft_and_inter_token_objectives(ttft: float, itl: float, slow: bool) -> None:
    c = run(BUSY_GPU, host(cpu=0.3), QUIET_NIC, FAST,
            engine(running=6, kv=0.3, time_to_first_token_p95=ttft, inter_token_p95=itl))
    assert c.label is Label.GPU_BOUND
    evidence = text(c)
    assert ("> objective" in evidence) is slow, evidence
    assert ("requests still within the objective" in evidence) is not slow, evidence


def test_llm_objectives_are_configurable() -> None:
    parts = (BUSY_GPU, host(cpu=0.3), QUIET_NIC, FAST,
             engine(running=6, kv=0.3, time_to_first_token_p95=0.9))
    assert "> objective" not in text(run(*parts))
    late = run(*parts, thresholds=Thresholds(ttft_objective_seconds=0.5))
    assert "time to first token p95 900 ms > objective 500 ms" in text(late)


def test_engine_absent_changes_nothing() -> None:
    c = run(gpu(util=0.55, sm=0.45, mem=0.9, name=H100), host(cpu=0.3), QUIET_NIC, FAST)
    assert c.label is Label.BALANCED
    assert "engine" not in c.summary


def test_inter_token_time_alone_does_not_vouch_for_queued_requests() -> None:
    """llama.cpp gives no time to first token: with requests waiting, a good pace says
    nothing about how late their first tokens are."""
    c = run(BUSY_GPU, host(cpu=0.3), QUIET_NIC,
            engine(engine_name="llamacpp", running=2, waiting=4, kv=None, capacity=None,
                   inter_token=0.001))
    assert c.label is Label.GPU_BOUND
    assert "within the objective" not in text(c)
    calm = run(BUSY_GPU, host(cpu=0.3), QUIET_NIC,
               engine(engine_name="llamacpp", running=2, waiting=0, kv=None, capacity=None,
                      inter_token=0.001))
    assert "inter-token time mean 1 ms <= 200 ms" in text(calm)
