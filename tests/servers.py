"""Real HTTP/1.1 test servers with the failure modes a probe has to tell apart.

Kinds (``KINDS``):

* ``delay``  - reads the whole request, waits ``delay_seconds`` (server-side
  time), then answers with ``body_bytes`` bytes.
* ``sink``   - accepts uploads: reads the request body (at ``read_rate`` bytes
  per second if given) and answers with the number of bytes it received.
* ``stream`` - answers at once with a body of ``body_bytes`` bytes sent at
  ``body_rate`` bytes per second (as fast as the link takes it if not given).
* ``reset``  - reads the request headers, then resets the connection (RST).
* ``hang``   - accepts connections and reads requests, never answers.

Query parameters override the options per request: ``delay``, ``bytes``,
``rate`` (the body rate) and ``status`` (answer with that status code).

In-process (a thread per connection)::

    with HttpServer(ServerConfig("delay", delay_seconds=0.5)) as server:
        httpx.get(server.url("/"))
        server.stats.connections   # what the server saw

As a subprocess, e.g. inside a network namespace made by tests/netns.py::

    with subprocess_server("stream", bind=link.ns_addr, launcher=link.popen,
                           body_bytes=50_000_000) as (host, port):
        ...

or by hand: ``python -m tests.servers stream --bind 198.18.1.2 --port 0
--body-bytes 50000000``. It prints ``listening HOST PORT`` when ready and
stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import selectors
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

KINDS = ("delay", "sink", "stream", "reset", "hang")
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Self-signed certificate and key for "localhost" and 127.0.0.1, for tests only.
TEST_CERT = Path(__file__).resolve().parent / "certs" / "localhost.pem"
_MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class ServerConfig:
    kind: str
    delay_seconds: float = 0.0
    body_bytes: int = 2
    body_rate: float | None = None
    read_rate: float | None = None
    rcvbuf: int | None = None
    tls_cert: Path | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown server kind {self.kind!r} (kinds: {', '.join(KINDS)})")


@dataclass
class RequestSeen:
    method: str
    target: str
    headers: dict[str, str]
    body_bytes: int
    connection: int


@dataclass
class ServerStats:
    """What the server saw; guarded by ``lock``."""

    connections: int = 0
    requests: list[RequestSeen] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Closed(Exception):
    """The client went away, or the server is stopping."""


class HttpServer:
    """A threaded HTTP/1.1 server on ``bind`` (port 0: any free port)."""

    def __init__(self, config: ServerConfig, bind: str = "127.0.0.1", port: int = 0):
        self.config = config
        self.stats = ServerStats()
        self._stop = threading.Event()
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if config.rcvbuf is not None:
            # Set before listen() so accepted sockets inherit it (and the
            # window scale is chosen to match).
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, config.rcvbuf)
        self._listener.bind((bind, port))
        self._listener.listen(128)
        self.host, self.port = self._listener.getsockname()[:2]
        self._tls: ssl.SSLContext | None = None
        if config.tls_cert is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(config.tls_cert)
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept_loop, name="test-server",
                                          daemon=True)

    def url(self, path: str = "/") -> str:
        scheme = "https" if self._tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{path}"

    def start(self) -> HttpServer:
        self._accepter.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._accepter.is_alive():
            self._accepter.join(timeout=5)
        self._listener.close()
        with self.stats.lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- connections ---------------------------------------------------------------

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not sel.select(timeout=0.05):
                    continue
                try:
                    conn, _ = self._listener.accept()
                except OSError:
                    continue
                with self.stats.lock:
                    self.stats.connections += 1
                    number = self.stats.connections
                    self._conns.add(conn)
                thread = threading.Thread(target=self._serve, args=(conn, number),
                                          name=f"test-server-{number}", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _serve(self, raw: socket.socket, number: int) -> None:
        conn: socket.socket = raw
        try:
            # Like production servers: no Nagle delay on the last piece of an answer.
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                raw.settimeout(10)
                conn = self._tls.wrap_socket(raw, server_side=True)
                with self.stats.lock:
                    self._conns.add(conn)
            conn.settimeout(None)
            buffered = b""
            while not self._stop.is_set():
                buffered = self._one_request(conn, buffered, number)
        except (_Closed, OSError, ValueError):
            pass
        finally:
            with self.stats.lock:
                self._conns.discard(raw)
                self._conns.discard(conn)
            conn.close()
            raw.close()

    def _recv(self, conn: socket.socket, size: int) -> bytes:
        data = conn.recv(size)
        if not data:
            raise _Closed
        return data

    def _one_request(self, conn: socket.socket, buffered: bytes, number: int) -> bytes:
        while b"\r\n\r\n" not in buffered:
            if len(buffered) > _MAX_HEADER_BYTES:
                raise _Closed
            buffered += self._recv(conn, 65536)
        head, buffered = buffered.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        query = {k: v[-1] for k, v in parse_qs(urlsplit(target).query).items()}
        kind = self.config.kind

        if kind == "reset":
            # SO_LINGER with a zero timeout makes close() send RST, not FIN.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._record(method, target, headers, 0, number)
            raise _Closed
        if kind == "hang":
            self._record(method, target, headers, 0, number)
            while not self._stop.is_set():
                self._recv(conn, 65536)  # returns only when the client leaves
            raise _Closed

        with self.stats.lock:
            self.stats.in_flight += 1
            self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
        try:
            length = int(headers.get("content-length", "0"))
            received, buffered = self._read_body(conn, buffered, length)
            self._record(method, target, headers, received, number)
            delay = float(query.get("delay", self.config.delay_seconds))
            if delay > 0 and self._stop.wait(delay):
                raise _Closed
            status = int(query.get("status", "200"))
            if kind == "sink":
                body_size = len(str(received))
            else:
                body_size = int(float(query.get("bytes", self.config.body_bytes)))
            rate = query.get("rate")
            body_rate = float(rate) if rate is not None else self.config.body_rate
            self._respond(conn, status, body_size, str(received).encode() if kind == "sink"
                          else None, body_rate if kind == "stream" else None)
        finally:
            with self.stats.lock:
                self.stats.in_flight -= 1
        if headers.get("connection", "").lower() == "close":
            raise _Closed
        return buffered

    def _record(self, method: str, target: str, headers: dict[str, str], received: int,
                number: int) -> None:
        with self.stats.lock:
            self.stats.requests.append(RequestSeen(method, target, headers, received, number))

    def _read_body(self, conn: socket.socket, buffered: bytes, length: int) -> tuple[int, bytes]:
        received = min(len(buffered), length)
        rest = buffered[length:]
        rate = self.config.read_rate
        started = time.monotonic()
        # Large reads into one buffer: as little Python per byte as possible, so
        # the server adds little jitter of its own to what clients measure.
        buffer = bytearray(1 << 20)
        while received < length:
            want = min(length - received, len(buffer))
            if rate is not None:
                # Read in small steps on a schedule: the client sees the
                # upload go at ``rate``.
                want = min(want, max(1024, int(rate / 100)))
                ahead = received / rate - (time.monotonic() - started)
                if ahead > 0 and self._stop.wait(ahead):
                    raise _Closed
            n = conn.recv_into(buffer, want)
            if n == 0:
                raise _Closed
            received += n
        return received, rest

    def _respond(self, conn: socket.socket, status: int, size: int, body: bytes | None,
                 rate: float | None) -> None:
        head = (f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}\r\n"
                f"Content-Length: {size}\r\nContent-Type: application/octet-stream\r\n\r\n")
        if body is not None:
            conn.sendall(head.encode() + body)
            return
        if rate is None:
            # As fast as the link takes it, in few large writes.
            block = _filler(min(size, 1 << 22))
            conn.sendall(head.encode() + block[:min(size, len(block))])
            sent = min(size, len(block))
            while sent < size and not self._stop.is_set():
                n = min(size - sent, len(block))
                conn.sendall(block[:n])
                sent += n
            return
        chunk = _filler(65536)
        conn.sendall(head.encode())
        step = max(1024, min(65536, int(rate / 50)))
        started = time.monotonic()
        sent = 0
        while sent < size:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0 and self._stop.wait(ahead):
                raise _Closed
            n = min(size - sent, step)
            conn.sendall(chunk[:n])
            sent += n


@functools.lru_cache(maxsize=4)
def _filler(size: int) -> bytes:
    return b"x" * size


# -- as a subprocess ---------------------------------------------------------------

def server_argv(kind: str, bind: str, port: int = 0, **options: Any) -> list[str]:
    """The command line that runs a server of ``kind`` (options as ServerConfig's fields)."""
    argv = [sys.executable, "-m", "tests.servers", kind, "--bind", bind, "--port", str(port)]
    for name, value in options.items():
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


@contextlib.contextmanager
def subprocess_server(kind: str, bind: str = "127.0.0.1", port: int = 0, *,
                      launcher: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
                      ready_timeout: float = 10.0,
                      **options: Any) -> Iterator[tuple[str, int]]:
    """Run a server in a child process (``launcher``: e.g. a netns Link's popen); yields
    (host, port) once it listens and stops it on exit, also when the body fails."""
    proc = launcher(server_argv(kind, bind, port, **options), stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, cwd=str(REPO_ROOT))
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout=ready_timeout):
                raise TimeoutError(f"test server {kind} did not start in {ready_timeout}s")
        line = proc.stdout.readline().decode().split()
        if len(line) != 3 or line[0] != "listening":
            err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
            raise RuntimeError(f"test server {kind} did not start: {line} {err}")
        yield line[1], int(line[2])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers",
                                     description="Run one real HTTP test server.")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-seconds", type=float, default=0.0)
    parser.add_argument("--body-bytes", type=float, default=2)
    parser.add_argument("--body-rate", type=float)
    parser.add_argument("--read-rate", type=float)
    parser.add_argument("--rcvbuf", type=int)
    parser.add_argument("--tls-cert", type=Path)
    args = parser.parse_args(argv)
    config = ServerConfig(args.kind, delay_seconds=args.delay_seconds,
                          body_bytes=int(args.body_bytes), body_rate=args.body_rate,
                          read_rate=args.read_rate, rcvbuf=args.rcvbuf, tls_cert=args.tls_cert)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with HttpServer(config, args.bind, args.port) as server:
        print(f"listening {server.host} {server.port}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
