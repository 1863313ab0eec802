"""Rules that read the model server's own metrics (probe ``engine``), with what they
need from a window: a full KV cache, a queue in front of a busy GPU, an idle engine
behind slow clients, and LLM latency objectives (time to first token, inter-token
time) in place of one total-time objective. docs/classifier.md lists each rule with
its threshold and source. Pure: no I/O, no clock.

The classifier builds ``EngineFacts`` (the shared Facts plus the engine readings)
and tries these rules at their places in its table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ai_bottleneck.engine_signals import EngineReading, engine_summary
from ai_bottleneck.facts import Facts, memory_text
from ai_bottleneck.findings import Finding, Signal, above
from ai_bottleneck.labels import Label
from ai_bottleneck.readings import Readings
from ai_bottleneck.thresholds import Thresholds
from ai_bottleneck.words import pct, secs

#: Client time at least this many times the engine's own time per request means the
#: difference is spent before the engine.
BEFORE_ENGINE_FACTOR = 2.0


class EngineFacts(Facts):
    """Facts plus the engine's readings. Where the engine reports time to first token
    or inter-token time, those objectives decide whether requests are slow: a long
    streamed answer is not slow when its first token and its pace are on time."""

    def __init__(self, r: Readings, th: Thresholds, engines: list[EngineReading]) -> None:
        super().__init__(r, th)
        self.engines = engines
        self.kv_full = [e for e in engines if e.kv_usage is not None
                        and e.kv_usage >= th.engine_kv_full_ratio
                        and (self._waits(e) or (e.preemptions or 0) > 0)]
        self.queued = [e for e in engines if self._waits(e)]
        self.llm_missed: list[Signal] = []
        self.llm_note: str | None = None
        ttft, ttft_kind = _worst([(e.ttft_p95, e.ttft) for e in engines])
        itl, itl_kind = _worst([(e.inter_token_p95, e.inter_token) for e in engines])
        if ttft is None and itl is None:
            return
        if ttft is not None and ttft > th.ttft_objective_seconds:
            self.llm_missed.append(Signal(
                above(ttft / th.ttft_objective_seconds, 1.0, 2.0),
                f"time to first token {ttft_kind} {secs(ttft)} > objective "
                f"{secs(th.ttft_objective_seconds)} (engine's own measurement)"))
        if itl is not None and itl > th.inter_token_objective_seconds:
            self.llm_missed.append(Signal(
                above(itl / th.inter_token_objective_seconds, 1.0, 2.0),
                f"inter-token time {itl_kind} {secs(itl)} > objective "
                f"{secs(th.inter_token_objective_seconds)} (engine's own measurement)"))
        if self.llm_missed:
            self.slow, self.latency_ok = True, False
            return
        parts = []
        if ttft is not None:
            parts.append(f"time to first token {ttft_kind} {secs(ttft)} <= "
                         f"{secs(th.ttft_objective_seconds)}")
        if itl is not None:
            parts.append(f"inter-token time {itl_kind} {secs(itl)} <= "
                         f"{secs(th.inter_token_objective_seconds)}")
        met = " and ".join(parts)
        if ttft is None and self.queued:
            return  # queued requests' first tokens are late by their wait, unmeasured here
        w = self.worst
        failing = w is not None and w.failures > 0 and (
            w.failure_ratio >= th.http_failure_high_ratio)
        if self.slow and not failing and not self.engine_quiet and w and w.total:
            # Long answers, each on time: the total-time objective does not apply.
            self.slow, self.latency_ok = False, True
            self.llm_note = (f"{met}: requests take {secs(w.total.p95)} (p95) end to end "
                             "because the answers are long, not slow")
        elif not self.slow:
            self.latency_ok = True
            self.llm_note = met

    def _waits(self, e: EngineReading) -> bool:
        return e.waiting is not None and e.waiting >= self.thresholds.engine_waiting_min_requests

    @property
    def engine_quiet(self) -> bool:
        """Nothing waited in any engine, and each spent far less time per request than
        the clients saw (or, where it does not say, had little running)."""
        if not self.engines:
            return False
        w = self.worst
        client = w.total.mean if w is not None and w.total is not None else None
        for e in self.engines:
            if e.waiting_max is None or e.waiting_max > 0:
                return False
            own = e.request_seconds
            if own is not None and client is not None:
                if own * BEFORE_ENGINE_FACTOR > client:
                    return False
            elif e.running is None or e.running > self.thresholds.engine_quiet_running_requests:
                return False
        return True

    def slow_signals(self) -> list[Signal]:
        return self.llm_missed + super().slow_signals()


def facts(r: Readings, th: Thresholds) -> Facts:
    """The Facts the classifier's rules read: EngineFacts when an engine was read."""
    return EngineFacts(r, th, list(r.engines)) if r.engines else Facts(r, th)


