"""KV cache use of a llama.cpp server from its /slots endpoint (probes/engine_slots.py),
for builds whose /metrics has no KV gauge: the mapping on documents of the shape the
server answers (captured from the CI build), and the probe against a real HTTP server on
loopback that serves both endpoints. The real server's own figures are checked in
tests/test_llama_server.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ai_bottleneck.probes.engine import create
from ai_bottleneck.probes.engine_slots import kv_from_slots, slots_url
from tests.engine_pages import EngineState, llamacpp


def _slot(n_ctx: int, processing: bool, tokens: int | None) -> dict[str, Any]:
    slot: dict[str, Any] = {"id": 0, "n_ctx": n_ctx, "is_processing": processing,
                            "next_token": [{"n_decoded": 18}]}
    if tokens is not None:
        slot["n_prompt_tokens"] = tokens
    return slot


def test_use_is_the_tokens_of_requests_in_progress_over_all_slots_contexts() -> None:
    # Slot 0 serves a request (1,404 prompt tokens + 18 generated); slot 1 is idle but
    # keeps its last request's 2,047 tokens for reuse: given up to the next request.
    usage, capacity = kv_from_slots([_slot(2048, True, 1422), _slot(2048, False, 2047)])
    assert capacity == 4096
    assert usage == pytest.approx(1422 / 4096)


def test_full_slots_read_full_and_idle_slots_read_empty() -> None:
    assert kv_from_slots([_slot(2048, True, 2040), _slot(2048, True, 2048)])[0] == (
        pytest.approx(4088 / 4096))
    assert kv_from_slots([_slot(1024, False, 0), _slot(1024, False, 900)]) == (0.0, 2048.0)
    # A count past the slot's context (never seen; a newer build's meaning) is capped.
    assert kv_from_slots([_slot(1024, True, 5000)]) == (1.0, 1024.0)


@pytest.mark.parametrize("document", [
    {"slots": []}, [], "slots", [_slot(2048, True, None)], [{"n_ctx": 0}],
    [_slot(2048, True, 10), "x"], [{"n_ctx": True, "is_processing": False}],
], ids=["object", "empty", "text", "no-count", "no-ctx", "junk", "bool"])
def test_anything_else_gives_no_value_never_a_zero(document: Any) -> None:
    assert kv_from_slots(document) == (None, None)


@pytest.mark.parametrize(("metrics", "slots"), [
    ("http://10.0.0.5:8080/metrics", "http://10.0.0.5:8080/slots"),
    ("https://llm.example/v1/metrics?token=s3cret", "https://llm.example/v1/slots"),
    ("http://10.0.0.5:8080/stats", None),
])
def test_the_slots_url_sits_beside_the_metrics_url(metrics: str, slots: str | None) -> None:
    assert slots_url(metrics) == slots


class _Llama:
    """A real HTTP server answering /metrics with a llama.cpp page and /slots with
    ``slots`` (a document, or a status code)."""

    def __init__(self, page: str, slots: Any) -> None:
        self.page, self.slots, self.paths = page, slots, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.paths.append(self.path)
                status, body = 200, owner.page.encode()
                if self.path == "/slots":
                    if isinstance(owner.slots, int):
                        status, body = owner.slots, b'{"error": "slots endpoint disabled"}'
                    else:
                        body = json.dumps(owner.slots).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/metrics"


@contextmanager
def _llama(page: str, slots: Any) -> Iterator[_Llama]:
    llama = _Llama(page, slots)
    thread = threading.Thread(target=llama.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield llama
    finally:
        llama.server.shutdown()
        llama.server.server_close()
        thread.join(timeout=5)


def _page(*, kv_gauge: bool) -> str:
    page = llamacpp(EngineState(running=2, waiting=3, kv_usage=0.25))
    return page if kv_gauge else "\n".join(
        line for line in page.splitlines() if "kv_cache" not in line) + "\n"


def test_a_build_without_the_gauge_gets_kv_use_from_its_slots() -> None:
    with _llama(_page(kv_gauge=False), [_slot(2048, True, 2000), _slot(2048, True, 1900)]) as s:
        probe = create({"targets": [s.url]})
        try:
            (sample,) = probe.sample()
        finally:
            probe.close()
    assert sample.ok, sample.error
    assert sample.values["kv_cache_usage_ratio"] == pytest.approx(3900 / 4096)
    assert sample.values["kv_cache_capacity_tokens"] == 4096
    assert sample.values["requests_waiting"] == 3
    assert s.paths == ["/metrics", "/slots"]


def test_a_build_with_the_gauge_is_read_from_its_metrics_alone() -> None:
    with _llama(_page(kv_gauge=True), [_slot(2048, True, 2000)]) as s:
        probe = create({"targets": [s.url]})
        try:
            (sample,) = probe.sample()
        finally:
            probe.close()
    assert sample.values["kv_cache_usage_ratio"] == 0.25
    assert s.paths == ["/metrics"]


def test_slots_turned_off_leaves_the_value_absent_and_the_sample_good() -> None:
    with _llama(_page(kv_gauge=False), 501) as s:
        probe = create({"targets": [s.url]})
        try:
            (sample,) = probe.sample()
        finally:
            probe.close()
    assert sample.ok, sample.error
    assert "kv_cache_usage_ratio" not in sample.values
    assert "kv_cache_capacity_tokens" not in sample.values
    assert sample.values["requests_running"] == 2
