"""The HTTP endpoint for the exporter: ``/metrics``, ``/`` and ``/healthz``.

``MetricsServer`` serves over HTTP/1.1 with keep-alive, one thread per
connection, with TLS and basic auth from an exporter web config file
(ai_bottleneck.webconfig). What it serves comes from ai_bottleneck.exporter.Exposition.
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ai_bottleneck import __version__
from ai_bottleneck.config import DEFAULT_LISTEN, parse_listen
from ai_bottleneck.exporter import Exposition
from ai_bottleneck.state import AgentState
from ai_bottleneck.webconfig import WebGuard, peer_sans

log = logging.getLogger("ai_bottleneck.exporter")


# -- HTTP ---------------------------------------------------------------------------------


class ListenError(RuntimeError):
    """The endpoint cannot bind its address (one line naming it)."""


_LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>ai-bottleneck</title></head>
<body><h1>ai-bottleneck {version}</h1>
<p>What is holding this AI service back right now: the GPU, the network, or neither?</p>
<ul><li><a href="metrics">metrics</a></li><li><a href="healthz">healthz</a></li></ul>
</body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection
    # Buffered: the status line, headers and body of a response leave in one send
    # (handle_one_request flushes after each request) instead of one for the
    # headers and one for the body.
    wbufsize = 64 * 1024
    server_version = f"ai-bottleneck/{__version__}"
    sys_version = ""
    server: _HTTPServer

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        loaded = self.server.guard.current()
        headers = dict(loaded.config.headers)
        path = self.path.split("?", 1)[0]
        if loaded.error is not None:
            self._send(500, b"web config invalid; see the agent's log\n", headers, head)
        elif loaded.limiter is not None and not loaded.limiter.allow():
            self._send(429, b"too many requests\n", headers, head)
        elif path == "/healthz":  # liveness without credentials: no figures, only reasons
            problems = self.server.exposition.problems()
            if problems:
                self._send(503, ("\n".join(problems) + "\n").encode(), headers, head)
            else:
                self._send(200, b"ok\n", headers, head)
        elif loaded.auth.enabled and loaded.auth.check(self.headers.get("Authorization")) is None:
            headers["WWW-Authenticate"] = 'Basic realm="ai-bottleneck", charset="UTF-8"'
            self._send(401, b"unauthorized\n", headers, head)
        elif path == "/metrics":
            body, content_type = self.server.exposition.render(self.headers.get("Accept", ""))
            self._send(200, body, headers, head, content_type)
        elif path == "/":
            page = _LANDING.format(version=html.escape(__version__)).encode()
            self._send(200, page, headers, head, "text/html; charset=utf-8")
        else:
            self._send(404, b"not found\n", headers, head)

    def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool,
              content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):  # called for every request: format only if kept
            log.debug("%s %s", self.address_string(), format % args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(self, sock: socket.socket, guard: WebGuard, exposition: Exposition, *,
                 max_connections: int, idle_timeout: float, handshake_timeout: float):
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        self.guard, self.exposition = guard, exposition
        self.max_connections, self.handshake_timeout = max_connections, handshake_timeout
        self.idle_timeout = idle_timeout
        # Per accepted socket: its thread and the socket it speaks on (the TLS one
        # once wrapped), so stop() can end keep-alive connections at once.
        self._live: dict[Any, tuple[threading.Thread, Any]] = {}
        self._live_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._live_lock:
            if len(self._live) >= self.max_connections:
                log.warning("refusing %s: %d connections open", client_address[0],
                            self.max_connections)
                self.shutdown_request(request)
                return
            thread = threading.Thread(target=self.process_request_thread,
                                      args=(request, client_address), daemon=True,
                                      name=f"scrape-{client_address[0]}")
            self._live[request] = (thread, request)
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._live_lock:
                self._live.pop(request, None)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Headers and body leave in separate writes; without this, Nagle's algorithm
        # holds the body until the client's delayed ACK (~40 ms per scrape).
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = self.guard.current().config.ssl_context
        if ctx is None:
            request.settimeout(self.idle_timeout)
            _Handler(request, client_address, self)
            return
        request.settimeout(self.handshake_timeout)
        try:
            conn = ctx.wrap_socket(request, server_side=True)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        with self._live_lock:
            if request in self._live:
                self._live[request] = (self._live[request][0], conn)
        try:
            allowed = self.guard.current().config.allowed_sans
            if allowed and not (peer_sans(conn.getpeercert()) & allowed):
                log.info("refusing %s: client certificate names none of client_allowed_sans",
                         client_address[0])
                return
            conn.settimeout(self.idle_timeout)
            _Handler(conn, client_address, self)
        finally:
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-request is normal; never a traceback on stderr.
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)

    def close_connections(self, timeout: float) -> None:
        with self._live_lock:
            live = list(self._live.values())
        for _thread, sock in live:
            with contextlib.suppress(OSError):  # already closed by its own thread
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread, _sock in live:
            thread.join(max(0.0, deadline - time.monotonic()))


def _listen_socket(host: str, port: int) -> socket.socket:
    """Bind ``host:port``; '' is every interface, IPv6 and IPv4 where the host has both."""
    if host == "":
        if socket.has_dualstack_ipv6():
            return socket.create_server(("::", port), family=socket.AF_INET6,
                                        dualstack_ipv6=True, backlog=64)
        return socket.create_server(("0.0.0.0", port), backlog=64)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _type, _proto, _name, address = infos[0]
    return socket.create_server(address[:2], family=family, backlog=64)


class MetricsServer:
    """The HTTP endpoint. ``start()`` binds and serves in a thread; ``stop()`` ends it.

    ``listen`` is HOST:PORT (ai_bottleneck.config.parse_listen; port 0 picks a free
    one, see ``port``). ``web_config_file`` is an exporter web config (TLS,
    basic auth); a bad one raises ai_bottleneck.webconfig.WebConfigError here, at
    construction; it is looked at again for changes (new certificates,
    users) at most every ``web_config_check_seconds``. Binding failures raise
    ListenError from ``start()``.
    """

    def __init__(self, state: AgentState, listen: str = DEFAULT_LISTEN,
                 web_config_file: Path | str | None = None, *,
                 process_metrics: bool = True, max_connections: int = 64,
                 idle_timeout: float = 120.0, handshake_timeout: float = 10.0,
                 web_config_check_seconds: float = 1.0):
        self.listen = listen
        self._host, self._port = parse_listen(listen)
        self.exposition = Exposition(state, process_metrics=process_metrics)
        self.guard = WebGuard(web_config_file, check_every=web_config_check_seconds)
        self._max_connections = max_connections
        self._timeouts = (idle_timeout, handshake_timeout)
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        try:
            sock = _listen_socket(self._host, self._port)
        except OSError as exc:
            # The plain reason: socket.create_server's own text repeats the address
            # as a Python tuple.
            if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
                reason = os.strerror(exc.errno)
            else:
                reason = exc.strerror or str(exc)
            raise ListenError(f"cannot listen on {self.listen}: {reason}") from None
        self._server = _HTTPServer(sock, self.guard, self.exposition,
                                   max_connections=self._max_connections,
                                   idle_timeout=self._timeouts[0],
                                   handshake_timeout=self._timeouts[1])
        self._thread = threading.Thread(target=self._server.serve_forever,
                                         kwargs={"poll_interval": 0.2},
                                         name="metrics-server", daemon=True)
        self._thread.start()
        log.info("serving metrics on %s", self.url)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close open connections, wait for their threads."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        thread.join(timeout)
        server.server_close()
        server.close_connections(timeout)
        self._server = self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL for this host's own clients (loopback when bound to every interface)."""
        scheme = "https" if self.guard.current().config.tls else "http"
        host = self._host or "localhost"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
