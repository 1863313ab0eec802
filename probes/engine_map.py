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
    histograms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Histograms whose _sum is a counter worth keeping (tokens per request).
    histogram_sums: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Means from two counters: base -> Ratio; gives <base>_seconds.
    ratios: dict[str, Ratio] = field(default_factory=dict)


SPECS: dict[Engine, EngineSpec] = {
    # vLLM (vllm/v1/metrics/loggers.py; V0 vllm/engine/metrics.py): labels model_name,
    # and engine on V1. kv_cache_usage_perc is a ratio 0..1 despite its name.
    "vllm": EngineSpec(
        "vllm", "vllm:",
        summed={"requests_running": ("vllm:num_requests_running",),
                "requests_waiting": ("vllm:num_requests_waiting",)},
        maximum={"kv_cache_usage_ratio": ("vllm:kv_cache_usage_perc",
                                          "vllm:gpu_cache_usage_perc")},
        counters={"preemptions_total": ("vllm:num_preemptions_total",),
                  "prompt_tokens_total": ("vllm:prompt_tokens_total",),
                  "generation_tokens_total": ("vllm:generation_tokens_total",),
                  "requests_completed_total": ("vllm:request_success_total",)},
        histograms={"queue": ("vllm:request_queue_time_seconds",),
                    "time_to_first_token": ("vllm:time_to_first_token_seconds",),
                    "inter_token": ("vllm:inter_token_latency_seconds",
                                    "vllm:time_per_output_token_seconds"),
                    "compute": ("vllm:request_inference_time_seconds",)},
    ),
    # SGLang (python/sglang/srt/metrics/collector.py; --enable-metrics): token_usage is
    # the share of the KV token pool in use.
    "sglang": EngineSpec(
        "sglang", "sglang:",
        summed={"requests_running": ("sglang:num_running_reqs",),
                "requests_waiting": ("sglang:num_queue_reqs",),
                "kv_cache_capacity_tokens": ("sglang:max_total_num_tokens",)},
        maximum={"kv_cache_usage_ratio": ("sglang:token_usage",)},
        counters={"prompt_tokens_total": ("sglang:prompt_tokens_total",),
                  "generation_tokens_total": ("sglang:generation_tokens_total",),
                  "requests_completed_total": ("sglang:num_requests_total",)},
        histograms={"queue": ("sglang:queue_time_seconds",),
                    "time_to_first_token": ("sglang:time_to_first_token_seconds",),
                    "inter_token": ("sglang:inter_token_latency_seconds",
                                    "sglang:time_per_output_token_seconds")},
    ),
    # Hugging Face TGI (router/src/server.rs; docs reference/metrics): durations are
    # histograms in seconds; batch_current_size is what runs, queue_size what waits.
    "tgi": EngineSpec(
        "tgi", "tgi_",
        summed={"requests_running": ("tgi_batch_current_size",),
                "requests_waiting": ("tgi_queue_size",)},
        counters={"requests_completed_total": ("tgi_request_success",)},
        histograms={"queue": ("tgi_request_queue_duration",),
                    "inter_token": ("tgi_request_mean_time_per_token_duration",),
                    "compute": ("tgi_request_inference_duration",)},
        histogram_sums={"prompt_tokens_total": ("tgi_request_input_length",),
                        "generation_tokens_total": ("tgi_request_generated_tokens",)},
    ),
    # NVIDIA Triton (docs user_guide/metrics.md): cumulative microsecond counters per
    # model; pending_request_count is requests not yet handed to a backend. Triton has
    # no running-requests gauge and no KV cache of its own (TensorRT-LLM's backend
    # exports nv_trt_llm_* series, not mapped here).
    "triton": EngineSpec(
        "triton", "nv_inference_",
        summed={"requests_waiting": ("nv_inference_pending_request_count",)},
        counters={"requests_completed_total": ("nv_inference_request_success",)},
        ratios={"queue": Ratio(("nv_inference_queue_duration_us",),
                               ("nv_inference_request_success",), 1e-6),
                "compute": Ratio(("nv_inference_compute_input_duration_us",
                                  "nv_inference_compute_infer_duration_us",
                                  "nv_inference_compute_output_duration_us"),
                                 ("nv_inference_request_success",), 1e-6)},
    ),
    # llama.cpp server with --metrics (tools/server/server.cpp): requests_deferred are
    # requests waiting for a free slot. Newer builds dropped kv_cache_usage_ratio;
    # then the value is absent.
    "llamacpp": EngineSpec(
        "llamacpp", "llamacpp:",
        summed={"requests_running": ("llamacpp:requests_processing",),
                "requests_waiting": ("llamacpp:requests_deferred",)},
        maximum={"kv_cache_usage_ratio": ("llamacpp:kv_cache_usage_ratio",)},
        counters={"prompt_tokens_total": ("llamacpp:prompt_tokens_total",),
                  "generation_tokens_total": ("llamacpp:tokens_predicted_total",)},
        # Seconds of generation per generated token: the inter-token time of a slot.
        ratios={"inter_token": Ratio(("llamacpp:tokens_predicted_seconds_total",),
                                     ("llamacpp:tokens_predicted_total",))},
    ),
}


def detect(names: set[str]) -> Engine | None:
    """The engine whose metrics these sample names are: the one with most names
    under its prefix (a gateway may merge several); None for none."""
    counts = {e: sum(1 for n in names if n.startswith(s.prefix)) for e, s in SPECS.items()}
    best = max(counts, key=lambda e: counts[e])
    return best if counts[best] else None
