"""The engine probe against real HTTP servers on loopback serving each engine's
metrics page (tests/engine_pages.py), and its exposition-format reader."""

from __future__ import annotations

import math

import pytest

from ai_bottleneck.probes.base import OptionError, Sample
from ai_bottleneck.probes.engine import EngineProbe, create
from ai_bottleneck.probes.promtext import Histogram, parse
from tests.engine_pages import PAGES, EngineState, metrics_server, vllm


def _probe(url: str, **target: object) -> EngineProbe:
    return create({"targets": [{"url": url, **target}] if target else [url]})


def _one(probe: EngineProbe) -> Sample:
    samples = probe.sample()
    assert len(samples) == 1
    return samples[0]


def _busy_state() -> EngineState:
    s = EngineState(running=8, waiting=3, kv_usage=0.62, preemptions=1,
                    prompt_tokens=1000, generation_tokens=5000, generation_seconds=100.0)
    s.finish(4, queue=0.02, ttft=0.1, inter_token=0.02, compute=1.0)
    return s


def _later(s: EngineState) -> None:
    """What happens between two scrapes: 10 requests finish slowly, counters grow."""
    s.finish(10, queue=2.0, ttft=0.3, inter_token=0.04, compute=4.0)
    s.preemptions += 5
    s.prompt_tokens += 2000
    s.generation_tokens += 1000
    s.generation_seconds += 50.0
    s.running, s.waiting, s.kv_usage = 16, 12, 0.99


# -- per engine: names detected, mapped, histograms turned into window quantities -----

EXPECTED_ABSENT = {
    "vllm": set(),
    "sglang": {"preemptions_total", "compute_seconds"},
    "tgi": {"kv_cache_usage_ratio", "preemptions_total", "time_to_first_token_seconds"},
    "triton": {"requests_running", "kv_cache_usage_ratio", "preemptions_total",
               "time_to_first_token_seconds", "inter_token_seconds", "prompt_tokens_total"},
    "llamacpp": {"preemptions_total", "queue_seconds", "time_to_first_token_seconds",
                 "compute_seconds"},
}


@pytest.mark.parametrize("engine", sorted(PAGES))
def test_each_engine_is_detected_and_mapped(engine: str) -> None:
    state = _busy_state()
    render = PAGES[engine]
    with metrics_server(render(state)) as server:
        probe = _probe(server.url)
        try:
            first = _one(probe)
            _later(state)
            server.page = render(state)
            second = _one(probe)
        finally:
            probe.close()
    assert first.ok and second.ok, (first.error, second.error)
    assert second.labels == {"engine": engine, "target": server.url}
    v = second.values
    # Gauges as read (Triton has no running gauge: absent, not zero).
    assert v["requests_waiting"] == 12
    if engine != "triton":
        assert v["requests_running"] == 16
    if engine in ("vllm", "sglang", "llamacpp"):
        assert v["kv_cache_usage_ratio"] == 0.99
    # Window quantities from what happened between the scrapes, not since start-up.
    if engine in ("vllm", "sglang", "tgi", "triton"):
        assert v["queue_seconds"] == pytest.approx(2.0)
    if engine in ("vllm", "sglang", "tgi"):
        # All 10 in the 1-2.5 s bucket: interpolated as Prometheus' histogram_quantile.
        assert v["queue_p95_seconds"] == pytest.approx(1.0 + 1.5 * 0.95)
    if engine in ("vllm", "sglang"):
        assert v["time_to_first_token_seconds"] == pytest.approx(0.3)
        assert v["inter_token_seconds"] == pytest.approx(0.04)
    if engine == "llamacpp":  # 50 s of generation for 1000 tokens
        assert v["inter_token_seconds"] == pytest.approx(0.05)
    if engine in ("vllm", "tgi", "triton"):
        assert v["compute_seconds"] == pytest.approx(4.0)
    if engine == "vllm":
        assert v["preemptions_total"] == 6
        assert v["kv_cache_capacity_tokens"] == 16000
    if engine != "triton":
        assert v["generation_tokens_total"] == 6000
    for name in EXPECTED_ABSENT[engine]:
        assert name not in v, name
    # The first scrape is the baseline: gauges, but no window latency yet.
    assert "queue_seconds" not in first.values
    assert first.values["requests_waiting"] == 3


def test_vllm_older_names_map_to_the_same_values() -> None:
    state = _busy_state()
    with metrics_server(vllm(state, old_names=True)) as server:
        probe = _probe(server.url)
        try:
            _one(probe)
            _later(state)
            server.page = vllm(state, old_names=True)
            v = _one(probe).values
        finally:
            probe.close()
    assert v["kv_cache_usage_ratio"] == 0.99          # from gpu_cache_usage_perc
    assert v["inter_token_seconds"] == pytest.approx(0.04)  # time_per_output_token


