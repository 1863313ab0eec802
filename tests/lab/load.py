"""Load generator for the scenario lab: N concurrent clients uploading payloads to a URL.

Each client is a thread with its own connection (real sockets, httpx) and at most one
request in flight. With ``rate_per_client`` it starts a request every ``1/rate`` seconds, or
as soon as the previous one ends when that took longer (no catch-up bursts); without it the
client is a closed loop and sends the next request as soon as the last one answered.

Everything is bounded: at most ``max_requests`` requests over all clients, no request
started after ``duration_seconds``, each request limited by ``timeout_seconds``. At the end
(the duration runs out or ``stop`` is set) in-flight requests are abandoned: an upload stops
at its next chunk and a response wait ends at most ``abandon_grace_seconds`` after the
deadline; their connections are closed. Abandoned requests are counted apart from failures.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.lab.score import quantile

UPLOAD_CHUNK_BYTES = 64 * 1024


class _Abandoned(Exception):
    """The load ended while this request was uploading."""


@dataclass
class LoadResult:
    started: int = 0
    completed: int = 0  # answered 2xx
    failed: int = 0  # answered otherwise, or a transport error before the end
    abandoned: int = 0  # cut off by the end of the load
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies_seconds: list[float] = field(default_factory=list)  # completed requests
    bytes_sent: int = 0  # payload bytes of requests that were answered
    wall_seconds: float = 0.0

    def percentile(self, q: float) -> float | None:
        """Latency quantile of the completed requests (linear between ranks)."""
        return quantile(self.latencies_seconds, q)

    def to_json(self) -> dict[str, Any]:
        return {
            "started": self.started, "completed": self.completed, "failed": self.failed,
            "abandoned": self.abandoned,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(sorted(self.errors.items())),
            "latency_seconds": {"median": self.percentile(0.5), "p95": self.percentile(0.95),
                                "max": max(self.latencies_seconds, default=None)},
            "bytes_sent": self.bytes_sent, "wall_seconds": self.wall_seconds,
        }


class _Run:
    """State shared by one run's client threads."""

    def __init__(self, url: str, payload_bytes: int, *, max_requests: int, deadline: float,
                 stop: threading.Event, timeout_seconds: float, grace_seconds: float):
        self.url = url
        self.payload = os.urandom(payload_bytes)  # incompressible, like an image
        self.max_requests = max_requests
        self.deadline = deadline
        self.stop = stop
        self.timeout_seconds = timeout_seconds
        self.grace_seconds = grace_seconds
        self.result = LoadResult()
        self._lock = threading.Lock()

    def over(self) -> bool:
        return self.stop.is_set() or time.monotonic() >= self.deadline

    def claim(self) -> bool:
        with self._lock:
            if self.over() or self.result.started >= self.max_requests:
                return False
            self.result.started += 1
            return True

    def chunks(self) -> Iterator[bytes]:
        view = memoryview(self.payload)
        for offset in range(0, len(view), UPLOAD_CHUNK_BYTES):
            if self.over():
                raise _Abandoned
            yield bytes(view[offset:offset + UPLOAD_CHUNK_BYTES])

    def one_request(self, client: httpx.Client) -> None:
        limit = min(self.timeout_seconds,
                    max(self.deadline - time.monotonic(), 0.0) + self.grace_seconds)
        began = time.monotonic()
        try:
            response = client.post(
                self.url, content=self.chunks(), timeout=httpx.Timeout(limit),
                headers={"Content-Length": str(len(self.payload)),
                         "Content-Type": "application/octet-stream"})
        except (_Abandoned, httpx.HTTPError) as exc:
            with self._lock:
                if isinstance(exc, _Abandoned) or self.over():
                    self.result.abandoned += 1
                else:
                    self.result.failed += 1
                    self.result.errors[type(exc).__name__] += 1
            return
        elapsed = time.monotonic() - began
        with self._lock:
            self.result.statuses[response.status_code] += 1
            self.result.bytes_sent += len(self.payload)
            if response.is_success:
                self.result.completed += 1
                self.result.latencies_seconds.append(elapsed)
            else:
                self.result.failed += 1

    def client_loop(self, first_at: float, interval: float | None) -> None:
        if first_at >= self.deadline or self.stop.wait(max(first_at - time.monotonic(), 0.0)):
            return
        next_at = first_at
        with httpx.Client(limits=httpx.Limits(max_connections=1), trust_env=False) as client:
            while self.claim():
                self.one_request(client)
                if interval is None:
                    continue
                next_at += interval
                wait = next_at - time.monotonic()
                if wait > 0:
                    if self.stop.wait(min(wait, max(self.deadline - time.monotonic(), 0))):
                        return
                else:
                    next_at = time.monotonic()  # late: go now, and do not burst to catch up