def summary(f: Facts) -> dict[str, Any]:
    """The engines' key numbers, for the window's summary."""
    return engine_summary(f.engines) if isinstance(f, EngineFacts) else {}


def objective_text(f: Facts) -> str | None:
    """How the LLM objectives were met, where they replaced the total-time objective."""
    return f.llm_note if isinstance(f, EngineFacts) else None


# -- the rules -------------------------------------------------------------------------

def kv_cache_full(f: Facts) -> Finding | None:
    """KV cache at or near full with requests waiting or preempted -> vram_bound (soft)."""
    if not isinstance(f, EngineFacts) or not f.kv_full:
        return None
    th = f.thresholds
    e = max(f.kv_full, key=lambda x: (x.kv_usage or 0.0, x.waiting or 0.0))
    assert e.kv_usage is not None
    signals = [Signal(above(e.kv_usage, th.engine_kv_full_ratio),
                      f"{e.title}: KV cache {pct(e.kv_usage)} used "
                      f"(>= {pct(th.engine_kv_full_ratio)})")]
    if f._waits(e):
        signals.append(_waiting_signal(e, th))
    if e.preemptions:
        signals.append(Signal(above(e.preemptions, 0.0, 10.0),
                              f"{e.title}: {e.preemptions:.0f} request(s) preempted in this "
                              "window (their cache freed, their work recomputed)"))
    notes = []
    if e.queue is not None:
        notes.append(f"{e.title}: requests spent {secs(e.queue)} on average in the engine's "
                     "queue" + (f" (p95 {secs(e.queue_p95)})" if e.queue_p95 is not None
                                else ""))
    notes += [memory_text(g) for g in f.gpus if g.memory_used_ratio is not None]
    notes.append("no out-of-memory event: the weights fit; the KV cache (the requests' "
                 "context) is what is full")
    notes += [s.text for s in f.slow_signals()]
    return Finding(Label.VRAM_BOUND, signals=signals, notes=notes,
                   factors=[(0.9, "soft evidence: a full KV cache, not an out-of-memory "
                                  "event")], advice=kv_advice(e))


def queue_with_gpu_busy(f: Facts) -> Finding | None:
    """Requests wait in the engine while the GPU is busy -> gpu_bound."""
    g = f.top_gpu
    if (not isinstance(f, EngineFacts) or not f.queued or not f.gpu_saturated or g is None
            or g.busy is None):
        return None
    e = max(f.queued, key=lambda x: x.waiting or 0.0)
    signals = [Signal(above(g.busy, f.gpu_busy_threshold),
                      f"{f.gpu_text(g)} (>= {pct(f.gpu_busy_threshold)})"),
               _waiting_signal(e, f.thresholds)]
    if e.queue is not None and e.compute:
        share = e.queue / (e.queue + e.compute)
        signals.append(Signal(above(share, 0.25), f"{e.title}: requests wait "
                              f"{secs(e.queue)} in the queue for {secs(e.compute)} of "
                              f"compute ({pct(share)} of their time in the engine is waiting)"))
    elif e.queue is not None:
        signals.append(Signal(0.5, f"{e.title}: requests wait {secs(e.queue)} in the queue"))
    found = Finding(Label.GPU_BOUND, signals=signals + f.slow_signals())
    if e.kv_usage is not None:
        found.notes.append(f"{e.title}: KV cache {pct(e.kv_usage)} used: room for more "
                           "requests, the GPU's compute is what they wait for")
    if f.latency_ok:
        found.notes.append(objective_text(f) or "requests within the objective")
        found.factors.append((0.75, "requests still within the objective"))
    if f.coarse_only:
        found.factors.append((0.85, "only coarse GPU utilization"))
    return found