def test_configured_engine_reads_only_its_names_and_keeps_missing_ones_absent() -> None:
    page = "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 2\n"
    with metrics_server(page) as server:
        probe = _probe(server.url, engine="vllm", name="chat")
        try:
            s = _one(probe)
        finally:
            probe.close()
    assert s.ok and s.labels == {"engine": "vllm", "target": "chat"}
    assert dict(s.values) == {"requests_waiting": 2.0}


def test_restarted_server_counts_from_zero_again() -> None:
    state = _busy_state()
    with metrics_server(vllm(state)) as server:
        probe = _probe(server.url)
        try:
            _one(probe)
            fresh = EngineState(running=1)
            fresh.finish(2, queue=0.5, ttft=0.2, inter_token=0.01, compute=0.5)
            server.page = vllm(fresh)
            v = _one(probe).values
        finally:
            probe.close()
    assert v["queue_seconds"] == pytest.approx(0.5)  # never a negative delta


def test_no_finished_request_gives_no_latency() -> None:
    state = _busy_state()
    with metrics_server(vllm(state)) as server:
        probe = _probe(server.url)
        try:
            _one(probe)
            v = _one(probe).values
        finally:
            probe.close()
    assert "queue_seconds" not in v and "time_to_first_token_seconds" not in v
    assert v["requests_running"] == 8


# -- failures: one line, no secrets ------------------------------------------------------

def test_unknown_engine_is_a_failed_sample_that_says_so() -> None:
    with metrics_server("# TYPE http_requests_total counter\nhttp_requests_total 3\n") as srv:
        probe = _probe(srv.url)
        try:
            s = _one(probe)
        finally:
            probe.close()
    assert not s.ok and "no metric of a known engine" in (s.error or "")
    assert s.values == {}


def test_bad_status_and_refused_connection_are_failed_samples() -> None:
    with metrics_server("") as server:
        server.status = 503
        probe = _probe(server.url)
        try:
            s = _one(probe)
        finally:
            probe.close()
        url = server.url
    assert not s.ok and "status 503" in (s.error or "")
    probe = _probe(url)  # the server is gone now
    try:
        s = _one(probe)
    finally:
        probe.close()
    assert not s.ok and "cannot connect" in (s.error or "")


def test_credentials_and_query_never_reach_labels_or_errors() -> None:
    with metrics_server("") as server:
        port = server.url.split(":")[2].split("/")[0]
    secret = f"http://user:hunter2@127.0.0.1:{port}/metrics?token=hunter3"
    probe = _probe(secret)
    try:
        s = _one(probe)
    finally:
        probe.close()
    assert s.labels["target"] == f"http://127.0.0.1:{port}/metrics"
    assert "hunter" not in str(s.to_json())


def test_options_are_checked() -> None:
    with pytest.raises(OptionError, match="targets"):
        create({"targets": [{"url": "ftp://x/metrics"}]})
    with pytest.raises(OptionError, match="engine"):
        create({"targets": [{"url": "http://x/metrics", "engine": "ollama"}]})
    with pytest.raises(OptionError, match="two targets named"):
        create({"targets": ["http://x/metrics", "http://x/metrics"]})
    assert not create({}).check().usable


# -- the exposition reader --------------------------------------------------------------

def test_parser_reads_labels_escapes_exemplars_and_counts_bad_lines() -> None:
    page = parse(
        '# HELP a doc\n# TYPE a gauge\n'
        'a{model="x\\"y",path="c:\\\\d",note="l1\\nl2"} 1.5 1700000000\n'
        'a{model="z",} 2\n'
        'b_total 3 # {trace_id="abc"} 1.0\n'
        'c NaN\n'
        'broken{x="1" 2\n'
        'not a line\n')
    assert page.sum("a") == 3.5
    assert page.samples["a"][0][0] == {"model": 'x"y', "path": "c:\\d", "note": "l1\nl2"}
    assert page.sum("b_total") == 3
    assert page.sum("c") is None  # NaN is no value
    assert page.bad_lines == 2
    assert page.types == {"a": "gauge"}


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    h = Histogram(((0.1, 10.0), (1.0, 90.0), (math.inf, 100.0)), 30.0, 100.0)
    assert h.mean == 0.3
    assert h.quantile(0.5) == pytest.approx(0.1 + 0.9 * 40 / 80)
    assert h.quantile(0.95) == 1.0  # in the +Inf bucket: the largest finite bound
    assert Histogram((), 0.0, 0.0).quantile(0.95) is None
    summary_only = parse("x_sum 6\nx_count 3\n").histogram("x")
    assert summary_only is not None and summary_only.mean == 2.0
    assert summary_only.quantile(0.95) is None
