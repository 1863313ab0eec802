"""Capacity planning: will this model and this load fit this host's GPUs and links?

Pure arithmetic on a ModelInfo (agent/modelinfo.py) and what is known of the
host (agent/plan_host.py); no I/O. Every formula and margin is explained, with
its source, in docs/plan.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ai_bottleneck.modelinfo import DTYPE_BYTES, PLAN_DTYPES, ModelInfo

GIB = 2**30
#: Memory an inference process needs beyond weights and KV cache: CUDA context,
#: library workspaces, activations of a forward pass, allocator fragmentation.
#: 20% of the weights (the common "M = P x Q/8 x 1.2" serving rule, whose 20%
#: also covers a small KV cache that is counted separately here), never less
#: than 1 GiB (the CUDA context and library workspaces alone take several
#: hundred MiB). See docs/plan.md.
OVERHEAD_SHARE_OF_WEIGHTS = 0.20
OVERHEAD_FLOOR_BYTES = 1 * GIB
DEFAULT_CONTEXT = 4096
#: The source article's floor for a public API serving several users at once.
PUBLIC_API_FLOOR_BITS = 50e6


@dataclass(frozen=True)
class Gpu:
    name: str
    total_bytes: int
    used_bytes: int | None = None


@dataclass(frozen=True)
class Link:
    """What is known of the host's network: each figure with where it came from."""

    nic_bits_per_second: float | None = None
    nic_source: str = ""
    measured_bits_per_second: float | None = None
    measured_source: str = ""

    @property
    def usable_bits_per_second(self) -> float | None:
        # A measured path rate is what users get; the NIC speed is only its ceiling.
        known = [v for v in (self.measured_bits_per_second, self.nic_bits_per_second) if v]
        return min(known) if known else None


@dataclass(frozen=True)
class Load:
    context_tokens: int = DEFAULT_CONTEXT
    concurrency: int = 1
    payload_bytes: float | None = None
    latency_seconds: float | None = None
    #: Measured server time per request (a recording): it uses up part of the objective.
    server_seconds: float | None = None


@dataclass
class Plan:
    weights_bytes: int | None = None
    kv_cache_bytes_per_token: int | None = None
    kv_cache_bytes: int | None = None
    overhead_bytes: int | None = None
    vram_needed_bytes: int | None = None
    vram_available_bytes: int | None = None
    max_concurrent_sequences: int | None = None
    bandwidth_needed_bits_per_second: float | None = None
    bandwidth_available_bits_per_second: float | None = None
    vram_fits: bool | None = None
    bandwidth_fits: bool | None = None
    evidence: list[str] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    #: Parts asked about that could not be checked ("vram", "bandwidth").
    unchecked: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        # A part that could not be checked (no GPU seen, no link known) is not a fit:
        # a script reading `fits` must not deploy on a guess. `unchecked` says which.
        return (not self.unchecked and self.vram_fits is not False
                and self.bandwidth_fits is not False)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()
               if k not in ("evidence", "changes", "unchecked")}
        out["fits"] = self.fits
        out["evidence"] = list(self.evidence)
        out["changes"] = list(self.changes)
        out["unchecked"] = list(self.unchecked)
        out["cheapest_change"] = self.changes[0] if self.changes and not self.fits else None
        return out


def overhead_bytes(weights_bytes: int) -> int:
    return max(OVERHEAD_FLOOR_BYTES, round(OVERHEAD_SHARE_OF_WEIGHTS * weights_bytes))


def vram_needed(model: ModelInfo, load: Load, kv_bytes_per_element: float | None = None) -> int:
    per_token = _kv_per_token(model, kv_bytes_per_element)
    kv = per_token * load.context_tokens * load.concurrency
    return model.weights_bytes + kv + overhead_bytes(model.weights_bytes)


