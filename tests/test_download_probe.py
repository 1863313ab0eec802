"""The download probe against real servers: paced on loopback, and through a real
10 Mbit/s link (tc tbf in a network namespace)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ai_bottleneck.probes.download import CACHE_BUST_PARAM, DownloadProbe, create
from ai_bottleneck.probes.options import OptionError
from ai_bottleneck.probes.sample import Sample
from tests.netns import netns_link
from tests.servers import HttpServer, ServerConfig, subprocess_server


@contextmanager
def probe(**options: Any) -> Iterator[DownloadProbe]:
    p = create(options)
    try:
        yield p
    finally:
        p.close()


def one(p: DownloadProbe) -> Sample:
    samples = p.sample()
    assert len(samples) == 1, samples
    return samples[0]


def test_measures_the_rate_the_server_sends_at() -> None:
    # 2 MB/s = 16 Mbit/s, paced by the server; the time cap ends the download.
    config = ServerConfig("stream", body_bytes=20_000_000, body_rate=2e6)
    with HttpServer(config) as server, probe(url=server.url("/file"), max_seconds=1.5,
                                             warmup_seconds=0.3) as p:
        sample = one(p)
        seen = server.stats.requests[0]
    assert sample.error is None, sample.error
    assert sample.probe == "download" and sample.labels == {"url": server.url("/file")}
    values = sample.values
    assert abs(values["bits_per_second"] / 16e6 - 1) < 0.15
    assert 1.4 <= values["seconds"] <= 1.6
    assert values["bytes"] < 4_000_000
    assert values["measured_bytes"] < values["bytes"]  # the warm-up is left out
    assert 0.9 <= values["measured_seconds"] <= 1.3
    assert seen.headers["accept-encoding"] == "identity"
    assert seen.headers["range"] == "bytes=0-49999999"


def test_byte_cap_is_never_exceeded() -> None:
    config = ServerConfig("stream", body_bytes=30_000_000)
    with HttpServer(config) as server, probe(url=server.url("/"), max_bytes="5MB",
                                             range_request=False) as p:
        values = one(p).values
        assert "range" not in server.stats.requests[0].headers
    assert values["bytes"] == 5_000_000
    assert values["bits_per_second"] > 0
    # The cap was reached long before the 10 s time cap.
    assert values["seconds"] < 5


def test_small_file_has_no_rate() -> None:
    with HttpServer(ServerConfig("stream", body_bytes=1000)) as server, \
            probe(url=server.url("/")) as p:
        sample = one(p)
    assert sample.error is None
    assert sample.values["bytes"] == 1000
    assert "bits_per_second" not in sample.values  # one read cannot be timed


def test_cache_bust_adds_a_fresh_query_parameter() -> None:
    with HttpServer(ServerConfig("stream", body_bytes=100_000)) as server, \
            probe(url=server.url("/f?v=1"), cache_bust=True) as p:
        one(p)
        one(p)
        targets = [r.target for r in server.stats.requests]
    assert len(targets) == 2 and targets[0] != targets[1]
    for target in targets:
        assert target.startswith(f"/f?v=1&{CACHE_BUST_PARAM}=")


@pytest.mark.parametrize(("kind", "path", "error"), [
    ("stream", "/?status=404", "status 404 from {url}"),
    ("reset", "/", "no response from 127.0.0.1:{port}: connection reset by the peer"),
    ("hang", "/", "timed out after 0.5s waiting for the response (no byte of it yet)"),
    ("stream", "/?bytes=0", "empty response body from {url}"),
])
def test_failures_are_failed_samples(kind: str, path: str, error: str) -> None:
    with HttpServer(ServerConfig(kind)) as server, \
            probe(url=server.url(path), max_seconds=0.5) as p:
        started = time.monotonic()
        sample = one(p)
        elapsed = time.monotonic() - started
    assert sample.error == error.format(url=server.url(path), port=server.port)
    assert elapsed < 2.0


def test_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with probe(url=f"http://127.0.0.1:{port}/") as p:
            sample = one(p)
    assert sample.error == f"cannot connect to 127.0.0.1:{port}: connection refused"


def test_defaults_and_availability() -> None:
    with probe() as p:
        assert p.active is True
        assert p.interval_seconds == 300
        assert not p.check().usable
        assert p.check().reason.startswith("no url configured")
    with probe(url="http://127.0.0.1:9/big", max_seconds="20s") as p:
        assert p.check().usable
        assert p.timeout_seconds > 20


@pytest.mark.parametrize(("options", "key"), [
    ({"url": "file:///etc/passwd"}, ""),
    ({"url": "http://a.test/", "max_bytes": 0}, "max_bytes"),
    ({"url": "http://a.test/", "max_seconds": "forever"}, "max_seconds"),
    ({"url": "http://a.test/", "cache_bust": "on"}, "cache_bust"),
    ({"size": 1}, "size"),
])
def test_bad_options_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(OptionError) as info:
        create(options)
    message = str(info.value)
    assert message.startswith(f"{key}:" if key else "url must be an http")
    assert "\n" not in message


@pytest.mark.root
def test_measures_a_10mbit_link_within_10_percent() -> None:
    with netns_link(rate_in_bits_per_second=10e6, rate_out_bits_per_second=10e6) as link, \
            subprocess_server("stream", bind=link.ns_addr, launcher=link.popen,
                              body_bytes=100_000_000) as (host, port), \
            probe(url=f"http://{host}:{port}/big", max_seconds=3.0, warmup_seconds=0.5) as p:
        sample = one(p)
    assert sample.error is None, sample.error
    values = sample.values
    assert abs(values["bits_per_second"] / 10e6 - 1) <= 0.10
    # The time cap held: no more than 3 s at 10 Mbit/s (plus the tbf burst) came in.
    assert values["bytes"] <= 3.0 * 10e6 / 8 + 100_000
    assert values["seconds"] <= 3.05
