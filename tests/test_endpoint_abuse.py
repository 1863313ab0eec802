"""The endpoint outlives abuse: idle and slow clients, floods, long passwords.

Real sockets on loopback against a real MetricsServer. The abusers connect from
other loopback addresses (127.0.0.2, 127.0.0.3) where a test is about clients
being told apart, and from the scraper's own address where it is about a
client crowding itself out. Every socket is closed at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ai_bottleneck.endpoint import MetricsServer
from tests.test_webconfig import PASSWORD, basic, hashed, populated_state, write


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


@contextlib.contextmanager
def _held(port: int, n: int, source: str) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            socks.append(_connect(port, source))
        yield socks
    finally:
        for s in socks:
            s.close()


class _Drippers:
    """Clients sending a request one header byte at a time, for ever."""

    def __init__(self, port: int, n: int, source: str, every: float = 0.5) -> None:
        self.socks = [_connect(port, source) for _ in range(n)]
        self._stop = threading.Event()
        self._every = every
        self.closed_by_server = 0
        self._thread = threading.Thread(target=self._drip, daemon=True)
        self._thread.start()

    def _drip(self) -> None:
        payload = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
        i = 0
        while not self._stop.wait(self._every):
            for s in list(self.socks):
                try:
                    s.send(payload[i % len(payload):i % len(payload) + 1])
                except OSError:
                    self.socks.remove(s)
                    s.close()
                    self.closed_by_server += 1
            i += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.socks:
            s.close()


def _scrape(port: int, headers: dict[str, str] | None = None,
            path: str = "/metrics") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("abusers", [("127.0.0.2", "127.0.0.3"), ("127.0.0.1", "127.0.0.1")])
def test_idle_and_slow_drip_clients_never_starve_a_scraper(abusers: tuple[str, str]) -> None:
    idle_from, drip_from = abusers
    with MetricsServer(populated_state(), "127.0.0.1:0", process_metrics=False,
                       request_timeout=30) as server, \
            _held(server.port, 200, idle_from) as _idle:
        drippers = _Drippers(server.port, 64, drip_from)
        try:
            time.sleep(1.0)  # every abuser connected and dripping
            statuses = [_scrape(server.port)[0] for _ in range(30)]
        finally:
            drippers.close()
    assert statuses == [200] * 30


def test_a_client_over_its_connection_limit_loses_its_oldest_idle_one() -> None:
    with MetricsServer(populated_state(), "127.0.0.1:0", process_metrics=False,
                       max_connections_per_client=8) as server, \
            _held(server.port, 8, "127.0.0.2") as idle:
        time.sleep(0.3)
        assert _scrape(server.port)[0] == 200  # another client: untouched
        with _held(server.port, 1, "127.0.0.2") as extra:
            time.sleep(0.3)
            assert idle[0].recv(1) == b""  # the oldest was closed to make room
            extra[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert extra[0].recv(100).startswith(b"HTTP/1.1 200")
        assert server.connections is not None and server.connections.evicted >= 1


def test_the_whole_request_has_a_deadline_not_each_read() -> None:
    with MetricsServer(populated_state(), "127.0.0.1:0", process_metrics=False,
                       request_timeout=1.5, idle_timeout=1.0) as server:
        drippers = _Drippers(server.port, 3, "127.0.0.2", every=0.2)
        idle = _connect(server.port)
        try:
            started = time.monotonic()
            assert idle.recv(1) == b""  # an idle connection goes after idle_timeout
            deadline = time.monotonic() + 10
            while drippers.closed_by_server < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            dripped_for = time.monotonic() - started
        finally:
            drippers.close()
            idle.close()
    assert drippers.closed_by_server == 3, "a client dripping a byte every 0.2 s stayed"
    assert dripped_for < 8


def _auth_config(tmp_path: Path, rate_limit: str = "") -> Path:
    return write(tmp_path, f"basic_auth_users:\n  prometheus: {hashed(PASSWORD)}\n{rate_limit}")


def test_an_unauthenticated_flood_does_not_spend_prometheus_rate_limit(tmp_path: Path) -> None:
    path = _auth_config(tmp_path, "rate_limit:\n  interval: 1s\n  burst: 5\n")
    with MetricsServer(populated_state(), "127.0.0.1:0", path, process_metrics=False) as server:
        flood = []
        for _ in range(40):
            with _held(server.port, 1, "127.0.0.2") as (sock,):
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                flood.append(sock.recv(100)[:12])
        assert set(flood) == {b"HTTP/1.1 401"}
        assert [_scrape(server.port, basic("prometheus", PASSWORD))[0]
                for _ in range(3)] == [200] * 3
        assert [_scrape(server.port, path=p)[0] for p in ("/healthz", "/-/healthy")] == [200] * 2


def test_a_password_over_72_bytes_is_a_401_and_a_log_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _auth_config(tmp_path)
    with MetricsServer(populated_state(), "127.0.0.1:0", path, process_metrics=False) as server, \
            caplog.at_level(logging.WARNING):
        status, _headers, _body = _scrape(server.port, basic("prometheus", "p" * 100))
    assert status == 401
    assert any("72 bytes" in r.getMessage() for r in caplog.records), caplog.text


def test_wrong_passwords_are_throttled_per_client(tmp_path: Path) -> None:
    path = _auth_config(tmp_path)
    with MetricsServer(populated_state(), "127.0.0.1:0", path, process_metrics=False) as server:
        wrong = [_scrape(server.port, basic("prometheus", "guess"))[0] for _ in range(5)]
        status, headers, _ = _scrape(server.port, basic("prometheus", PASSWORD))
        assert wrong[:3] == [401] * 3 and set(wrong[3:]) == {429}
        assert status == 429 and int(headers["Retry-After"]) >= 1  # the guesser's address
        with _held(server.port, 1, "127.0.0.2") as (other,):  # another client: not throttled
            token = basic("prometheus", PASSWORD)["Authorization"]
            other.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n"
                          f"Connection: close\r\n\r\n".encode())
            assert other.recv(100).startswith(b"HTTP/1.1 200")


def test_gzip_when_asked() -> None:
    with MetricsServer(populated_state(), "127.0.0.1:0", process_metrics=False) as server:
        status, headers, body = _scrape(server.port, {"Accept-Encoding": "gzip, br"})
        plain_status, plain_headers, plain = _scrape(server.port)
        refused = _scrape(server.port, {"Accept-Encoding": "gzip;q=0, identity"})[1]
    assert status == plain_status == 200
    assert headers["Content-Encoding"] == "gzip" and "Content-Encoding" not in plain_headers
    assert "Content-Encoding" not in refused
    text = gzip.decompress(body).decode()
    assert {f.name for f in text_string_to_metric_families(text)} == \
        {f.name for f in text_string_to_metric_families(plain.decode())}
    assert len(body) < len(plain) / 3


def test_a_request_cut_short_by_its_deadline_is_not_answered() -> None:
    # http.server reads a header block ended by the shutdown as complete: before,
    # a slow client reaching its deadline had /metrics rendered for it (the soak's
    # 64 slow clients, shut at one deadline, held real scrapes up for 100-330 ms).
    with MetricsServer(populated_state(), "127.0.0.1:0", process_metrics=False,
                       request_timeout=0.5) as server:
        rendered: list[str] = []
        render = server.exposition.render

        def counting(accept: str = "") -> tuple[bytes, str]:
            rendered.append(accept)
            return render(accept)

        server.exposition.render = counting  # type: ignore[method-assign]
        slow = [_connect(server.port, "127.0.0.2") for _ in range(4)]
        try:
            for s in slow:  # the request line and a header at once, then a byte a while
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            answers = [b""] * len(slow)
            deadline = time.monotonic() + 10
            open_ = list(slow)
            while open_ and time.monotonic() < deadline:
                for s in open_:
                    with contextlib.suppress(OSError):
                        s.send(b"a")
                readable, _w, _x = select.select(open_, [], [], 0.1)
                for s in readable:
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    answers[slow.index(s)] += data or b"<closed>"
                    if not data:
                        open_.remove(s)
        finally:
            for s in slow:
                s.close()
        time.sleep(0.3)  # their threads have finished
        assert answers == [b"<closed>"] * len(slow), [a[:40] for a in answers]
        assert rendered == [], f"{len(rendered)} requests cut short were answered"
        assert _scrape(server.port)[0] == 200
        assert len(rendered) == 1  # the spy sees real scrapes


def test_a_burst_of_connections_fits_the_accept_queue() -> None:
    # 300 clients connecting at once while the server cannot accept (its connection
    # table is held): each must complete its handshake in the accept queue. With
    # a queue of 64 the kernel dropped the SYNs of the rest, and each of them (a
    # scrape among them) waited a second for its retry.
    n = 300
    with MetricsServer(populated_state(), "127.0.0.1:0", process_metrics=False) as server:
        assert server.connections is not None
        socks: list[socket.socket] = []
        with server.connections._lock:  # the accept thread stops at its next admit()
            try:
                for _ in range(n):
                    s = socket.socket()
                    s.bind(("127.0.0.2", 0))
                    s.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        s.connect(("127.0.0.1", server.port))
                    socks.append(s)
                deadline = time.monotonic() + 0.8  # under the 1 s SYN retry
                pending = set(socks)
                while pending and time.monotonic() < deadline:
                    _r, writable, _x = select.select([], list(pending), [], 0.05)
                    pending -= set(writable)
                established = n - len(pending)
            finally:
                for s in socks:
                    s.close()
    assert established == n, f"only {established} of {n} connections were queued"
