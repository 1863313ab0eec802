"""The HTTP endpoint for the exporter: ``/metrics``, ``/``, ``/healthz`` and ``/-/healthy``.

``MetricsServer`` serves over HTTP/1.1 with keep-alive, a thread per request being
served (between requests a connection waits in ai_bottleneck.endpoint_lobby's one
selector), with TLS and basic auth from an exporter web config file
(ai_bottleneck.webconfig). What it serves comes from ai_bottleneck.exporter.Exposition.
"""

from __future__ import annotations

import contextlib
import gzip
import html
import io
import logging
import math
import os
import socket
import socketserver
import threading
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ai_bottleneck import __version__
from ai_bottleneck.config import DEFAULT_LISTEN, parse_listen
from ai_bottleneck.endpoint_guard import Connection, Connections, LoginThrottle
from ai_bottleneck.endpoint_lobby import Lobby
from ai_bottleneck.exporter import Exposition
from ai_bottleneck.http_handler import HTTPHandler, accepts_gzip
from ai_bottleneck.state import AgentState
from ai_bottleneck.webguard import WebGuard, peer_sans

log = logging.getLogger("ai_bottleneck.exporter")
#: Renders the page at / from the request's query string (the agent's live page).
Page = Callable[[str], bytes]


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


class _Handler(HTTPHandler):
    # Keep-alive (Prometheus reuses its connection); unbuffered writes (HTTPHandler):
    # a 64 KiB write buffer per connection, idle ones included, cost 17 MB with 264
    # connections open and fragmented the heap as they came and went.
    server_version = f"ai-bottleneck/{__version__}"
    server: _HTTPServer

    def __init__(self, request: Any, client_address: Any, server: _HTTPServer) -> None:
        # Set up only: the server calls serve_ready() each time the connection's
        # next request has begun to arrive, with a new handler.
        self.request, self.client_address, self.server = request, client_address, server
        self.setup()

    def serve_ready(self, begun: bool = True) -> bool:
        """Serve the requests whose bytes have begun to arrive (``begun``: the lobby
        saw some; else, after a TLS handshake, those already here); True when the
        connection stays open for a next one, none of whose bytes are buffered here
        (so the handler can go, and the connection wait in the lobby)."""
        conn = self.server.current.conn
        while True:
            if not begun:  # after the handshake, or after an answer
                if not self._buffered():
                    return True
                self.server.connections.reading(conn)  # its own request deadline
            self.handle_one_request()
            if self.close_connection or conn.shut_down:
                return False
            begun = False

    def _buffered(self) -> bool:
        """Whether the next request's bytes are already here, without waiting."""
        try:
            self.request.settimeout(0)
            return bool(typing.cast(io.BufferedReader, self.rfile).peek(1))
        except (OSError, ValueError):  # nothing yet (ssl.SSLWantReadError too), or gone
            return False
        finally:
            with contextlib.suppress(OSError):
                self.request.settimeout(self.server.connections.request_timeout)

    def handle_one_request(self) -> None:
        # The request has begun (the lobby saw its first byte, or it was buffered):
        # all of it within the request deadline, however slowly its bytes come
        # (endpoint_guard). A read of nothing is the client closing.
        try:
            first = typing.cast(io.BufferedReader, self.rfile).peek(1)
        except (OSError, ValueError):
            first = b""
        if not first:
            self.close_connection = True
            return
        super().handle_one_request()

    def answerable(self) -> bool:
        # A slow client cut off at its deadline leaves half a request behind: no
        # answer (64 of them cut at one deadline would each build one at once).
        return not self.server.current.conn.shut_down

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        server = self.server
        if server.current.conn.shut_down:  # cut short by its deadline: no answer
            self.close_connection = True
            return
        server.connections.serving(server.current.conn)
        loaded = server.guard.current()
        headers = dict(loaded.config.headers)
        path = self.path.split("?", 1)[0]
        client = self.client_address[0]
        if loaded.error is not None:
            self._send(500, b"web config invalid; see the agent's log\n", headers, head)
            return
        if path in ("/healthz", "/-/healthy"):  # liveness: no credentials, no rate limit
            problems = server.exposition.problems()
            if problems:
                self._send(503, ("\n".join(problems) + "\n").encode(), headers, head)
            else:
                self._send(200, b"ok\n", headers, head)
            return
        if loaded.auth.enabled:
            wait = server.logins.wait_seconds(client)
            if wait > 0:  # checked before bcrypt: a flood of guesses costs no CPU
                headers["Retry-After"] = str(math.ceil(wait))
                self._send(429, b"too many failed logins; wait\n", headers, head)
                return
            credentials = self.headers.get("authorization")
            if loaded.auth.check(credentials) is None:
                if credentials:  # a guess (it cost a bcrypt check), not a bare request
                    server.logins.failed(client)
                headers["WWW-Authenticate"] = 'Basic realm="ai-bottleneck", charset="UTF-8"'
                self._send(401, b"unauthorized\n", headers, head)
                return
            server.logins.succeeded(client)
        if loaded.limiter is not None and not loaded.limiter.allow(client):
            self._send(429, b"too many requests\n", headers, head)
        elif path == "/metrics":
            body, content_type = server.exposition.render(self.headers.get("accept", ""))
            if accepts_gzip(self.headers.get("accept-encoding", "")):
                body = gzip.compress(body, compresslevel=1)
                headers["Content-Encoding"] = "gzip"
            headers["Vary"] = "Accept-Encoding"
            self._send(200, body, headers, head, content_type)
        elif path == "/" and self.server.page is not None:
            query = self.path.split("?", 1)[1] if "?" in self.path else ""
            self._send(200, self.server.page(query), headers, head, "text/html; charset=utf-8")
        elif path == "/":
            page = _LANDING.format(version=html.escape(__version__)).encode()
            self._send(200, page, headers, head, "text/html; charset=utf-8")
        else:
            self._send(404, b"not found\n", headers, head)

    def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool,
              content_type: str = "text/plain; charset=utf-8") -> None:
        self.send(status, body, headers, head=head, content_type=content_type)


