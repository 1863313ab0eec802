"""Model-server metrics pages for tests, written from each engine's documented metric
names, types and labels (docs/probes.md, "engine", cites the sources), and a real
HTTP server on loopback that serves the current page.

``EngineState`` is what a server would count; ``page(engine, state)`` renders it
the way that engine exposes it (``# HELP``/``# TYPE`` lines, its label sets,
cumulative histogram buckets). Tests change the state between scrapes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: Bucket bounds in seconds (vLLM's request-time buckets, trimmed).
TIME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0)


@dataclass
class EngineState:
    running: float = 0
    waiting: float = 0
    kv_usage: float = 0.0
    preemptions: float = 0
    prompt_tokens: float = 0
    generation_tokens: float = 0
    generation_seconds: float = 0.0      # llama.cpp: seconds spent generating
    queue: list[float] = field(default_factory=list)        # observed seconds per request
    ttft: list[float] = field(default_factory=list)
    inter_token: list[float] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)
    kv_blocks: int = 1000
    block_size: int = 16

    def finish(self, n: int, *, queue: float, ttft: float, inter_token: float,
               compute: float) -> None:
        """``n`` requests completed with these times."""
        self.queue += [queue] * n
        self.ttft += [ttft] * n
        self.inter_token += [inter_token] * n
        self.compute += [compute] * n


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _metric(name: str, kind: str, value: float, labels: dict[str, str] | None = None,
            doc: str = "") -> str:
    return (f"# HELP {name} {doc or name}\n# TYPE {name} {kind}\n"
            f"{name}{_labels(labels or {})} {float(value)!r}\n")


def _histogram(name: str, observed: Sequence[float], labels: dict[str, str] | None = None,
               buckets: Sequence[float] = TIME_BUCKETS) -> str:
    labels = labels or {}
    lines = [f"# HELP {name} histogram of {name}", f"# TYPE {name} histogram"]
    for le in (*buckets, float("inf")):
        count = sum(1 for v in observed if v <= le)
        bound = "+Inf" if le == float("inf") else repr(le)
        lines.append(f"{name}_bucket{_labels({**labels, 'le': bound})} {float(count)!r}")
    lines.append(f"{name}_sum{_labels(labels)} {float(sum(observed))!r}")
    lines.append(f"{name}_count{_labels(labels)} {float(len(observed))!r}")
    return "\n".join(lines) + "\n"


def vllm(s: EngineState, *, old_names: bool = False) -> str:
    """vLLM V1 (0.9+) names, or V0's (gpu_cache_usage_perc, time_per_output_token)."""
    lab = {"model_name": "meta-llama/Llama-3.1-8B-Instruct"}
    if not old_names:
        lab["engine"] = "0"
    info = {"block_size": str(s.block_size), "num_gpu_blocks": str(s.kv_blocks),
            "cache_dtype": "auto", "gpu_memory_utilization": "0.9"}
    return "".join([
        _metric("vllm:cache_config_info", "gauge", 1, info),
        _metric("vllm:num_requests_running", "gauge", s.running, lab),
        _metric("vllm:num_requests_waiting", "gauge", s.waiting, lab),
        _metric("vllm:gpu_cache_usage_perc" if old_names else "vllm:kv_cache_usage_perc",
                "gauge", s.kv_usage, lab),
        _metric("vllm:num_preemptions_total", "counter", s.preemptions, lab),
        _metric("vllm:prompt_tokens_total", "counter", s.prompt_tokens, lab),
        _metric("vllm:generation_tokens_total", "counter", s.generation_tokens, lab),
        _metric("vllm:request_success_total", "counter", len(s.queue),
                {**lab, "finished_reason": "stop"}),
        _histogram("vllm:request_queue_time_seconds", s.queue, lab),
        _histogram("vllm:time_to_first_token_seconds", s.ttft, lab),
        _histogram("vllm:time_per_output_token_seconds" if old_names
                   else "vllm:inter_token_latency_seconds", s.inter_token, lab),
        _histogram("vllm:request_inference_time_seconds", s.compute, lab),
        _histogram("vllm:e2e_request_latency_seconds",
                   [q + c for q, c in zip(s.queue, s.compute, strict=False)], lab),
    ])


