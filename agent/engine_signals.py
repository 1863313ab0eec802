"""The model server's readings in one window (probe ``engine``): what the engine rules
read. Pure functions of a Window; a value the engine did not give stays None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ai_bottleneck.probes.vocabulary import (
    ENGINE_COMPLETED_TOTAL,
    ENGINE_GENERATION_TOKENS_TOTAL,
    ENGINE_KV_CAPACITY,
    ENGINE_KV_USAGE,
    ENGINE_LABEL,
    ENGINE_PREEMPTIONS_TOTAL,
    ENGINE_RUNNING,
    ENGINE_WAITING,
    EngineTiming,
)
from ai_bottleneck.series import SeriesWindow
from ai_bottleneck.windows import Window


@dataclass(frozen=True, slots=True)
class EngineReading:
    engine: str
    target: str
    samples: int
    running: float | None = None          # mean requests in the running batch
    waiting: float | None = None          # mean requests queued in the engine
    waiting_max: float | None = None
    kv_usage: float | None = None         # peak share of the KV cache in use
    kv_capacity_tokens: float | None = None
    preemptions: float | None = None      # growth in the window
    generated_tokens: float | None = None  # growth in the window
    completed: float | None = None        # requests finished in the window (growth)
    queue: float | None = None            # mean seconds in the engine's queue
    queue_p95: float | None = None
    ttft: float | None = None
    ttft_p95: float | None = None
    inter_token: float | None = None
    inter_token_p95: float | None = None
    compute: float | None = None          # mean seconds running in the engine
    compute_p95: float | None = None

    @property
    def title(self) -> str:
        return f"{self.engine} at {self.target}"

    @property
    def request_seconds(self) -> float | None:
        """What one request spends inside the engine, where the engine says: queue +
        compute, else time to first token + inter-token time x tokens per request."""
        if self.compute is not None:
            return self.compute + (self.queue or 0.0)
        if self.ttft is not None and self.inter_token is not None and self.completed:
            per_request = (self.generated_tokens or 0.0) / self.completed
            return self.ttft + self.inter_token * per_request
        return None

    @property
    def tokens_per_request(self) -> float | None:
        """Context per running request at the observed KV use (tokens)."""
        if not (self.kv_capacity_tokens and self.kv_usage and self.running):
            return None
        return self.kv_capacity_tokens * self.kv_usage / self.running

    @property
    def concurrency_held(self) -> float | None:
        """Requests the KV cache holds at once at the observed context per request."""
        if not (self.kv_usage and self.running):
            return None
        return self.running / self.kv_usage


def _p95(sw: SeriesWindow, name: str) -> float | None:
    """The worst interval p95 in the window (each sample's p95 covers the requests
    that finished since the scrape before)."""
    st = sw.stats(name)
    return None if st is None else st.max


def engine_readings(window: Window) -> list[EngineReading]:
    out = []
    for sw in window.of("engine"):
        if not sw.count:
            continue
        waiting = sw.stats(ENGINE_WAITING)
        kv = sw.stats(ENGINE_KV_USAGE)
        queue, ttft, itl, compute = (EngineTiming.QUEUE, EngineTiming.TIME_TO_FIRST_TOKEN,
                                     EngineTiming.INTER_TOKEN, EngineTiming.COMPUTE)
        out.append(EngineReading(
            engine=sw.labels.get(ENGINE_LABEL, "?"), target=sw.labels.get("target", "?"),
            samples=sw.count,
            running=sw.mean(ENGINE_RUNNING),
            waiting=waiting.mean if waiting else None,
            waiting_max=waiting.max if waiting else None,
            kv_usage=kv.max if kv else None,
            kv_capacity_tokens=sw.last(ENGINE_KV_CAPACITY),
            preemptions=sw.increase(ENGINE_PREEMPTIONS_TOTAL),
            generated_tokens=sw.increase(ENGINE_GENERATION_TOKENS_TOTAL),
            completed=sw.increase(ENGINE_COMPLETED_TOTAL),
            queue=sw.mean(queue.mean_name), queue_p95=_p95(sw, queue.p95_name),
            ttft=sw.mean(ttft.mean_name), ttft_p95=_p95(sw, ttft.p95_name),
            inter_token=sw.mean(itl.mean_name), inter_token_p95=_p95(sw, itl.p95_name),
            compute=sw.mean(compute.mean_name), compute_p95=_p95(sw, compute.p95_name),
        ))
    return out


def engine_summary(readings: list[EngineReading]) -> dict[str, Any]:
    """Key numbers per engine for reports and the exporter (units in the names)."""
    if not readings:
        return {}
    return {"engine": {r.target: {k: v for k, v in {
        "engine": r.engine, "requests_running": r.running, "requests_waiting": r.waiting,
        "kv_cache_usage_ratio": r.kv_usage, "preemptions": r.preemptions,
        "queue_seconds": r.queue, "queue_p95_seconds": r.queue_p95,
        "time_to_first_token_seconds": r.ttft, "time_to_first_token_p95_seconds": r.ttft_p95,
        "inter_token_seconds": r.inter_token, "inter_token_p95_seconds": r.inter_token_p95,
        "compute_seconds": r.compute}.items() if v is not None} for r in readings}}

