"""Timed HTTP/1.1 calls: where the time of one call went, phase by phase.

Shared by the ``http`` and ``download`` probes. Three pieces here, beside
``CallTimer`` (calltimer.py: one per call, the callback for httpx's ``trace``
request extension, turns the connection and HTTP/1.1 events into phase times
and holds the call's deadline) and ``describe_failure`` (httpfailure.py):

* ``TimingBackend``: an httpcore network backend. It resolves names itself so
  that DNS time is measured apart from the TCP handshake (the connection still
  uses the URL's host name for the Host header and TLS SNI), and it wraps each
  connection in a ``TimedStream``.
* ``TimedStream``: clamps every read and write to the call's deadline (httpx's
  own timeouts apply per read or write, so a server trickling bytes could
  otherwise hold a call for ever), counts the bytes of the HTTP messages, notes
  the first response byte, and after the request body is written waits until
  the kernel has really sent it (see ``wait_until_sent``).

The backend finds the timer of the call in progress through a thread-local
binding: httpcore's synchronous client does all the I/O of a call on the
thread that made it, so one client and one connection pool can serve many
parallel calls from many threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import select
import socket
import ssl
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx

from ai_bottleneck import __version__
from ai_bottleneck.probes.base import Clock
from ai_bottleneck.probes.calltimer import CallTimer
from ai_bottleneck.probes.vocabulary import HttpPhase

Resolver = Callable[[str, int], list[tuple[Any, ...]]]

#: Writes go to the kernel in pieces of this size so that the deadline is
#: checked between them (a single multi-megabyte write could block past it).
WRITE_PIECE_BYTES = 64 * 1024


def default_resolver(host: str, port: int) -> list[tuple[Any, ...]]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


class TimedStream(httpcore.NetworkStream):
    """A connection's stream, timed and held to the deadline of the call using it."""

    def __init__(self, inner: httpcore.NetworkStream, backend: TimingBackend):
        self._inner = inner
        self._backend = backend

    def _timeout(self, timeout: float | None, timer: CallTimer | None,
                 exc: type[Exception]) -> float | None:
        if timer is None:
            return timeout
        left = timer.remaining()
        if left <= 0:
            raise exc("the call's time limit ran out")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        timer = self._backend.current()
        data = self._inner.read(max_bytes, self._timeout(timeout, timer, httpcore.ReadTimeout))
        if timer is not None:
            timer.on_read(len(data), timer.clock())
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        timer = self._backend.current()
        view = memoryview(buffer)
        for offset in range(0, len(view), WRITE_PIECE_BYTES):
            piece = view[offset:offset + WRITE_PIECE_BYTES]
            self._inner.write(bytes(piece),
                              self._timeout(timeout, timer, httpcore.WriteTimeout))
            if timer is not None:
                timer.on_write(self, len(piece))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        timer = self._backend.current()
        inner = self._inner.start_tls(
            ssl_context, server_hostname,
            self._timeout(timeout, timer, httpcore.ConnectTimeout))
        return TimedStream(inner, self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def wait_until_sent(self, timer: CallTimer) -> None:
        """Wait until at most two segments of the request are still unacknowledged.

        When the last body byte is handed to the kernel, much of the body may
        still sit in the socket's send buffer (megabytes with autotuning): on a
        slow link that time would otherwise show up as server time. Linux's
        SIOCOUTQ gives the bytes not yet acknowledged by the peer. Waiting for
        zero would wait for the peer's delayed ACK (up to 40 ms or more, or
        until the response itself carries the ACK), so the wait ends at two
        segments, the most a receiver may hold back an ACK for. It also ends
        when the answer arrives early (plain TCP: the socket turns readable;
        over TLS a session ticket can make it readable too, so only the queue
        counts there) or the connection drops. Where the ioctl is missing the
        upload ends when the kernel took the last byte.
        """
        sock = self._inner.get_extra_info("socket")
        if not isinstance(sock, socket.socket):
            return
        try:
            fd = sock.fileno()
            mss = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        except OSError:
            return
        threshold = 2 * max(mss, 536)
        watch_readable = not isinstance(sock, ssl.SSLSocket)
        poller = select.poll()
        poller.register(fd, select.POLLIN if watch_readable else 0)
        last_queued: int | None = None
        last_time = timer.clock()
        while True:
            queued = unacknowledged_bytes(fd)
            if queued is None or queued <= threshold:
                return
            now = timer.clock()
            left = timer.deadline - now
            if left <= 0:
                raise httpcore.WriteTimeout("the call's time limit ran out while the "
                                            f"kernel still held {queued} bytes of the request")
            # Poll more finely as the queue nears the threshold: the poll
            # interval is the error on the end of the upload.
            wait = 0.01
            if last_queued is not None and last_queued > queued and now > last_time:
                rate = (last_queued - queued) / (now - last_time)
                wait = (queued - threshold) / rate / 2
            last_queued, last_time = queued, now
            wait_ms = int(min(max(wait, 0.0005), 0.01, left) * 1000) or 1
            if poller.poll(wait_ms):
                return  # an early answer, or the connection broke


def unacknowledged_bytes(fd: int) -> int | None:
    """Bytes in a TCP socket's send queue not yet acknowledged by the peer (Linux)."""
    try:
        raw = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return None
    value: int = struct.unpack("i", raw)[0]
    return value


class TimingBackend(httpcore.NetworkBackend):
    """Connects with DNS timed apart, and wraps each connection in a TimedStream."""

    def __init__(self, resolver: Resolver = default_resolver, clock: Clock = time.perf_counter):
        self._resolver = resolver
        self._clock = clock
        # Connects to one resolved address; it sets TCP_NODELAY like httpx does.
        self._connector = httpcore.SyncBackend()
        self._local = threading.local()

    @contextlib.contextmanager
    def bind(self, timer: CallTimer) -> Iterator[CallTimer]:
        """Make ``timer`` the timer of every read, write and connect on this thread."""
        previous = getattr(self._local, "timer", None)
        self._local.timer = timer
        try:
            yield timer
        finally:
            self._local.timer = previous

    def current(self) -> CallTimer | None:
        timer: CallTimer | None = getattr(self._local, "timer", None)
        return timer

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        timer = self.current()

        def left() -> float | None:
            if timer is None:
                return timeout
            remaining = timer.remaining()
            if remaining <= 0:
                raise httpcore.ConnectTimeout("the call's time limit ran out")
            return remaining if timeout is None else min(timeout, remaining)

        addresses = self._resolve(host, port, left(), timer)
        last_error: Exception | None = None
        for i, address in enumerate(addresses):
            limit = left()
            if limit is not None:
                # Leave the later addresses a share of the time, as a
                # browser's fallback would (no parallel attempts here).
                limit /= len(addresses) - i
            try:
                stream = self._connector.connect_tcp(
                    address[4][0], port, timeout=limit, local_address=local_address,
                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
                continue
            return TimedStream(stream, self)
        if last_error is None:
            raise httpcore.ConnectError(f"{host} has no address")
        raise last_error

    def _resolve(self, host: str, port: int, timeout: float | None,
                 timer: CallTimer | None) -> list[tuple[Any, ...]]:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:  # an address literal: nothing to resolve, so no DNS time
            return self._resolver(host, port)
        if timer is not None:
            timer.phase = HttpPhase.DNS
        started = self._clock()
        result: list[Any] = []
        error: list[BaseException] = []
        done = threading.Event()

        def lookup() -> None:
            try:
                result.extend(self._resolver(host, port))
            except BaseException as exc:
                error.append(exc)
            finally:
                done.set()

        # getaddrinfo cannot be interrupted; a lookup that outlives the call
        # finishes on its own in this daemon thread.
        threading.Thread(target=lookup, name=f"dns {host}", daemon=True).start()
        if not done.wait(timeout):
            if timer is not None:
                timer.failure = f"DNS lookup of {host} timed out after {timeout:.3g}s"
            raise httpcore.ConnectTimeout(f"DNS lookup of {host} timed out")
        if error:
            reason = error[0].strerror if isinstance(error[0], OSError) else error[0]
            if timer is not None:
                timer.failure = f"DNS lookup of {host} failed: {reason}"
            raise httpcore.ConnectError(f"DNS lookup of {host} failed: {reason}")
        if timer is not None:
            timer.dns_seconds = self._clock() - started
            timer.phase = HttpPhase.CONNECT
        return result

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]):
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class TimingTransport(httpx.BaseTransport):
    """An httpx transport over an httpcore pool that uses a TimingBackend.

    HTTP/1.1 only: the trace events used for the phases are HTTP/1.1's, and
    one request per connection is what curl measures. With ``keep_alive``
    False every call opens a fresh connection (no idle connection is kept);
    otherwise up to ``max_idle`` idle connections are kept for reuse.
    httpcore exceptions pass through untranslated: ``describe_failure``
    reads them.
    """

    def __init__(self, backend: TimingBackend, ssl_context: ssl.SSLContext, *,
                 keep_alive: bool = False, max_idle: int = 1):
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=None,
            max_keepalive_connections=max_idle if keep_alive else 0,
            keepalive_expiry=30.0,
            http1=True,
            http2=False,
            retries=0,
            network_backend=backend,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host,
                             port=request.url.port, target=request.url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        response = self._pool.handle_request(core_request)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_ResponseStream(response.stream),
                              extensions=response.extensions)

    def close(self) -> None:
        self._pool.close()


def make_ssl_context(verify: bool, ca_file: Path | None) -> ssl.SSLContext:
    """Certificate checks as configured: a CA file, the bundled CAs, or none."""
    if not verify:
        return httpx.create_ssl_context(verify=False)
    if ca_file is not None:
        return ssl.create_default_context(cafile=str(ca_file))
    return httpx.create_ssl_context(verify=True, trust_env=False)


def make_client(backend: TimingBackend, ssl_context: ssl.SSLContext, *,
                keep_alive: bool = False, max_idle: int = 1) -> httpx.Client:
    """A client that talks only to the URLs it is given: no proxies or netrc from the
    environment, no redirects followed, no retries."""
    return httpx.Client(
        transport=TimingTransport(backend, ssl_context, keep_alive=keep_alive,
                                  max_idle=max_idle),
        trust_env=False,
        follow_redirects=False,
        # Lets a server's operator see what is calling.
        headers={"User-Agent": f"ai-bottleneck/{__version__}"},
    )