def sglang(s: EngineState) -> str:
    lab = {"model_name": "meta-llama/Llama-3.1-8B-Instruct"}
    return "".join([
        _metric("sglang:max_total_num_tokens", "gauge", s.kv_blocks * s.block_size, lab),
        _metric("sglang:num_running_reqs", "gauge", s.running, lab),
        _metric("sglang:num_queue_reqs", "gauge", s.waiting, lab),
        _metric("sglang:token_usage", "gauge", s.kv_usage, lab),
        _metric("sglang:prompt_tokens_total", "counter", s.prompt_tokens, lab),
        _metric("sglang:generation_tokens_total", "counter", s.generation_tokens, lab),
        _histogram("sglang:queue_time_seconds", s.queue, lab),
        _histogram("sglang:time_to_first_token_seconds", s.ttft, lab),
        _histogram("sglang:inter_token_latency_seconds", s.inter_token, lab),
    ])


def tgi(s: EngineState) -> str:
    return "".join([
        _metric("tgi_batch_current_size", "gauge", s.running),
        _metric("tgi_queue_size", "gauge", s.waiting),
        _metric("tgi_request_success", "counter", len(s.queue)),
        _histogram("tgi_request_queue_duration", s.queue),
        _histogram("tgi_request_mean_time_per_token_duration", s.inter_token),
        _histogram("tgi_request_inference_duration", s.compute),
        _histogram("tgi_request_input_length", [s.prompt_tokens] if s.prompt_tokens else [],
                   buckets=(10.0, 100.0, 1000.0, 10000.0)),
        _histogram("tgi_request_generated_tokens",
                   [s.generation_tokens] if s.generation_tokens else [],
                   buckets=(10.0, 100.0, 1000.0, 10000.0)),
    ])


def triton(s: EngineState) -> str:
    """Two models; cumulative microsecond counters per model, as Triton exports them."""
    out = []
    for model, share in (("llama", 0.75), ("embedder", 0.25)):
        lab = {"model": model, "version": "1"}
        n = len(s.queue) * share
        out += [
            _metric("nv_inference_pending_request_count", "gauge", s.waiting * share, lab),
            _metric("nv_inference_request_success", "counter", n, lab),
            _metric("nv_inference_queue_duration_us", "counter",
                    sum(s.queue) * share * 1e6, lab),
            _metric("nv_inference_compute_input_duration_us", "counter", 0.0, lab),
            _metric("nv_inference_compute_infer_duration_us", "counter",
                    sum(s.compute) * share * 1e6, lab),
            _metric("nv_inference_compute_output_duration_us", "counter", 0.0, lab),
        ]
    out.append(_metric("nv_gpu_utilization", "gauge", 0.5, {"gpu_uuid": "GPU-0"}))
    return "".join(out)


def llamacpp(s: EngineState) -> str:
    return "".join([
        _metric("llamacpp:prompt_tokens_total", "counter", s.prompt_tokens),
        _metric("llamacpp:prompt_seconds_total", "counter", 0.0),
        _metric("llamacpp:tokens_predicted_total", "counter", s.generation_tokens),
        _metric("llamacpp:tokens_predicted_seconds_total", "counter", s.generation_seconds),
        _metric("llamacpp:n_decode_total", "counter", 0.0),
        _metric("llamacpp:n_busy_slots_per_decode", "gauge", 0.0),
        _metric("llamacpp:kv_cache_usage_ratio", "gauge", s.kv_usage),
        _metric("llamacpp:kv_cache_tokens", "gauge", s.kv_usage * 4096),
        _metric("llamacpp:requests_processing", "gauge", s.running),
        _metric("llamacpp:requests_deferred", "gauge", s.waiting),
    ])


PAGES = {"vllm": vllm, "sglang": sglang, "tgi": tgi, "triton": triton, "llamacpp": llamacpp}


class MetricsServer:
    """A real HTTP server on 127.0.0.1 that answers GET /metrics with ``page``."""

    def __init__(self) -> None:
        self.page = ""
        self.status = 200
        self.scrapes = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.scrapes += 1
                body = owner.page.encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/metrics"

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def metrics_server(page: str = "") -> Iterator[MetricsServer]:
    server = MetricsServer().start()
    server.page = page
    try:
        yield server
    finally:
        server.stop()
