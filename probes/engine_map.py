"""Each model server's own metric names, mapped onto the engine probe's vocabulary.

Where an engine renamed a series between versions, the names are listed newest
first and the first one present is read (vLLM's ``kv_cache_usage_perc`` was
``gpu_cache_usage_perc``; its ``inter_token_latency_seconds`` was
``time_per_output_token_seconds``). Names, types and units are those of each
engine's documentation and sources (docs/probes.md, "engine", cites them). A
series the server does not export gives no value: never a zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ai_bottleneck.probes.vocabulary import (
    ENGINE_COMPLETED_TOTAL,
    ENGINE_GENERATION_TOKENS_TOTAL,
    ENGINE_KV_CAPACITY,
    ENGINE_KV_USAGE,
    ENGINE_PREEMPTIONS_TOTAL,
    ENGINE_PROMPT_TOKENS_TOTAL,
    ENGINE_RUNNING,
    ENGINE_WAITING,
    EngineTiming,
)

Engine = Literal["vllm", "sglang", "tgi", "triton", "llamacpp"]
ENGINES: tuple[Engine, ...] = ("vllm", "sglang", "tgi", "triton", "llamacpp")


@dataclass(frozen=True)
class Ratio:
    """A per-request (or per-token) mean from two counters' growth:
    scale x increase(numerator) / increase(denominator)."""

    numerator: tuple[str, ...]
    denominator: tuple[str, ...]
    scale: float = 1.0


@dataclass(frozen=True)
class EngineSpec:
    engine: Engine
    #: Sample names start with this (detection).
    prefix: str
    #: Gauges summed over label sets (several models or engine replicas on one endpoint).
    summed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Gauges where the fullest label set counts (one full KV cache stalls its requests).
    maximum: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Counters, read as their value; windows take the growth.
    counters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Histograms in seconds: base -> names; gives <base>_seconds (mean) and
    #: <base>_p95_seconds from the buckets observed since the previous scrape.
    histograms: dict[EngineTiming, tuple[str, ...]] = field(default_factory=dict)
    #: Histograms whose _sum is a counter worth keeping (tokens per request).
    histogram_sums: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Means from two counters: base -> Ratio; gives <base>_seconds.
    ratios: dict[EngineTiming, Ratio] = field(default_factory=dict)


SPECS: dict[Engine, EngineSpec] = {
    # vLLM (vllm/v1/metrics/loggers.py; V0 vllm/engine/metrics.py): labels model_name,
    # and engine on V1. kv_cache_usage_perc is a ratio 0..1 despite its name.
    "vllm": EngineSpec(
        "vllm", "vllm:",
        summed={ENGINE_RUNNING: ("vllm:num_requests_running",),
                ENGINE_WAITING: ("vllm:num_requests_waiting",)},
        maximum={ENGINE_KV_USAGE: ("vllm:kv_cache_usage_perc",
                                          "vllm:gpu_cache_usage_perc")},
        counters={ENGINE_PREEMPTIONS_TOTAL: ("vllm:num_preemptions_total",),
                  ENGINE_PROMPT_TOKENS_TOTAL: ("vllm:prompt_tokens_total",),
                  ENGINE_GENERATION_TOKENS_TOTAL: ("vllm:generation_tokens_total",),
                  ENGINE_COMPLETED_TOTAL: ("vllm:request_success_total",)},
        histograms={EngineTiming.QUEUE: ("vllm:request_queue_time_seconds",),
                    EngineTiming.TIME_TO_FIRST_TOKEN: ("vllm:time_to_first_token_seconds",),
                    EngineTiming.INTER_TOKEN: ("vllm:inter_token_latency_seconds",
                                    "vllm:time_per_output_token_seconds"),
                    EngineTiming.COMPUTE: ("vllm:request_inference_time_seconds",)},
    ),
    # SGLang (python/sglang/srt/metrics/collector.py; --enable-metrics): token_usage is
    # the share of the KV token pool in use.
    "sglang": EngineSpec(
        "sglang", "sglang:",
        summed={ENGINE_RUNNING: ("sglang:num_running_reqs",),
                ENGINE_WAITING: ("sglang:num_queue_reqs",),
                ENGINE_KV_CAPACITY: ("sglang:max_total_num_tokens",)},
        maximum={ENGINE_KV_USAGE: ("sglang:token_usage",)},
        counters={ENGINE_PROMPT_TOKENS_TOTAL: ("sglang:prompt_tokens_total",),
                  ENGINE_GENERATION_TOKENS_TOTAL: ("sglang:generation_tokens_total",),
                  ENGINE_COMPLETED_TOTAL: ("sglang:num_requests_total",)},
        histograms={EngineTiming.QUEUE: ("sglang:queue_time_seconds",),
                    EngineTiming.TIME_TO_FIRST_TOKEN: ("sglang:time_to_first_token_seconds",),
                    EngineTiming.INTER_TOKEN: ("sglang:inter_token_latency_seconds",
                                    "sglang:time_per_output_token_seconds")},
    ),
    # Hugging Face TGI (router/src/server.rs; docs reference/metrics): durations are
    # histograms in seconds; batch_current_size is what runs, queue_size what waits.
    "tgi": EngineSpec(
        "tgi", "tgi_",
        summed={ENGINE_RUNNING: ("tgi_batch_current_size",),
                ENGINE_WAITING: ("tgi_queue_size",)},
        counters={ENGINE_COMPLETED_TOTAL: ("tgi_request_success",)},
        histograms={EngineTiming.QUEUE: ("tgi_request_queue_duration",),
                    EngineTiming.INTER_TOKEN: ("tgi_request_mean_time_per_token_duration",),
                    EngineTiming.COMPUTE: ("tgi_request_inference_duration",)},
        histogram_sums={ENGINE_PROMPT_TOKENS_TOTAL: ("tgi_request_input_length",),
                        ENGINE_GENERATION_TOKENS_TOTAL: ("tgi_request_generated_tokens",)},
    ),
    # NVIDIA Triton (docs user_guide/metrics.md): cumulative microsecond counters per
    # model; pending_request_count is requests not yet handed to a backend. Triton has
    # no running-requests gauge and no KV cache of its own (TensorRT-LLM's backend
    # exports nv_trt_llm_* series, not mapped here).
    "triton": EngineSpec(
        "triton", "nv_inference_",
        summed={ENGINE_WAITING: ("nv_inference_pending_request_count",)},
        counters={ENGINE_COMPLETED_TOTAL: ("nv_inference_request_success",)},
        ratios={EngineTiming.QUEUE: Ratio(("nv_inference_queue_duration_us",),
                               ("nv_inference_request_success",), 1e-6),
                EngineTiming.COMPUTE: Ratio(("nv_inference_compute_input_duration_us",
                                  "nv_inference_compute_infer_duration_us",
                                  "nv_inference_compute_output_duration_us"),
                                 ("nv_inference_request_success",), 1e-6)},
    ),
    # llama.cpp server with --metrics (tools/server/server.cpp): requests_deferred are
    # requests waiting for a free slot. Newer builds dropped kv_cache_usage_ratio; the
    # probe then reads KV use from /slots (probes/engine_slots.py).
    "llamacpp": EngineSpec(
        "llamacpp", "llamacpp:",
        summed={ENGINE_RUNNING: ("llamacpp:requests_processing",),
                ENGINE_WAITING: ("llamacpp:requests_deferred",)},
        maximum={ENGINE_KV_USAGE: ("llamacpp:kv_cache_usage_ratio",)},
        counters={ENGINE_PROMPT_TOKENS_TOTAL: ("llamacpp:prompt_tokens_total",),
                  ENGINE_GENERATION_TOKENS_TOTAL: ("llamacpp:tokens_predicted_total",)},
        # Seconds of generation per generated token: the inter-token time of a slot.
        ratios={EngineTiming.INTER_TOKEN: Ratio(("llamacpp:tokens_predicted_seconds_total",),
                                     ("llamacpp:tokens_predicted_total",))},
    ),
}


def detect(names: set[str]) -> Engine | None:
    """The engine whose metrics these sample names are: the one with most names
    under its prefix (a gateway may merge several); None for none."""
    counts = {e: sum(1 for n in names if n.startswith(s.prefix)) for e, s in SPECS.items()}
    best = max(counts, key=lambda e: counts[e])
    return best if counts[best] else None
