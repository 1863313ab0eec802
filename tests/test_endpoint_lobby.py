"""Connections between requests wait in one selector, not a thread each: idle ones
cost no thread, keep-alive and pipelined requests are served as before, over
plain HTTP and TLS. Real sockets on loopback against a real MetricsServer."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from pathlib import Path

from ai_bottleneck.endpoint import MetricsServer
from tests.test_endpoint_abuse import _connect, _held
from tests.test_probe_honesty import _wait
from tests.test_webconfig import client_context, populated_state, write
from tests.tlsfiles import Pki, make_pki


def _scrape_threads() -> int:
    return sum(t.name.startswith("scrape-") for t in threading.enumerate())


def _responses(sock: socket.socket | ssl.SSLSocket, n: int) -> list[bytes]:
    """Read ``n`` whole responses (each with a Content-Length) off ``sock``."""
    data, answers = b"", []
    deadline = time.monotonic() + 5
    while len(answers) < n and time.monotonic() < deadline:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            if len(rest) >= length:
                answers.append(head.split(b"\r\n")[0] + b" " + rest[:length])
                data = rest[length:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return answers


def test_idle_connections_hold_no_thread_and_a_keep_alive_one_frees_its_own() -> None:
    with MetricsServer(populated_state(), "127.0.0.1:0", process_metrics=False) as server:
        assert server.connections is not None
        conns = server.connections
        with _held(server.port, 100, "127.0.0.2"):
            _wait("100 connections accepted", lambda: conns.count() == 100)
            assert _scrape_threads() == 0  # before: one thread each, 100 of them
            client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            try:
                for _ in range(3):  # keep-alive: the same connection each time
                    client.request("GET", "/metrics")
                    response = client.getresponse()
                    assert response.status == 200 and response.read()
                assert conns.count() == 101  # still open...
                _wait("the scrape's thread to end", lambda: _scrape_threads() == 0)
                client.request("GET", "/healthz")  # ...and served again from the lobby
                assert client.getresponse().read() == b"ok\n"
            finally:
                client.close()
        _wait("the closed connections to be let go", lambda: conns.count() == 0)


def test_requests_sent_together_on_one_connection_are_all_answered_in_order() -> None:
    with MetricsServer(populated_state(), "127.0.0.1:0", process_metrics=False) as server, \
            _connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _responses(sock, 3) == [b"HTTP/1.1 200 OK ok\n",
                                       b"HTTP/1.1 404 Not Found not found\n",
                                       b"HTTP/1.1 200 OK ok\n"]


def test_over_tls_keep_alive_and_requests_sent_together_are_served(tmp_path: Path) -> None:
    pki: Pki = make_pki(tmp_path / "pki")
    config = write(tmp_path, f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                             f"  key_file: {pki.server_key}\n")
    with MetricsServer(populated_state(), "127.0.0.1:0", config,
                       process_metrics=False) as server:
        ctx = client_context(pki)
        with _held(server.port, 20, "127.0.0.2"):  # no ClientHello: they wait, threadless
            raw = _connect(server.port)
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                _wait("the handshake's thread to end", lambda: _scrape_threads() == 0)
                tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
                assert _responses(tls, 2) == [b"HTTP/1.1 200 OK ok\n"] * 2
                _wait("the TLS connection's thread to end", lambda: _scrape_threads() == 0)
                tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # from the lobby
                assert _responses(tls, 1) == [b"HTTP/1.1 200 OK ok\n"]


def test_a_stopped_server_closes_connections_waiting_between_requests() -> None:
    server = MetricsServer(populated_state(), "127.0.0.1:0", process_metrics=False)
    server.start()
    try:
        sock = _connect(server.port)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _responses(sock, 1) == [b"HTTP/1.1 200 OK ok\n"]
    finally:
        server.stop()
    try:
        assert sock.recv(1) == b""  # closed by the server, not left open
    finally:
        sock.close()