def _kv_per_token(model: ModelInfo, kv_bytes_per_element: float | None = None) -> int:
    if kv_bytes_per_element is None:
        return model.kv_cache_bytes_per_token
    return int(2 * model.layers * model.kv_heads * model.head_dim * kv_bytes_per_element)


def transfer_seconds(payload_bytes: float, bits_per_second: float) -> float:
    """Time for ``payload_bytes`` to cross a link of ``bits_per_second``, ignoring
    latency and protocol overhead (the source article's arithmetic)."""
    return payload_bytes * 8 / bits_per_second


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def size(n: float) -> str:
    """Decimal units, as the source article and --payload use them (5MB = 5e6 bytes)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} bytes"


def rate(bits: float) -> str:
    return f"{bits / 1e9:.2f} Gbit/s" if bits >= 1e9 else f"{bits / 1e6:.1f} Mbit/s"


def plan_vram(model: ModelInfo, load: Load, gpus: list[Gpu] | None, out: Plan) -> None:
    per_token = model.kv_cache_bytes_per_token
    kv = per_token * load.context_tokens * load.concurrency
    margin = overhead_bytes(model.weights_bytes)
    needed = model.weights_bytes + kv + margin
    out.weights_bytes, out.kv_cache_bytes_per_token = model.weights_bytes, per_token
    out.kv_cache_bytes, out.overhead_bytes, out.vram_needed_bytes = kv, margin, needed
    out.evidence.append(
        f"weights {gb(model.weights_bytes)}: {model.parameters / 1e9:.2f}B parameters "
        f"({model.parameters_how}) in {model.weight_format}")
    out.evidence.append(
        f"KV cache {per_token / 1024:g} KiB per token = 2 x {model.layers} layers x "
        f"{model.kv_heads} KV heads x {model.head_dim} head dim x "
        f"{model.kv_bytes_per_element:g} bytes ({model.shape_how}); x {load.context_tokens} "
        f"tokens x {load.concurrency} sequences = {gb(kv)}")
    if model.max_context is not None and load.context_tokens > model.max_context:
        out.evidence.append(f"context {load.context_tokens} is longer than the model's "
                            f"{model.max_context} tokens")
    out.evidence.append(f"runtime margin {gb(margin)} (20% of weights, at least 1 GiB); "
                        f"needed {gb(needed)}")
    if not gpus:
        out.evidence.append("GPU memory not known (no NVML here and no --gpu-memory): "
                            "VRAM not checked")
        out.unchecked.append("vram")
        return
    available = sum(g.total_bytes for g in gpus)
    out.vram_available_bytes = available
    where = (f"{len(gpus)} GPUs ({gpus[0].name}), model split across them" if len(gpus) > 1
             else gpus[0].name)
    spare = available - model.weights_bytes - margin
    out.max_concurrent_sequences = max(0, spare // (per_token * load.context_tokens))
    out.vram_fits = needed <= available
    if out.vram_fits:
        out.evidence.append(f"fits in {gb(available)} of {where} with {gb(available - needed)} "
                            f"to spare; {_sequences(out.max_concurrent_sequences)} of "
                            f"{load.context_tokens} tokens {_fit(out.max_concurrent_sequences)}")
    else:
        out.evidence.append(f"does not fit in {gb(available)} of {where}: "
                            f"{gb(needed - available)} short; "
                            f"{_sequences(out.max_concurrent_sequences)} of "
                            f"{load.context_tokens} tokens {_fit(out.max_concurrent_sequences)}")
        _vram_changes(model, load, available, out)
    used = sum(g.used_bytes or 0 for g in gpus)
    if used > 0.05 * available:
        out.evidence.append(f"{gb(used)} of that GPU memory was in use when read")


def _sequences(n: int) -> str:
    return f"{n} concurrent sequence{'' if n == 1 else 's'}"


def _fit(n: int) -> str:
    return "fits" if n == 1 else "fit"


def _vram_changes(model: ModelInfo, load: Load, available: int, out: Plan) -> None:
    """Changes that make the model fit, cheapest first: settings of the same model,
    then a smaller model format, then more GPU memory."""
    margin = overhead_bytes(model.weights_bytes)
    spare = available - model.weights_bytes - margin
    per_token = model.kv_cache_bytes_per_token
    if spare > 0:
        if model.kv_bytes_per_element > 1 and vram_needed(model, load, 1.0) <= available:
            out.changes.append({
                "kind": "kv_cache_fp8",
                "change": "store the KV cache in 8 bits (vLLM --kv-cache-dtype fp8; llama.cpp "
                          "--cache-type-k q8_0 --cache-type-v q8_0)",
                "vram_needed_bytes": vram_needed(model, load, 1.0)})
        longest = spare // (per_token * load.concurrency)
        if longest >= 1:
            out.changes.append({
                "kind": "shorter_context", "context_tokens": int(longest),
                "change": f"limit the context to {longest} tokens (from "
                          f"{load.context_tokens}) at {_sequences(load.concurrency)}"})
        most = spare // (per_token * load.context_tokens)
        if most >= 1:
            gpus_needed = math.ceil(load.concurrency / most)
            out.changes.append({
                "kind": "fewer_concurrent", "concurrency": int(most),
                "change": f"serve at most {_sequences(most)} of "
                          f"{load.context_tokens} tokens per GPU set (from {load.concurrency}; "
                          f"{gpus_needed} replicas for all of them)"})
    for dtype in PLAN_DTYPES:
        if DTYPE_BYTES[dtype] * model.parameters >= model.weights_bytes:
            continue
        smaller = model.with_dtype(dtype)
        needed = vram_needed(smaller, load)
        if needed <= available:
            out.changes.append({
                "kind": "quantise", "dtype": dtype, "vram_needed_bytes": needed,
                "change": f"quantise the weights to {dtype}: {gb(smaller.weights_bytes)} of "
                          f"weights, {gb(needed)} in all"})
            break
    needed = out.vram_needed_bytes or 0
    out.changes.append({
        "kind": "more_vram", "vram_needed_bytes": needed,
        "change": f"GPUs with at least {gb(needed)} of memory in all "
                  f"({gb(needed - available)} more than this host has)"})


def plan_bandwidth(load: Load, link: Link, out: Plan) -> None:
    if load.payload_bytes is None or load.latency_seconds is None:
        return
    budget = load.latency_seconds - (load.server_seconds or 0.0)
    if budget <= 0:
        out.bandwidth_fits = False
        out.evidence.append(f"the server alone takes {load.server_seconds:.3g} s, more than the "
                            f"{load.latency_seconds:g} s objective: no link can meet it")
        return
    needed = load.concurrency * load.payload_bytes * 8 / budget
    out.bandwidth_needed_bits_per_second = needed
    share = "" if not load.server_seconds else f" (objective less {load.server_seconds:.3g} s " \
                                               f"of server time)"
    out.evidence.append(
        f"{load.concurrency} x {size(load.payload_bytes)} within {budget:.3g} s{share} "
        f"needs {rate(needed)}")
    if load.concurrency > 1 and needed < PUBLIC_API_FLOOR_BITS:
        out.evidence.append("a public API serving several users at once needs >= 50 Mbit/s "
                            "(rule of thumb of the source article)")
    if link.nic_bits_per_second:
        out.evidence.append(f"NIC link {rate(link.nic_bits_per_second)} ({link.nic_source})")
    if link.measured_bits_per_second:
        out.evidence.append(f"measured {rate(link.measured_bits_per_second)} "
                            f"({link.measured_source})")
    usable = link.usable_bits_per_second
    if usable is None:
        out.evidence.append("link bandwidth not known (no NIC speed, no measurement; "
                            "try --measure): bandwidth not checked")
        out.unchecked.append("bandwidth")
        return
    out.bandwidth_available_bits_per_second = usable
    one = transfer_seconds(load.payload_bytes, usable)
    out.evidence.append(f"one {size(load.payload_bytes)} payload takes {one:.3g} s at "
                        f"{rate(usable)}; {load.concurrency} at once take "
                        f"{one * load.concurrency:.3g} s")
    out.bandwidth_fits = needed <= usable
    if out.bandwidth_fits:
        return
    out.evidence.append(f"the link is {rate(needed - usable)} short")
    most = int(usable * budget // (load.payload_bytes * 8))
    if most >= 1:
        out.changes.append({"kind": "fewer_concurrent", "concurrency": most,
                            "change": f"at most {most} concurrent transfers per link (from "
                                      f"{load.concurrency})"})
    slowest = load.concurrency * transfer_seconds(load.payload_bytes, usable)
    out.changes.append({"kind": "longer_latency",
                        "latency_seconds": slowest + (load.server_seconds or 0.0),
                        "change": f"accept {slowest + (load.server_seconds or 0.0):.3g} s per "
                                  f"request (from {load.latency_seconds:g} s)"})
    out.changes.append({"kind": "wider_link", "bandwidth_needed_bits_per_second": needed,
                        "change": f"a link of at least {rate(needed)} (now {rate(usable)})"})


def make_plan(model: ModelInfo | None, load: Load, gpus: list[Gpu] | None, link: Link) -> Plan:
    out = Plan()
    if model is not None:
        plan_vram(model, load, gpus, out)
    plan_bandwidth(load, link, out)
    # Cheapest first across both parts: settings, then model format, then hardware.
    order = {"kv_cache_fp8": 0, "shorter_context": 1, "fewer_concurrent": 2,
             "longer_latency": 3, "quantise": 4, "more_vram": 5, "wider_link": 5}
    out.changes.sort(key=lambda c: order.get(c["kind"], 9))
    return out


def saturation(*, server_seconds: float | None, concurrency: float | None,
               request_bytes: float | None, response_bytes: float | None,
               link: Link) -> tuple[dict[str, Any], list[str]]:
    """The arrival rate (requests per second) at which the GPU or the link saturates.

    GPU: by Little's law a server that holds ``concurrency`` requests at once, each
    for ``server_seconds``, completes at most concurrency / server_seconds per second.
    Link: each direction carries at most usable bits / (bytes per request x 8)
    requests per second. The lower of the two is where queues start to grow."""
    out: dict[str, Any] = {"gpu_requests_per_second": None, "link_requests_per_second": None,
                           "arrival_rate_per_second": None, "limited_by": None}
    evidence: list[str] = []
    c = concurrency or 1.0
    if server_seconds and server_seconds > 0:
        out["gpu_requests_per_second"] = c / server_seconds
        evidence.append(f"server time {server_seconds:.3g} s per request at {c:g} concurrent "
                        f"requests: the GPU serves at most {c / server_seconds:.3g} requests/s")
    usable = link.usable_bits_per_second
    biggest = max((b for b in (request_bytes, response_bytes) if b), default=None)
    if usable and biggest:
        out["link_requests_per_second"] = usable / (biggest * 8)
        evidence.append(f"{size(biggest)} per request (the larger direction) over "
                        f"{rate(usable)}: the link carries at most "
                        f"{usable / (biggest * 8):.3g} requests/s")
    limits = {k: v for k, v in (("gpu", out["gpu_requests_per_second"]),
                                ("link", out["link_requests_per_second"])) if v}
    if limits:
        which = min(limits, key=lambda k: limits[k])
        out["arrival_rate_per_second"], out["limited_by"] = limits[which], which
        evidence.append(f"this host saturates at about {limits[which]:.3g} requests/s, "
                        f"limited by the {'GPU' if which == 'gpu' else 'link'}")
    else:
        evidence.append("the recording has neither server times nor request sizes with a "
                        "known link rate: saturation not computed")
    return out, evidence