class _HTTPServer(socketserver.TCPServer):
    """Accepts on its own thread; a connection waits in the lobby between requests
    and gets a thread while it has one to serve (ai_bottleneck.endpoint_lobby)."""

    def __init__(self, sock: socket.socket, guard: WebGuard, exposition: Exposition, *,
                 connections: Connections, logins: LoginThrottle, page: Page | None = None):
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        self.guard, self.exposition, self.page = guard, exposition, page
        self.connections = connections
        self.logins = logins
        self.current = threading.local()  # .conn: the Connection this thread serves
        self.lobby = Lobby(self._dispatch, self._close)

    def process_request(self, request: Any, client_address: Any) -> None:
        conn = self.connections.admit(request, client_address[0])
        if conn is None:
            log.warning("refusing %s: %d connections open, every one mid-response",
                        client_address[0], self.connections.count())
            self.shutdown_request(request)
            return
        # Headers and body leave in separate writes; without this, Nagle's algorithm
        # holds the body until the client's delayed ACK (~40 ms per scrape).
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.guard.current().config.ssl_context is None:
            conn.opened = True
            self.connections.waiting(conn)  # idle until its first request byte
        # (TLS: the handshake deadline that admit() set holds until it is done)
        self.lobby.add(conn)

    def _dispatch(self, conn: Connection) -> None:
        """The lobby saw bytes (or the close) of ``conn``: a thread serves it."""
        if conn.opened:
            self.connections.reading(conn)
        conn.thread = threading.Thread(target=self._serve_connection, args=(conn,),
                                       daemon=True, name=f"scrape-{conn.client}")
        try:
            conn.thread.start()
        except RuntimeError:  # no thread to be had: the client tries again
            log.warning("closing a connection of %s: cannot start a thread", conn.client)
            self._close(conn)

    def _serve_connection(self, conn: Connection) -> None:
        self.current.conn = conn
        keep = False
        try:
            handshaken = not conn.opened
            if handshaken and not self._open(conn):
                return
            conn.sock.settimeout(self.connections.request_timeout)
            handler = _Handler(conn.sock, (conn.client, 0), self)
            try:
                keep = handler.serve_ready(begun=not handshaken)
            finally:
                handler.finish()
        except Exception:
            self.handle_error(conn.sock, (conn.client, 0))
        finally:
            if keep and not conn.shut_down:
                self.connections.waiting(conn)
                self.lobby.add(conn)
            else:
                self._close(conn)

    def _open(self, conn: Connection) -> bool:
        """The TLS handshake (and client certificate check); False: close it."""
        conn.opened = True
        ctx = self.guard.current().config.ssl_context
        if ctx is None:  # TLS was turned off since the connection came
            return True
        conn.key.settimeout(self.connections.handshake_timeout)  # the watchdog holds it all
        try:
            conn.sock = ctx.wrap_socket(conn.key, server_side=True)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.debug("TLS handshake with %s failed: %s", conn.client, exc)
            return False
        allowed = self.guard.current().config.allowed_sans
        if allowed and not (peer_sans(conn.sock.getpeercert()) & allowed):
            log.info("refusing %s: client certificate names none of client_allowed_sans",
                     conn.client)
            return False
        return True

    def _close(self, conn: Connection) -> None:
        for sock in dict.fromkeys((conn.sock, conn.key)):  # the TLS socket, then the raw
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)  # the client reads the answer, then the end
            with contextlib.suppress(OSError):
                sock.close()
        self.connections.release(conn.key)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-request is normal; never a traceback on stderr.
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)

    def close_connections(self, timeout: float) -> None:
        self.lobby.stop(timeout)  # closes the waiting ones; any added later too
        live = self.connections.all()
        for conn in live:
            conn.shut()
        deadline = time.monotonic() + timeout
        for conn in live:
            if conn.thread is not None:
                conn.thread.join(max(0.0, deadline - time.monotonic()))


