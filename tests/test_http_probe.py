"""The HTTP probe against real servers: on loopback, and through a real 10 Mbit/s link.

Each server puts its time in one place (before answering, while reading the
upload, while sending the body); the probe must report it in that phase.
Tolerances allow for a busy 2-core machine: lower bounds come from what the
server enforces (it cannot answer before its delay), upper bounds are loose.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ai_bottleneck.discovery import discover
from ai_bottleneck.probes.http import HttpProbe, create
from ai_bottleneck.probes.options import OptionError
from ai_bottleneck.probes.sample import Sample
from tests.netns import netns_link
from tests.servers import TEST_CERT, HttpServer, ServerConfig, subprocess_server

PHASES = ("dns_seconds", "connect_seconds", "tls_seconds", "upload_seconds",
          "server_seconds", "download_seconds")


@contextmanager
def probe(**options: Any) -> Iterator[HttpProbe]:
    p = create(options)
    try:
        yield p
    finally:
        p.close()


def one(samples: Sequence[Sample]) -> Sample:
    assert len(samples) == 1, samples
    return samples[0]


def ok(sample: Sample) -> dict[str, float]:
    assert sample.error is None, sample.error
    assert all(math.isfinite(v) for v in sample.values.values())
    return dict(sample.values)


def assert_phases_add_up(values: dict[str, float]) -> None:
    """The phases are consecutive slices of the call: they never sum past the total,
    and only bookkeeping between them is left over."""
    parts = sum(values.get(p, 0.0) for p in PHASES)
    assert parts <= values["total_seconds"] + 1e-6
    assert values["total_seconds"] - parts < 0.1


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that is bound (nobody else gets it) but not listening: refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- where the time goes ------------------------------------------------------------

def test_server_time_is_server_phase() -> None:
    with HttpServer(ServerConfig("delay", delay_seconds=0.4)) as server, \
            probe(targets=[{"url": server.url("/"), "name": "api"}]) as p:
        sample = one(p.sample())
    values = ok(sample)
    assert sample.probe == "http" and sample.labels == {"target": "api"}
    assert 0.39 <= values["server_seconds"] <= 0.9
    assert values["upload_seconds"] < 0.15
    assert values["download_seconds"] < 0.15
    assert values["status"] == 200
    assert values["concurrency"] == 1
    assert "connect_seconds" in values
    assert "dns_seconds" not in values  # an address literal: nothing was resolved
    assert "tls_seconds" not in values  # plain HTTP
    assert_phases_add_up(values)


def test_upload_time_is_upload_phase() -> None:
    # The server reads 2 MB at 4 MB/s (0.5 s) through a small receive buffer: the
    # probe's writes finish early into its own send buffer, and the probe must
    # still count the time until the bytes left as upload, not as server time.
    config = ServerConfig("sink", read_rate=4e6, rcvbuf=65536)
    with HttpServer(config) as server, probe(targets=[{
            "url": server.url("/upload"), "method": "POST", "body_bytes": 2_000_000}]) as p:
        values = ok(one(p.sample()))
        assert [r.body_bytes for r in server.stats.requests] == [2_000_000]
    assert 0.3 <= values["upload_seconds"] <= 1.5
    assert values["server_seconds"] < 0.25
    assert values["download_seconds"] < 0.15
    assert values["request_bytes"] > 2_000_000  # the body and the request headers
    assert_phases_add_up(values)


def test_slow_body_is_download_phase() -> None:
    config = ServerConfig("stream", body_bytes=1_000_000, body_rate=2e6)  # 0.5 s of body
    with HttpServer(config) as server, probe(targets=[{"url": server.url("/")}]) as p:
        values = ok(one(p.sample()))
    assert 0.4 <= values["download_seconds"] <= 1.2
    assert values["server_seconds"] < 0.15
    assert values["upload_seconds"] < 0.15
    assert values["response_bytes"] > 1_000_000
    assert_phases_add_up(values)


def test_dns_is_timed_apart_from_connect() -> None:
    with HttpServer(ServerConfig("delay")) as server:
        url = f"http://localhost:{server.port}/"  # resolved through /etc/hosts
        with probe(targets=[{"url": url}]) as p:
            sample = one(p.sample())
        assert server.stats.requests[0].headers["host"] == f"localhost:{server.port}"
    values = ok(sample)
    assert sample.labels == {"target": url}
    assert values["dns_seconds"] >= 0
    assert values["connect_seconds"] >= 0
    assert_phases_add_up(values)


def test_tls_phase_and_certificate_check() -> None:
    with HttpServer(ServerConfig("delay", tls_cert=TEST_CERT)) as server:
        target = [{"url": server.url("/")}]
        with probe(targets=target, ca_file=str(TEST_CERT)) as p:
            good = ok(one(p.sample()))
        with probe(targets=target) as p:  # the bundled CAs do not know the test cert
            bad = one(p.sample())
    assert good["tls_seconds"] > 0
    assert good["status"] == 200
    assert_phases_add_up(good)
    assert bad.error is not None
    assert bad.error.startswith("TLS handshake with 127.0.0.1:")
    assert "certificate verify failed" in bad.error


# -- failures are samples, never exceptions --------------------------------------------

def test_connection_reset() -> None:
    with HttpServer(ServerConfig("reset")) as server, \
            probe(targets=[{"url": server.url("/")}]) as p:
        sample = one(p.sample())
    assert sample.error == f"no response from 127.0.0.1:{server.port}: connection reset " \
                           "by the peer"
    assert sample.values == {}


def test_ipv6_loopback() -> None:
    try:
        server = HttpServer(ServerConfig("delay"), bind="::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with server, probe(targets=[{"url": server.url("/")}, {"url": "http://[::1]:1/"}]) as p:
        good, refused = p.sample()
    assert server.url("/").startswith("http://[::1]:")
    assert ok(good)["status"] == 200
    assert refused.error == "cannot connect to [::1]:1: connection refused"


def test_refused(closed_port: int) -> None:
    with probe(targets=[{"url": f"http://127.0.0.1:{closed_port}/"}]) as p:
        sample = one(p.sample())
    assert sample.error == f"cannot connect to 127.0.0.1:{closed_port}: connection refused"


def test_server_that_never_answers_is_cut_at_the_timeout() -> None:
    with HttpServer(ServerConfig("hang")) as server, probe(
            targets=[{"url": server.url("/"), "timeout_seconds": 0.5}], concurrency=3) as p:
        started = time.monotonic()
        samples = p.sample()
        elapsed = time.monotonic() - started
    assert len(samples) == 3
    for sample in samples:
        assert sample.error == "timed out after 0.5s waiting for the response (no byte of " \
                               "it yet)"
    assert elapsed < 2.0  # the timeout bounds the sample; the slack is for a busy machine


def test_trickling_body_is_cut_at_the_timeout_of_the_whole_call() -> None:
    # Every read gets a byte well within any per-read timeout; only a limit on the
    # whole call stops it.
    config = ServerConfig("stream", body_bytes=1_000_000, body_rate=100_000)
    with HttpServer(config) as server, probe(
            targets=[{"url": server.url("/"), "timeout_seconds": 0.6}]) as p:
        started = time.monotonic()
        sample = one(p.sample())
        elapsed = time.monotonic() - started
    assert sample.error is not None
    assert sample.error.startswith("timed out after 0.6s reading the response (")
    assert sample.values == {"status": 200}
    assert elapsed < 2.0


def test_unexpected_status() -> None:
    with HttpServer(ServerConfig("delay")) as server, probe(targets=[
            {"url": server.url("/?status=503"), "name": "down"},
            {"url": server.url("/"), "name": "wants-201", "expect_status": 201},
            {"url": server.url("/?status=404"), "name": "404-ok", "expect_status": [200, 404]},
    ]) as p:
        down, wants, fine = p.sample()
    assert down.error == f"status 503 from {server.url('/?status=503')}, expected below 400"
    assert down.values == {"status": 503}
    assert wants.error == f"status 200 from {server.url('/')}, expected 201"
    assert ok(fine)["status"] == 404


# -- concurrency, connections, bodies ----------------------------------------------

def test_concurrent_calls_run_at_once() -> None:
    with HttpServer(ServerConfig("delay", delay_seconds=0.3)) as server, probe(
            targets=[{"url": server.url("/"), "method": "POST", "body_bytes": 10_000}],
            concurrency=5) as p:
        samples = p.sample()
        assert server.stats.peak_in_flight == 5
        assert server.stats.connections == 5
    assert len(samples) == 5
    for sample in samples:
        values = ok(sample)
        assert values["concurrency"] == 5
        assert values["server_seconds"] >= 0.29


def test_cold_connections_by_default_and_keep_alive_on_request() -> None:
    with HttpServer(ServerConfig("delay")) as server:
        with probe(targets=[{"url": server.url("/")}]) as p:
            cold = [one(p.sample()) for _ in range(3)]
        assert server.stats.connections == 3
        with probe(targets=[{"url": server.url("/")}], keep_alive=True) as p:
            warm = [one(p.sample()) for _ in range(3)]
        assert server.stats.connections == 4
    assert all("connect_seconds" in ok(s) for s in cold)
    assert "connect_seconds" in ok(warm[0])
    for sample in warm[1:]:
        values = ok(sample)
        assert "connect_seconds" not in values  # no connection was made for this call
        assert_phases_add_up(values)


def test_body_from_file(tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(bytes(range(256)) * 400)
    with HttpServer(ServerConfig("sink")) as server, probe(targets=[
            {"url": server.url("/ocr"), "method": "PUT", "body_file": str(image)}]) as p:
        values = ok(one(p.sample()))
        seen = server.stats.requests[0]
    assert (seen.method, seen.body_bytes) == ("PUT", 102_400)
    assert seen.headers["content-type"] == "image/png"
    assert values["request_bytes"] > 102_400


def test_missing_body_file_makes_the_probe_unusable(tmp_path: Path) -> None:
    missing = tmp_path / "gone.jpg"
    with probe(targets=[{"url": "http://127.0.0.1:9/", "body_file": str(missing),
                         "name": "upload"}]) as p:
        availability = p.check()
        sample = one(p.sample())
    assert not availability.usable
    assert availability.reason == f"target upload: body_file {missing} not found"
    assert sample.error == f"body_file {missing} not found"


def test_environment_proxies_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    with HttpServer(ServerConfig("delay")) as proxy, HttpServer(ServerConfig("delay")) as api:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url("/"))
        with probe(targets=[{"url": api.url("/")}]) as p:
            ok(one(p.sample()))
        assert proxy.stats.connections == 0
        assert api.stats.connections == 1


# -- options ------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "key"), [
    ({"targets": [{"url": "ftp://example.test/"}]}, "targets[0]"),
    ({"targets": [{"url": "http://a.test/", "method": "FETCH"}]}, "targets[0].method"),
    ({"targets": [{"url": "http://a.test/", "timeout_seconds": "soon"}]},
     "targets[0].timeout_seconds"),
    ({"targets": [{"url": "http://a.test/", "body_bytes": "5MB", "body_file": "/x"}]},
     "targets[0]"),
    ({"targets": [{"url": "http://a.test/", "expect_status": 1000}]}, "targets[0]"),
    ({"targets": [{"url": "http://a.test/"}, {"url": "http://a.test/"}]}, "targets"),
    ({"targets": [{}]}, "targets[0].url"),
    ({"concurrency": 0}, "concurrency"),
    ({"keep_alive": "yes"}, "keep_alive"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_options_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(OptionError) as info:
        create(options)
    assert str(info.value).startswith(f"{key}:")
    assert "\n" not in str(info.value)


def test_options_accept_sizes_and_durations() -> None:
    with probe(targets=[{"url": "http://a.test/", "body_bytes": "5MB",
                         "timeout_seconds": "2500ms", "expect_status": [200, 204]}],
               interval_seconds="1m") as p:
        target = p.options.targets[0]
        assert target.body_bytes == 5_000_000
        assert target.timeout_seconds == 2.5
        assert target.expected_statuses() == (200, 204)
        assert p.interval_seconds == 60
        assert p.timeout_seconds >= 2.5
        assert p.active is False


def test_discovered_without_targets_and_unusable() -> None:
    (found,) = discover(only=["http"])
    assert found.source == "ai_bottleneck.probes.http:create"
    assert not found.usable
    assert found.availability.reason.startswith("no targets configured")


# -- through a real 10 Mbit/s link (root) ------------------------------------------

@pytest.mark.root
def test_upload_through_10mbit_link_is_upload_time() -> None:
    # 5 MB at 10 Mbit/s takes at least 4 s on the wire. The socket's send buffer
    # (autotuned: about 0.6 s worth here) takes the last writes at once; a probe
    # that stopped the upload clock at its last write would report that as server
    # time.
    with netns_link(rate_in_bits_per_second=10e6, rate_out_bits_per_second=10e6) as link, \
            subprocess_server("sink", bind=link.ns_addr, launcher=link.popen) as (host, port), \
            probe(targets=[{"url": f"http://{host}:{port}/", "method": "POST",
                            "body_bytes": "5MB", "timeout_seconds": 20}]) as p:
        values = ok(one(p.sample()))
    wire_seconds = 5e6 * 8 / 10e6
    assert values["upload_seconds"] >= 0.8 * wire_seconds
    assert values["upload_seconds"] <= 2 * wire_seconds
    assert values["server_seconds"] < 0.25
    assert_phases_add_up(values)


@pytest.mark.root
def test_dns_failure_is_a_failed_sample() -> None:
    # Inside a namespace whose resolver is a loopback address where nothing
    # listens: the lookup fails at once and no query leaves the namespace.
    script = (
        "import json; from ai_bottleneck.probes.http import create\n"
        "p = create({'targets': [{'url': 'http://api.nowhere.test/', 'timeout_seconds': 5}]})\n"
        "print(json.dumps(p.sample()[0].to_json())); p.close()\n"
    )
    with netns_link() as link:
        etc = Path("/etc/netns") / link.ns
        try:
            etc.mkdir(parents=True)
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions attempts:1\n")
            result = link.run([sys.executable, "-c", script], timeout=30)
        finally:
            shutil.rmtree(etc, ignore_errors=True)
            with_others = Path("/etc/netns")
            if with_others.is_dir() and not any(with_others.iterdir()):
                with_others.rmdir()
    assert result.returncode == 0, result.stderr
    sample = json.loads(result.stdout)
    assert sample["error"].startswith("DNS lookup of api.nowhere.test failed: ")
    assert "values" not in sample


def test_subprocess_server_starts_and_stops() -> None:
    with subprocess_server("delay", delay_seconds=0.2) as (host, port), \
            probe(targets=[{"url": f"http://{host}:{port}/"}]) as p:
        values = ok(one(p.sample()))
    assert values["server_seconds"] >= 0.19
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, port), 2):
        pass
