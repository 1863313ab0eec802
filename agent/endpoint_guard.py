"""What keeps the endpoint answering under abuse: connection bookkeeping with
deadlines and eviction, per-client rate limits and a throttle on wrong passwords.

A connection has a thread while a request of it is being served, and waits in
one selector between requests (ai_bottleneck.endpoint_lobby). Before this
module, 64 idle TCP connections (a global cap, and a timeout per read) shut
every new scrape out for minutes, and 64 clients dripping a header byte a
second for ever. Now:

- **Deadlines per phase, not per read.** A connection waiting for its first
  request byte may idle ``idle_timeout`` (keep-alive); once a request starts,
  the whole request -- headers, handling and response -- must be done within
  ``request_timeout``; a TLS handshake within ``handshake_timeout``. A watchdog
  thread shuts down whatever is past its deadline, however slowly it drips.
- **A new connection is never refused for idle ones.** When a client holds
  ``max_per_client`` connections, or all clients together ``max_total``, the
  oldest connection that is not being served (idle, or still sending its
  request) is closed to make room: of the same client, or else of the client
  holding the most. Only when every connection is mid-response is a new one
  refused. A scraper with one connection is never the one evicted while an
  abuser holds more.
- **Rate limits after authentication, per client** (``ClientBuckets``), so an
  unauthenticated flood cannot spend Prometheus' budget; /healthz is never
  limited.
- **Wrong passwords are throttled per client** (``LoginThrottle``): after a few
  failures a client must wait, doubling up to a minute, before its next try
  costs a bcrypt check (~76 ms of CPU each).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ai_bottleneck.exporter")

Clock = Callable[[], float]


class TokenBucket:
    """The ``rate_limit`` block: one request per ``interval``, ``burst`` at once."""

    def __init__(self, interval: float, burst: int, clock: Clock = time.monotonic):
        self._interval, self._burst, self._clock = interval, max(burst, 1), clock
        self._tokens = float(self._burst)
        self._last = clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self._burst),
                               self._tokens + (now - self._last) / self._interval)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class ClientBuckets:
    """One TokenBucket per client address, the least recently seen forgotten first."""

    def __init__(self, interval: float, burst: int, *, limit: int = 4096,
                 clock: Clock = time.monotonic):
        self._interval, self._burst, self._clock, self._limit = interval, burst, clock, limit
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        with self._lock:
            bucket = self._buckets.pop(client, None)
            if bucket is None:
                bucket = TokenBucket(self._interval, self._burst, self._clock)
            self._buckets[client] = bucket
            while len(self._buckets) > self._limit:
                self._buckets.popitem(last=False)
        return bucket.allow()


class LoginThrottle:
    """Failed logins per client: ``free`` failures cost nothing more; after them the
    client waits ``base`` seconds before its next check, doubling to ``longest``."""

    def __init__(self, *, free: int = 3, base: float = 1.0, longest: float = 60.0,
                 limit: int = 4096, clock: Clock = time.monotonic):
        self._free, self._base, self._longest = free, base, longest
        self._limit, self._clock = limit, clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait_seconds(self, client: str) -> float:
        """How long ``client`` must still wait before its credentials are checked."""
        with self._lock:
            entry = self._failures.get(client)
        if entry is None or entry[0] < self._free:
            return 0.0
        count, last = entry
        delay = min(self._longest, self._base * 2.0 ** (count - self._free))
        return max(0.0, last + delay - self._clock())

    def failed(self, client: str) -> None:
        with self._lock:
            count, _last = self._failures.pop(client, (0, 0.0))
            self._failures[client] = (count + 1, self._clock())
            while len(self._failures) > self._limit:
                self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


@dataclass(eq=False)
class Connection:
    """One accepted connection: who, which phase it is in, and until when."""

    client: str
    key: Any  # the accepted socket
    sock: Any  # the socket its thread speaks on (the TLS one once wrapped)
    accepted: float
    deadline: float
    busy: bool = False  # a request is being handled: never evicted
    opened: bool = False  # ready for requests (its TLS handshake done, where there is one)
    thread: threading.Thread | None = field(default=None, repr=False)
    # Shut by the agent (deadline passed, evicted, stopping): whatever part of a
    # request its thread has read is not answered. A header block cut short by the
    # shutdown reads as complete to http.server, and 64 slow clients shut at one
    # deadline were otherwise each rendered /metrics at once, delaying real scrapes.
    shut_down: bool = False

    def shut(self) -> None:
        self.shut_down = True
        with contextlib.suppress(OSError):  # already closed by its own thread
            self.sock.shutdown(socket.SHUT_RDWR)


class Connections:
    """Every live connection, the limits on them and the watchdog on their deadlines."""

    def __init__(self, *, max_total: int, max_per_client: int, idle_timeout: float,
                 request_timeout: float, handshake_timeout: float,
                 clock: Clock = time.monotonic, tick: float = 0.25):
        self.max_total, self.max_per_client = max_total, max_per_client
        self.idle_timeout, self.request_timeout = idle_timeout, request_timeout
        self.handshake_timeout = handshake_timeout
        self._clock, self._tick = clock, tick
        self._live: dict[Any, Connection] = {}  # accepted socket -> its connection
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.evicted = 0
        self.expired = 0

    # -- admission ------------------------------------------------------------------

    def admit(self, request: Any, client: str) -> Connection | None:
        """Register a new connection, making room by evicting; None when it must be
        refused (every connection is mid-response)."""
        now = self._clock()
        victims: list[Connection] = []
        with self._lock:
            mine = [c for c in self._live.values() if c.client == client]
            if len(mine) >= self.max_per_client:
                victim = _oldest_idle(mine)
                if victim is None:
                    return None
                victims.append(victim)
            elif len(self._live) >= self.max_total:
                victim = self._idle_of_heaviest()
                if victim is None:
                    return None
                victims.append(victim)
            for victim in victims:
                self._live.pop(victim.key, None)
            conn = Connection(client, request, request, now, now + self.handshake_timeout)
            self._live[request] = conn
            self.evicted += len(victims)
        for victim in victims:
            log.debug("closing an idle connection of %s to make room", victim.client)
            victim.shut()
        return conn

    def _idle_of_heaviest(self) -> Connection | None:
        by_client: dict[str, list[Connection]] = {}
        for c in self._live.values():
            by_client.setdefault(c.client, []).append(c)
        for conns in sorted(by_client.values(), key=len, reverse=True):
            victim = _oldest_idle(conns)
            if victim is not None:
                return victim
        return None

    def release(self, request: Any) -> None:
        with self._lock:
            self._live.pop(request, None)

    def count(self) -> int:
        return len(self._live)

    # -- phases -----------------------------------------------------------------------

    def waiting(self, conn: Connection) -> None:
        """Waiting for the first byte of the next request (keep-alive idle)."""
        conn.busy, conn.deadline = False, self._clock() + self.idle_timeout

    def reading(self, conn: Connection) -> None:
        """A request has begun: all of it, response included, within request_timeout."""
        conn.busy, conn.deadline = False, self._clock() + self.request_timeout

    def serving(self, conn: Connection) -> None:
        conn.busy = True  # the deadline set by reading() still holds

    # -- the watchdog -----------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._watchdog = threading.Thread(target=self._watch, name="endpoint-watchdog",
                                          daemon=True)
        self._watchdog.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(5)

    def _watch(self) -> None:
        while not self._stop.wait(self._tick):
            now = self._clock()
            with self._lock:
                late = [c for c in self._live.values() if c.deadline < now]
            for conn in late:
                self.expired += 1
                conn.shut()

    def all(self) -> list[Connection]:
        with self._lock:
            return list(self._live.values())


def _oldest_idle(conns: list[Connection]) -> Connection | None:
    idle = [c for c in conns if not c.busy]
    return min(idle, key=lambda c: c.accepted) if idle else None