#: The accept queue. When it is full the kernel drops a new connection's SYN and the
#: client tries again only after a second. With a queue of 64, 200 idle clients
#: reconnecting at once (their idle timeout ends together) overflow it, and a
#: scrape among them takes over a second (1.03 s was measured). The kernel caps
#: this at net.core.somaxconn (4096 by default).
LISTEN_BACKLOG = 4096


def _listen_socket(host: str, port: int) -> socket.socket:
    """Bind ``host:port``; '' is every interface, IPv6 and IPv4 where the host has both."""
    if host == "":
        if socket.has_dualstack_ipv6():
            return socket.create_server(("::", port), family=socket.AF_INET6,
                                        dualstack_ipv6=True, backlog=LISTEN_BACKLOG)
        return socket.create_server(("0.0.0.0", port), backlog=LISTEN_BACKLOG)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _type, _proto, _name, address = infos[0]
    return socket.create_server(address[:2], family=family, backlog=LISTEN_BACKLOG)


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
                 process_metrics: bool = True, max_connections: int = 512,
                 max_connections_per_client: int = 256, idle_timeout: float = 120.0,
                 request_timeout: float = 10.0, handshake_timeout: float = 10.0,
                 failed_logins_free: int = 3, failed_login_wait: float = 1.0,
                 failed_login_wait_max: float = 60.0,
                 web_config_check_seconds: float = 1.0, page: Page | None = None):
        self.listen = listen
        self._page = page
        self._host, self._port = parse_listen(listen)
        self.exposition = Exposition(state, process_metrics=process_metrics)
        self.guard = WebGuard(web_config_file, check_every=web_config_check_seconds)
        self._limits = dict(max_total=max_connections, max_per_client=max_connections_per_client,
                            idle_timeout=idle_timeout, request_timeout=request_timeout,
                            handshake_timeout=handshake_timeout)
        self._logins = (failed_logins_free, failed_login_wait, failed_login_wait_max)
        self.connections: Connections | None = None
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
        self.connections = Connections(**self._limits)  # type: ignore[arg-type]
        self.connections.start()
        self._server = _HTTPServer(sock, self.guard, self.exposition,
                                   connections=self.connections, page=self._page,
                                   logins=LoginThrottle(free=self._logins[0],
                                                        base=self._logins[1],
                                                        longest=self._logins[2]))
        self._server.lobby.start()
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
        server.connections.stop()
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
