"""The timer of one HTTP call: the callback for httpx's ``trace`` request extension,
which turns the connection and HTTP/1.1 events into phase times, and the call's
deadline. Shared by the ``http`` and ``download`` probes (through httptiming.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from ai_bottleneck.probes.base import Clock
from ai_bottleneck.probes.vocabulary import (
    CONNECT_SECONDS,
    DNS_SECONDS,
    DOWNLOAD_SECONDS,
    SERVER_SECONDS,
    TLS_SECONDS,
    TOTAL_SECONDS,
    UPLOAD_SECONDS,
    HttpPhase,
)


class SentWaiter(Protocol):
    """The connection's stream (httptiming.TimedStream): after the request body is
    written, waits until the kernel has really sent it."""

    def wait_until_sent(self, timer: CallTimer) -> None: ...


class CallTimer:
    """Phase timestamps of one call (clock seconds) and its deadline.

    Phase boundaries (see docs/probes.md for the user-facing definitions):
    ``start`` -> DNS -> TCP connect -> TLS -> ``upload_started`` (request
    headers begin) -> ``upload_done`` (body handed to the kernel and sent, see
    ``wait_until_sent``) -> ``first_byte`` (first response byte read) ->
    ``body_done`` (last response body byte read).
    """

    def __init__(self, deadline: float, clock: Clock = time.perf_counter):
        self.clock = clock
        self.deadline = deadline
        self.start: float | None = None
        self.dns_seconds: float | None = None
        self.connect_started: float | None = None
        self.connect_done: float | None = None
        self.tls_started: float | None = None
        self.tls_done: float | None = None
        self.upload_started: float | None = None
        self.upload_done: float | None = None
        self.first_byte: float | None = None
        self.body_done: float | None = None
        self.request_bytes = 0
        self.response_bytes = 0
        #: The phase in progress ("start" before the first), named as in the error messages.
        self.phase: HttpPhase | str = "start"
        #: Set by the backend when it knows better than the exception text.
        self.failure: str | None = None
        self._stream: SentWaiter | None = None

    # -- trace extension callback -------------------------------------------------

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpx ``trace`` extension: ``<module>.<step>.started|complete|failed``."""
        now = self.clock()
        step = event.split(".", 1)[-1]
        if step == "connect_tcp.started":
            self.phase, self.connect_started = HttpPhase.CONNECT, now
        elif step == "connect_tcp.complete":
            self.connect_done = now
        elif step == "start_tls.started":
            self.phase, self.tls_started = HttpPhase.TLS, now
        elif step == "start_tls.complete":
            self.tls_done = now
        elif step == "send_request_headers.started":
            self.phase, self.upload_started = HttpPhase.UPLOAD, now
        elif step == "send_request_body.complete":
            # Raises httpcore.WriteTimeout at the deadline: the call fails in
            # the upload phase, where the time went.
            if self._stream is not None:
                self._stream.wait_until_sent(self)
            self.upload_done = self.clock()
            self.phase = HttpPhase.SERVER
        elif step == "send_request_body.failed":
            # httpcore goes on to read the response (a server may answer early
            # and close); the upload is over either way.
            self.upload_done = now
            self.phase = HttpPhase.SERVER
        elif step == "receive_response_headers.complete":
            self.phase = HttpPhase.DOWNLOAD
        elif step == "receive_response_body.complete":
            self.body_done = now

    # -- called by TimedStream ---------------------------------------------------

    def on_write(self, stream: SentWaiter, nbytes: int) -> None:
        self._stream = stream
        self.request_bytes += nbytes

    def on_read(self, nbytes: int, now: float) -> None:
        if nbytes and self.first_byte is None and self.upload_started is not None:
            self.first_byte = now
        self.response_bytes += nbytes

    def remaining(self) -> float:
        return self.deadline - self.clock()

    # -- results -----------------------------------------------------------------

    def phases(self) -> dict[str, float | None]:
        """Phase durations in seconds; None where a phase did not happen or was not seen."""
        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else max(0.0, b - a)

        connect = span(self.connect_started, self.connect_done)
        if connect is not None and self.dns_seconds is not None:
            connect = max(0.0, connect - self.dns_seconds)
        return {
            TOTAL_SECONDS: span(self.start, self.body_done),
            DNS_SECONDS: self.dns_seconds,
            CONNECT_SECONDS: connect,
            TLS_SECONDS: span(self.tls_started, self.tls_done),
            UPLOAD_SECONDS: span(self.upload_started, self.upload_done),
            SERVER_SECONDS: span(self.upload_done, self.first_byte),
            DOWNLOAD_SECONDS: span(self.first_byte, self.body_done),
        }

    def progress(self, now: float) -> tuple[float, float, float] | None:
        """(elapsed, network seconds, server seconds) of a call still running, each a
        lower bound on what the finished call will show; None before it started.
        The phase in progress counts up to ``now``."""
        if self.start is None:
            return None
        elapsed = max(0.0, now - self.start)
        server = 0.0
        if self.upload_done is not None:
            server = max(0.0, (self.first_byte if self.first_byte is not None else now)
                         - self.upload_done)
        # Before the request is sent everything is DNS, connect or TLS; after it, the
        # body moving either way: all of it but the server's share is the network's.
        return elapsed, max(0.0, elapsed - server), server