def engine_idle_while_slow(f: Facts) -> Finding | None:
    """Clients see slow requests while the engine is quiet -> unknown, naming where the
    time is not: the engine. (Positive network evidence is labelled earlier.)"""
    if not isinstance(f, EngineFacts) or not f.slow or not f.engine_quiet:
        return None
    notes = [s.text for s in f.slow_signals()]
    for e in f.engines:
        own = e.request_seconds
        notes.append(f"{e.title} was idle: nothing waited, {e.running or 0:.2g} request(s) "
                     "running on average" + (f", {secs(own)} per request inside the engine"
                                             if own is not None else ""))
    notes.append("the time is spent before the engine (gateway, proxy, tokenizer or request "
                 "pre-processing, or the network), and no network evidence was found; "
                 "checked: " + ("; ".join(f.context()) or "nothing else measured"))
    return Finding(Label.UNKNOWN, notes=notes, advice=[
        "Look in front of the engine: time each hop between the clients and the model "
        "server (load balancer, API gateway, auth, tokenization), and measure the path with "
        "iperf3 (--iperf3 HOST) and a download (--download URL) so the network can be "
        "judged; the engine itself served its requests without waiting."])


# -- helpers ---------------------------------------------------------------------------

def kv_advice(e: EngineReading) -> list[str]:
    out = ["The KV cache is full: the engine makes requests wait or preempts them while "
           "the model's weights fit. More GPU compute or bandwidth will not help; more room "
           "for the cache will."]
    inside = (e.running or 0.0) + (e.waiting or 0.0)
    held = e.concurrency_held
    per_request = e.tokens_per_request
    if held is not None:
        context = (f" of about {per_request:,.0f} tokens each (a {e.kv_capacity_tokens:,.0f}"
                   "-token cache)" if per_request is not None and e.kv_capacity_tokens
                   else "")
        need = (f"; serving all {inside:.0f} in the engine at once needs about "
                f"{inside / held:.2g}x the cache" if inside > held else "")
        out.append(f"At the observed context the cache holds about {held:.0f} requests at "
                   f"once{context}{need}.")
    out.append("Make room for the cache: quantise it (an 8-bit KV cache holds twice the "
               "tokens: vLLM --kv-cache-dtype fp8, llama.cpp --cache-type-k/-v q8_0), cap "
               "the context (vLLM --max-model-len, llama.cpp --ctx-size), cap the batch to "
               "what fits (vLLM --max-num-seqs) so that requests wait rather than being "
               "preempted and recomputed, or give it more VRAM (vLLM "
               "--gpu-memory-utilization, a GPU with more memory, tensor parallelism).")
    return out


def _waiting_signal(e: EngineReading, th: Thresholds) -> Signal:
    low = th.engine_waiting_min_requests
    waiting = e.waiting or 0.0
    return Signal(above(waiting, low, max(low * 10, low + 1)),
                  f"{e.title}: {waiting:.3g} request(s) waiting on average (peak "
                  f"{e.waiting_max or 0:.0f}), {e.running or 0:.3g} running")


def _worst(pairs: Iterable[tuple[float | None, float | None]]) -> tuple[float | None, str]:
    """The worst p95 over the engines, or where none gives one, the worst mean
    (llama.cpp's time per token), and which of the two it is."""
    pairs = list(pairs)
    for index, kind in ((0, "p95"), (1, "mean")):
        found = [p[index] for p in pairs if p[index] is not None]
        if found:
            return max(v for v in found if v is not None), kind
    return None, ""
