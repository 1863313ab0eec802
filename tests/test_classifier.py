"""Table-driven classifier tests: one case per rule and per boundary, and the
article's scenarios, each written as one window's steady readings."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import pytest

from ai_bottleneck.classifier import RULES, classify
from ai_bottleneck.findings import Classification
from ai_bottleneck.labels import Label
from ai_bottleneck.probes.options import OptionError, parse_options
from ai_bottleneck.thresholds import Thresholds
from tests.synth import (
    A100,
    H100,
    T0,
    Part,
    gpu,
    gpu_failure,
    gpu_sample,
    host,
    http,
    http_down,
    http_failure,
    nic,
    oom,
    tcp,
    throughput_sample,
    window_of,
)

NO_GPU = {"gpu": "no NVIDIA driver: libnvidia-ml.so.1 not found"}
RTX = "NVIDIA GeForce RTX 4090"


class Case(NamedTuple):
    parts: tuple[Part, ...]
    label: Label
    evidence: tuple[str, ...]   # substrings that must appear in the evidence
    kwargs: dict[str, Any]      # window_of() extras: unavailable, expected, extra


def case(*parts: Part, label: Label, evidence: tuple[str, ...] = (), **kw: Any) -> Case:
    return Case(parts, label, evidence, kw)


QUIET_HOST = host(cpu=0.10, busiest=0.2)
QUIET_NIC = nic(rx=1e5, tx=1e5)
FAST = http(total=0.2, upload=0.01, server=0.18, download=0.01)

CASES: dict[str, Case] = {
    # -- vram_bound ----------------------------------------------------------------
    "oom overrides everything": case(
        gpu(util=1.0, sm=0.95), host(cpu=0.97, psi=0.8), nic(tx=0.99e9),
        http(total=9.0, upload=8.5, server=0.4, request_bytes=5e6), oom(events=1),
        label=Label.VRAM_BOUND, evidence=("10 out-of-memory event(s)", "kernel")),
    "model load failure": case(
        gpu(util=0.0, mem=0.6), QUIET_HOST, QUIET_NIC, oom(load_failures=1),
        label=Label.VRAM_BOUND, evidence=("model-load failure",)),
    "OOM counter grows on the GPU": case(
        gpu(util=0.4, oom_total=2.0), QUIET_HOST, label=Label.VRAM_BOUND,
        evidence=("1 out-of-memory event(s)", "GPU 0"),
        extra=[gpu_sample(T0 + 9.5, util=0.4, oom_total=3.0)]),
    "memory full with server errors": case(
        gpu(util=0.3, mem=0.97), QUIET_HOST, QUIET_NIC, FAST,
        http_down(error="HTTP 500", status=500.0),
        label=Label.VRAM_BOUND, evidence=("memory 97% used", "5xx")),
    "memory merely high is a warning, not vram_bound": case(
        gpu(util=0.5, sm=0.45, mem=0.97), host(cpu=0.3), QUIET_NIC, FAST,
        label=Label.BALANCED),
    # -- unknown: probes missing or failing, service down --------------------------------
    "every HTTP call failed: the service is down, not idle": case(
        gpu(util=0.0, mem=0.01), QUIET_HOST, QUIET_NIC, http_down(error="connection refused"),
        label=Label.UNKNOWN, evidence=("every call", "connection refused")),
    "nothing measured": case(
        lambda t: gpu_failure(t, None, "NVML Shared Library Not Found"),
        label=Label.UNKNOWN, evidence=("no GPU, host, NIC or HTTP measurement",),
        expected=("host", "nic")),
    "GPU probe failing on a GPU host": case(
        lambda t: gpu_failure(t, 0, "GPU is lost"), QUIET_HOST, QUIET_NIC,
        label=Label.UNKNOWN, evidence=("gpu failing", "GPU is lost")),
    "GPU probe missing from the window": case(
        QUIET_HOST, QUIET_NIC, label=Label.UNKNOWN, evidence=("gpu missing",),
        expected=("gpu",)),
    # -- network_bound -------------------------------------------------------------
    "upload dominates slow requests, GPU 18%": case(
        gpu(util=0.18), QUIET_HOST, nic(rx=5e6),
        http(total=4.2, upload=3.9, server=0.25, download=0.05, request_bytes=5e6),
        label=Label.NETWORK_BOUND,
        evidence=("GPU 0", "18% (< 30%)", "p95 request 4.2 s", "upload 3.9 s")),
    "upload dominates slow requests, GPU 31%: phases still decide": case(
        gpu(util=0.31), QUIET_HOST, nic(rx=5e6),
        http(total=4.2, upload=3.9, server=0.25, download=0.05, request_bytes=5e6),
        label=Label.NETWORK_BOUND, evidence=("network is 94% of request time",
                                            "31%: not under-used")),
    "GPU 29%, NIC saturated, slow (no phases)": case(
        gpu(util=0.29), QUIET_HOST, nic(tx=0.94e9), http(total=3.0),
        label=Label.NETWORK_BOUND, evidence=("eth0 tx at 94% of 1 Gbit/s", "29% (< 30%)")),
    "GPU 31%, NIC saturated, slow (no phases)": case(
        gpu(util=0.31), QUIET_HOST, nic(tx=0.94e9), http(total=3.0),
        label=Label.UNKNOWN, evidence=("not under-used",)),
    "retransmits while slow and GPU idle": case(
        gpu(util=0.1), QUIET_HOST, QUIET_NIC, tcp(0.05), http(total=2.5),
        label=Label.NETWORK_BOUND, evidence=("TCP retransmits 5.0%",)),
    "internal link measured far under 1 Gbit/s": case(
        gpu(util=0.1), QUIET_HOST, QUIET_NIC, http(total=3.0),
        label=Label.NETWORK_BOUND, evidence=("iperf3 10.0.0.2: 200 Mbit/s",),
        extra=[throughput_sample(T0 + 2, "iperf3", "10.0.0.2", 2e8)]),
    "no HTTP target, NIC full, GPU waiting": case(
        gpu(util=0.15, mem=0.5), QUIET_HOST, nic(rx=0.97e9),
        label=Label.NETWORK_BOUND, evidence=("eth0 rx at 97%", "network input")),
    "low GPU and slow without network evidence is not network_bound": case(
        gpu(util=0.1), host(cpu=0.2), QUIET_NIC,
        http(total=2.5, upload=0.02, server=2.4, download=0.02),
        label=Label.UNKNOWN, evidence=("no positive network evidence",)),
    # -- gpu_bound -----------------------------------------------------------------
    "GPM SM activity at 80%": case(
        gpu(util=1.0, sm=0.80), host(cpu=0.3), label=Label.GPU_BOUND,
        evidence=("SM activity 80% (>= 80%)",)),
    "GPM SM activity at 79%": case(gpu(util=1.0, sm=0.79), host(cpu=0.3), label=Label.BALANCED),
    "coarse utilization at 80%": case(
        gpu(util=0.80), host(cpu=0.3), label=Label.GPU_BOUND,
        evidence=("utilization (coarse) 80%",)),
    "coarse utilization at 79%": case(gpu(util=0.79), host(cpu=0.3), label=Label.BALANCED),
    "memory-bound GPU (DRAM busy, SMs partly)": case(
        gpu(util=1.0, sm=0.55, dram=0.85), host(cpu=0.3), label=Label.GPU_BOUND,
        evidence=("memory-bandwidth activity 85%",)),
    "utilization 100% but SMs 5%: tiny kernels, not saturated": case(
        gpu(util=1.0, sm=0.05), host(cpu=0.3), label=Label.BALANCED),
    "requests answered 'too busy' while the GPU is saturated": case(
        gpu(util=1.0, sm=0.9), host(cpu=0.3), http_down(error="HTTP 503", status=503.0),
        label=Label.GPU_BOUND, evidence=("answered 'too busy'",)),
    "objective just met": case(
        gpu(util=0.5), host(cpu=0.3), QUIET_NIC,
        http(total=1.0, upload=0.02, server=0.95, download=0.02), label=Label.BALANCED,
        evidence=("p95 request 1 s <= objective 1 s",)),
    "objective just missed": case(
        gpu(util=0.5), host(cpu=0.3), QUIET_NIC,
        http(total=1.01, upload=0.02, server=0.96, download=0.02), label=Label.GPU_BOUND,
        evidence=("p95 request 1.01 s > objective 1 s", "server time 95%")),
    "failed calls past 10% miss the objective": case(
        gpu(util=1.0, sm=0.9), host(cpu=0.3), FAST, label=Label.GPU_BOUND,
        evidence=("2 of 12 calls failed",),
        extra=[http_failure(T0 + 3.5, error="timed out"), http_failure(T0 + 6.5,
                                                                      error="timed out")]),
    # -- cpu_bound -----------------------------------------------------------------
    "CPU pressure at 40%": case(
        gpu(util=0.1), host(cpu=0.5, busiest=0.6, psi=0.40), QUIET_NIC,
        http(total=2.0, upload=0.02, server=1.9, download=0.02),
        label=Label.CPU_BOUND, evidence=("PSI some, >= 40%",)),
    "CPU pressure at 39%": case(
        gpu(util=0.1), host(cpu=0.5, busiest=0.6, psi=0.39), QUIET_NIC,
        http(total=2.0, upload=0.02, server=1.9, download=0.02), label=Label.UNKNOWN),
    "one core pinned": case(
        gpu(util=0.2), host(cpu=0.1, busiest=0.99), QUIET_NIC,
        http(total=2.0, upload=0.02, server=1.9, download=0.02),
        label=Label.CPU_BOUND, evidence=("busiest core 99%", "one core is pinned")),
    # -- balanced and idle ---------------------------------------------------------
    "served within the objective, nothing saturated": case(
        gpu(util=0.5, sm=0.4), host(cpu=0.3), nic(tx=2e8), FAST, label=Label.BALANCED),
    "idle": case(gpu(util=0.0, mem=0.01), QUIET_HOST, QUIET_NIC, FAST, label=Label.IDLE,
                 evidence=("CPU 10% (< 20%)",)),
    "CPU at 19% is still idle": case(
        gpu(util=0.0), host(cpu=0.19, busiest=0.3), QUIET_NIC, label=Label.IDLE),
    "CPU at 21% is load": case(
        gpu(util=0.0), host(cpu=0.21, busiest=0.3), QUIET_NIC, label=Label.BALANCED),
    "GPU at 5% is load": case(gpu(util=0.05), QUIET_HOST, QUIET_NIC, label=Label.BALANCED),
    "one of four GPUs saturated": case(
        gpu(0, util=0.02, sm=0.01), gpu(1, util=0.02, sm=0.01), gpu(2, util=1.0, sm=0.9),
        gpu(3, util=0.02, sm=0.01), host(cpu=0.3), label=Label.GPU_BOUND,
        evidence=("GPU 2", "SM activity 90%")),
    "four GPUs waiting on a full link": case(
        *(gpu(i, util=0.1, sm=0.05) for i in range(4)), QUIET_HOST, nic(rx=0.95e9),
        http(total=3.0), label=Label.NETWORK_BOUND,
        evidence=("SM activity 5% (< 30%) on every GPU", "eth0 rx at 95%")),
    "no GPU on this host and nothing running": case(
        QUIET_HOST, QUIET_NIC, label=Label.IDLE, unavailable=NO_GPU),
    # -- the article's scenarios ---------------------------------------------------
    "article: single-user Stable Diffusion": case(
        gpu(util=0.98, mem=0.45, total=24e9, name=RTX), host(cpu=0.15), QUIET_NIC,
        http(total=4.5, upload=0.01, server=4.4, download=0.06, response_bytes=1.5e6,
             concurrency=1.0),
        label=Label.GPU_BOUND, evidence=("RTX 4090", "server time 98%")),
    "article: public OCR API, 10 concurrent 5 MB uploads at 5 Mbit/s": case(
        gpu(util=0.04, mem=0.3, total=80 * 2**30, name=A100), QUIET_HOST,
        nic(rx=5e6, tx=1e5, link=1e9),
        http(total=80.5, upload=80.0, server=0.4, download=0.05, request_bytes=5e6,
             concurrency=10.0),
        label=Label.NETWORK_BOUND,
        evidence=("resource mismatch", "A100", "80 GiB", "4% busy", "5 Mbit/s")),
    "article: fine-tuning a 7B model": case(
        gpu(util=1.0, sm=0.93, mem=0.88, name=H100), host(cpu=0.35), nic(rx=2e8),
        label=Label.GPU_BOUND, evidence=("SM activity 93%",)),
    "fine-tuning starved by its data loader": case(
        gpu(util=0.35, sm=0.2, mem=0.7, name=H100), host(cpu=0.97, busiest=1.0, psi=0.6),
        nic(rx=1e7), label=Label.CPU_BOUND, evidence=("SM activity 20%", "CPU 97% busy")),
    "article: CPU-only XGBoost host under load": case(
        host(cpu=0.96, psi=0.55), QUIET_NIC,
        http(total=1.6, upload=0.01, server=1.55, download=0.01),
        label=Label.CPU_BOUND, evidence=("no GPU data on this host",), unavailable=NO_GPU),
    "article: CPU-only XGBoost host, comfortable": case(
        host(cpu=0.3), QUIET_NIC, FAST, label=Label.BALANCED, unavailable=NO_GPU),
}


def run(c: Case, thresholds: Thresholds | None = None) -> Classification:
    return classify(window_of(*c.parts, **c.kwargs), thresholds or Thresholds())


@pytest.mark.parametrize("name", list(CASES))
def test_case(name: str) -> None:
    c = CASES[name]
    result = run(c)
    text = "\n".join(result.evidence)
    assert result.label is c.label, f"{name}: got {result.label}\n{text}"
    for needle in c.evidence:
        assert needle in text, f"{name}: {needle!r} not in evidence:\n{text}"
    assert result.evidence, "every label says why"
    assert result.advice, "every label says what to do"
    if c.label is Label.UNKNOWN:
        assert result.confidence == 0.0
    else:
        assert 0.0 < result.confidence <= 1.0


def test_every_label_is_reached_by_some_case() -> None:
    assert {c.label for c in CASES.values()} == set(Label)


def test_hard_evidence_is_flagged_and_certain() -> None:
    hard = run(CASES["oom overrides everything"])
    assert hard.hard
    assert hard.confidence == 1.0
    soft = run(CASES["memory full with server errors"])
    assert not soft.hard
    assert soft.confidence < 0.8


def test_high_memory_warns_without_changing_the_label() -> None:
    result = run(CASES["memory merely high is a warning, not vram_bound"])
    assert any("pre-reserve" in w for w in result.warnings)


def test_a_second_target_that_is_down_is_reported_while_the_first_decides() -> None:
    result = run(case(gpu(util=0.5, sm=0.4), host(cpu=0.3), FAST,
                      http_down("http://other.test/health", error="connection refused"),
                      label=Label.BALANCED))
    assert result.label is Label.BALANCED
    assert any("every call to http://other.test/health failed" in w for w in result.warnings)


@pytest.mark.parametrize(("slowdown", "full", "warned"), [
    ("sw_thermal_slowdown", False, True),   # flags only
    ("sw_thermal_slowdown", True, True),    # flags and the NVML bitmask
    ("hw_slowdown", True, True),
    ("gpu_idle", True, False),              # idle clocks are not a slowdown
    (None, True, False),
])
def test_clock_slowdowns_are_warned(slowdown: str | None, full: bool, warned: bool) -> None:
    result = run(case(gpu(util=0.9, sm=0.85, slowdown=slowdown, full=full), host(cpu=0.3),
                      label=Label.GPU_BOUND))
    assert any("clocks held back" in w for w in result.warnings) is warned
    if warned:
        assert any(f"clocks held back by {slowdown} 100%" in w for w in result.warnings)


def test_a_gpu_that_cannot_be_read_lowers_confidence_in_quiet_labels() -> None:
    parts = (gpu(0, util=0.0), QUIET_HOST, QUIET_NIC)
    whole = run(case(*parts, label=Label.IDLE))
    lost = run(case(*parts, lambda t: gpu_failure(t, 1, "GPU is lost"), label=Label.IDLE))
    assert whole.label is lost.label is Label.IDLE
    assert lost.confidence < whole.confidence
    assert "GPU 1: GPU is lost" in lost.warnings
    assert "confidence lowered: a GPU could not be read" in lost.evidence


def test_tiny_kernels_are_named() -> None:
    result = run(CASES["utilization 100% but SMs 5%: tiny kernels, not saturated"])
    assert any("SM activity only 5%" in w and "not saturated" in w for w in result.warnings)


def test_coarse_only_gpu_data_is_said_and_lowers_confidence() -> None:
    coarse = run(case(gpu(util=0.95), host(cpu=0.3), label=Label.GPU_BOUND))
    fine = run(case(gpu(util=0.95, sm=0.95), host(cpu=0.3), label=Label.GPU_BOUND))
    assert any("coarse utilization only" in w for w in coarse.warnings)
    assert not any("coarse utilization only" in w for w in fine.warnings)
    assert coarse.confidence < fine.confidence


def test_more_agreeing_signals_give_more_confidence() -> None:
    saturated_only = run(case(gpu(util=0.95, sm=0.9), host(cpu=0.3), FAST,
                              label=Label.GPU_BOUND))
    and_slow = run(case(gpu(util=0.95, sm=0.9), host(cpu=0.3),
                        http(total=3.0, upload=0.01, server=2.9, download=0.01),
                        label=Label.GPU_BOUND))
    assert saturated_only.label is and_slow.label is Label.GPU_BOUND
    assert and_slow.confidence > saturated_only.confidence
    assert any("within the objective" in e for e in saturated_only.evidence)


def test_network_advice_gives_the_bandwidth_the_objective_needs() -> None:
    result = run(CASES["article: public OCR API, 10 concurrent 5 MB uploads at 5 Mbit/s"])
    advice = "\n".join(result.advice)
    # 5 MB in the 0.6 s the objective leaves after 0.4 s of server time: 66.7 Mbit/s each.
    assert "at least 66.7 Mbit/s per request (667 Mbit/s for 10 at once)" in advice
    assert "about 5 Mbit/s in all" in advice
    assert "Resource mismatch" in advice


def test_mismatch_is_named_only_where_a_thin_link_was_measured() -> None:
    ocr = run(CASES["article: public OCR API, 10 concurrent 5 MB uploads at 5 Mbit/s"])
    lossy = run(CASES["retransmits while slow and GPU idle"])
    assert ocr.label is lossy.label is Label.NETWORK_BOUND
    assert any("Resource mismatch" in a for a in ocr.advice)
    assert not any("mismatch" in e for e in lossy.evidence)
    assert not any("mismatch" in a for a in lossy.advice)


def test_thresholds_are_configurable() -> None:
    c = CASES["GPU 31%, NIC saturated, slow (no phases)"]
    assert run(c).label is Label.UNKNOWN
    looser = Thresholds(gpu_low_utilization_ratio=0.35)
    assert run(c, looser).label is Label.NETWORK_BOUND
    sd = CASES["article: single-user Stable Diffusion"]
    assert run(sd, Thresholds(latency_objective_seconds=10.0)).label is Label.GPU_BOUND
    assert "objective" in "\n".join(run(sd, Thresholds(latency_objective_seconds=10.0)).evidence)


def test_the_classifier_is_a_pure_function() -> None:
    w = window_of(*CASES["upload dominates slow requests, GPU 18%"].parts)
    assert classify(w) == classify(w)


def test_rules_are_named_in_order() -> None:
    names = [name for name, _ in RULES]
    assert names[0].startswith("out-of-memory")
    assert names[-1].endswith("idle")


def test_thresholds_parse_from_config_and_check_their_order() -> None:
    th = parse_options(Thresholds, {"gpu_low_utilization_ratio": "25%",
                                    "latency_objective_seconds": "500ms",
                                    "public_bandwidth_min_bits_per_second": "100mbit"})
    assert (th.gpu_low_utilization_ratio, th.latency_objective_seconds,
            th.public_bandwidth_min_bits_per_second) == (0.25, 0.5, 100e6)
    with pytest.raises(OptionError, match="gpu_low_utilization_ratio must be <"):
        parse_options(Thresholds, {"gpu_low_utilization_ratio": 0.9})
    with pytest.raises(OptionError, match="vram_high_ratio"):
        parse_options(Thresholds, {"vram_high_ratio": 1.5})


def test_every_threshold_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "classifier.md").read_text()
    for f in dataclasses.fields(Thresholds):
        assert f"`{f.name}`" in doc, f"{f.name} missing from docs/classifier.md"
