"""The model server's readings in one window (probe ``engine``): what the engine rules
read. Pure functions of a Window; a value the engine did not give stays None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ai_bottleneck.windows import SeriesWindow, Window
from ai_bottleneck.words import pct, secs


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
        waiting = sw.stats("requests_waiting")
        kv = sw.stats("kv_cache_usage_ratio")
        out.append(EngineReading(
            engine=sw.labels.get("engine", "?"), target=sw.labels.get("target", "?"),
            samples=sw.count,
            running=sw.mean("requests_running"),
            waiting=waiting.mean if waiting else None,
            waiting_max=waiting.max if waiting else None,
            kv_usage=kv.max if kv else None,
            kv_capacity_tokens=sw.last("kv_cache_capacity_tokens"),
            preemptions=sw.increase("preemptions_total"),
            generated_tokens=sw.increase("generation_tokens_total"),
            completed=sw.increase("requests_completed_total"),
            queue=sw.mean("queue_seconds"), queue_p95=_p95(sw, "queue_p95_seconds"),
            ttft=sw.mean("time_to_first_token_seconds"),
            ttft_p95=_p95(sw, "time_to_first_token_p95_seconds"),
            inter_token=sw.mean("inter_token_seconds"),
            inter_token_p95=_p95(sw, "inter_token_p95_seconds"),
            compute=sw.mean("compute_seconds"), compute_p95=_p95(sw, "compute_p95_seconds"),
        ))
    return out


def engine_errors(window: Window) -> list[str]:
    return [e for sw in window.of("engine") for e in sw.errors(1)]


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


def engine_key_numbers(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    """One report line per engine across the run's window summaries: means, peaks and
    the worst window's p95 latencies."""
    seen: dict[str, dict[str, list[float]]] = {}
    names: dict[str, str] = {}
    for s in summaries:
        for target, values in (s.get("engine") or {}).items():
            if not isinstance(values, Mapping):
                continue
            names[target] = str(values.get("engine", "engine"))
            slot = seen.setdefault(target, {})
            for key, v in values.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    slot.setdefault(key, []).append(float(v))
    lines = []
    for target, k in sorted(seen.items()):
        parts = []
        for key, what in (("requests_running", "running"), ("requests_waiting", "waiting")):
            if k.get(key):
                parts.append(f"{what} mean {sum(k[key]) / len(k[key]):.3g}, "
                             f"max {max(k[key]):.3g}")
        if k.get("kv_cache_usage_ratio"):
            parts.append(f"KV cache max {pct(max(k['kv_cache_usage_ratio']))}")
        if k.get("preemptions"):
            parts.append(f"{sum(k['preemptions']):.0f} preemptions")
        for key, what in (("queue_p95_seconds", "queue"),
                          ("time_to_first_token_p95_seconds", "time to first token"),
                          ("inter_token_p95_seconds", "inter-token")):
            if k.get(key):
                parts.append(f"{what} p95 worst window {secs(max(k[key]))}")
        lines.append(f"Engine {names[target]} {target}: " + ("; ".join(parts) or "no readings"))
    return lines
