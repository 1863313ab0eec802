"""Where the endpoint's connections wait for their next request: one selector, no
thread each.

A connection gets a thread only while it has a request to serve. Between
requests (a new connection before its first byte, a keep-alive one after its
answer) it waits here, in one thread's selector. Before, every connection held a
thread for as long as it was open: under the soak's abuse (200 idle and 64
dripping connections) that was some 270 threads, and since the idle ones were
opened together they reached their idle timeout together, so every two minutes
about 200 threads ended and 200 new ones started at once while Prometheus was
scraping.

Deadlines stay with ai_bottleneck.endpoint_guard's watchdog: a connection it
shuts while waiting here reads as closed, and the lobby closes it without
waking a thread.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from collections.abc import Callable

from ai_bottleneck.endpoint_guard import Connection

log = logging.getLogger("ai_bottleneck.exporter")


class Lobby:
    """Holds waiting connections; ``ready(conn)`` is called (on the lobby's thread)
    for one with bytes to read, after which the lobby has let go of it; ``close(conn)``
    for one the watchdog shut, or any still waiting at ``stop()``."""

    def __init__(self, ready: Callable[[Connection], None],
                 close: Callable[[Connection], None]) -> None:
        self._ready, self._close = ready, close
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._incoming: list[Connection] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="endpoint-lobby", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, conn: Connection) -> None:
        """Wait for ``conn``'s next bytes (from any thread). After ``stop()`` it is
        closed at once."""
        with self._lock:
            taken = not self._stopped
            if taken:
                self._incoming.append(conn)
        if not taken:
            self._close(conn)
            return
        with contextlib.suppress(BlockingIOError, OSError):  # a full pipe wakes it anyway
            self._wake_w.send(b"\0")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close every connection still waiting."""
        with self._lock:
            self._stopped = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if self._thread.is_alive():
            self._thread.join(timeout)
        elif self._thread.ident is None:  # never started: nothing else will close them
            self._shutdown()

    def _run(self) -> None:
        try:
            while not self._stopped:
                for key, _events in self._selector.select():
                    if key.fileobj is self._wake_r:
                        self._take_incoming()
                        continue
                    conn: Connection = key.data
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        self._selector.unregister(key.fileobj)
                    if conn.shut_down:
                        self._close(conn)
                    else:
                        self._ready(conn)
        except Exception:  # never a silent end: every later connection would hang
            log.exception("the endpoint's connection lobby failed")
        finally:
            self._shutdown()

    def _take_incoming(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for conn in incoming:
            try:
                self._selector.register(conn.sock, selectors.EVENT_READ, conn)
            except (OSError, ValueError, KeyError):  # its fd gone meanwhile
                self._close(conn)

    def _shutdown(self) -> None:
        with self._lock:
            self._stopped = True
            incoming, self._incoming = self._incoming, []
        waiting = [key.data for key in self._selector.get_map().values()
                   if key.fileobj is not self._wake_r]
        self._selector.close()
        for conn in [*waiting, *incoming]:
            self._close(conn)
        self._wake_r.close()
        self._wake_w.close()
