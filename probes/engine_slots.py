"""KV cache use of a llama.cpp server read from its ``/slots`` endpoint, for builds whose
``/metrics`` no longer exports ``llamacpp:kv_cache_usage_ratio`` (dropped in 2025).

``GET /slots`` (on by default; ``--no-slots`` turns it off) lists the server's slots,
each with its context size ``n_ctx`` and, while it serves a request (``is_processing``),
``n_prompt_tokens``: the tokens that request holds in the slot's KV cache, its prompt
plus what it has generated so far. The mapping:

- capacity = the sum of the slots' ``n_ctx`` (the KV cache in tokens, split among the
  slots: the server's layout when ``--parallel N`` is given);
- use = the tokens held by requests in progress / capacity. An idle slot keeps its last
  prompt for reuse; that cache is given up to the next request, so it counts as free.

With a unified cache (``--kv-unified``, llama.cpp's default when ``--parallel`` is not
given) every slot reports the whole context and the slots share it: the ratio then reads
low by the number of slots, so a full cache is missed, never invented. Neither endpoint
says which layout the server uses. docs/probes.md ("engine") says the same.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

#: A page of slots is a few kilobytes per slot; this is only a guard.
MAX_SLOTS_BYTES = 2**20


def slots_url(metrics_url: str) -> str | None:
    """The ``/slots`` URL beside a llama.cpp ``/metrics`` URL; None when the metrics URL
    does not end in ``/metrics`` (a proxy's own path: nothing to guess)."""
    try:
        url = httpx.URL(metrics_url)
    except httpx.InvalidURL:
        return None
    if not url.path.endswith("/metrics"):
        return None
    return str(url.copy_with(path=url.path[: -len("metrics")] + "slots", query=None,
                             fragment=None))


def kv_from_slots(document: Any) -> tuple[float | None, float | None]:
    """(use ratio, capacity in tokens) from a ``/slots`` answer; (None, None) when it
    is not the list of slots this reading expects."""
    if not isinstance(document, list) or not document:
        return None, None
    capacity = 0
    held = 0
    for slot in document:
        if not isinstance(slot, dict):
            return None, None
        n_ctx = slot.get("n_ctx")
        if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx <= 0:
            return None, None
        capacity += n_ctx
        if slot.get("is_processing") is True:
            tokens = slot.get("n_prompt_tokens")
            if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
                return None, None  # a build without the count: no value, never a zero
            held += min(tokens, n_ctx)
    return held / capacity, float(capacity)


def read_kv(client: httpx.Client, url: str, headers: dict[str, str],
            timeout_seconds: float) -> tuple[float | None, float | None]:
    """GET ``url`` (the server's /slots) and read its KV use; (None, None) when the
    endpoint is off, fails or answers something else: the metrics still count."""
    try:
        with client.stream("GET", url, headers=headers, timeout=timeout_seconds) as response:
            if response.status_code != 200:
                return None, None
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_SLOTS_BYTES:
                    return None, None
        return kv_from_slots(json.loads(body))
    except (httpx.HTTPError, ValueError):
        return None, None