def run_load(url: str, clients: int, payload_bytes: int, *,
             rate_per_client: float | None = None, duration_seconds: float = 10.0,
             max_requests: int = 10_000, timeout_seconds: float = 30.0,
             stop: threading.Event | None = None,
             ramp_seconds: float = 0.0, abandon_grace_seconds: float = 1.0) -> LoadResult:
    """Run the load to its end and return what happened. ``ramp_seconds`` spreads the
    clients' starts over that time (concurrency grows); with a rate, starts are also
    staggered within one interval so the clients do not send in lockstep."""
    if clients < 1 or payload_bytes < 0 or duration_seconds <= 0 or max_requests < 0:
        raise ValueError("clients >= 1, payload_bytes >= 0, duration_seconds > 0 and "
                         "max_requests >= 0 are required")
    if rate_per_client is not None and rate_per_client <= 0:
        raise ValueError("rate_per_client must be > 0 (or None for a closed loop)")
    began = time.monotonic()
    run = _Run(url, payload_bytes, max_requests=max_requests,
               deadline=began + duration_seconds, stop=stop or threading.Event(),
               timeout_seconds=timeout_seconds, grace_seconds=abandon_grace_seconds)
    interval = 1.0 / rate_per_client if rate_per_client else None
    threads = []
    for i in range(clients):
        offset = ramp_seconds * i / clients + (interval or 0.0) * i / clients
        thread = threading.Thread(target=run.client_loop, args=(began + offset, interval),
                                  name=f"load-client-{i}", daemon=True)
        thread.start()
        threads.append(thread)
    # Every client ends by the deadline plus one bounded request; the join limit is a
    # backstop that keeps a bug from hanging the caller.
    for thread in threads:
        thread.join(timeout=max(run.deadline - time.monotonic(), 0.0)
                    + min(timeout_seconds, duration_seconds + abandon_grace_seconds) + 5.0)
    stuck = sum(thread.is_alive() for thread in threads)
    if stuck:
        run.result.errors["client_thread_stuck"] += stuck
    run.result.wall_seconds = time.monotonic() - began
    return run.result


class BackgroundLoad:
    """run_load in a thread, for a scenario phase while the agent runs:
    ``load = BackgroundLoad(url, ...); load.start(); ...; result = load.finish()``."""

    def __init__(self, url: str, clients: int, payload_bytes: int, **kwargs: Any):
        self._stop = threading.Event()
        self._result: LoadResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(url, clients, payload_bytes), kwargs=kwargs,
            name="background-load", daemon=True)

    def _run(self, url: str, clients: int, payload_bytes: int, **kwargs: Any) -> None:
        try:
            self._result = run_load(url, clients, payload_bytes, stop=self._stop, **kwargs)
        except BaseException as exc:  # handed to the caller of finish()
            self._error = exc

    def start(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def finish(self, timeout: float = 60.0) -> LoadResult:
        """Stop the load (if still running) and return its result."""
        self._stop.set()
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"load did not stop within {timeout:g}s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result
