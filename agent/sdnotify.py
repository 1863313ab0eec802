"""systemd's notify protocol, spoken directly: READY, STOPPING, STATUS and the watchdog.

Under ``Type=notify`` systemd names a datagram socket in ``$NOTIFY_SOCKET`` (a
path, or an abstract name written with a leading '@') and reads newline-separated
``KEY=value`` assignments from it (sd_notify(3)). With ``WatchdogSec=`` it also sets
``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``) and restarts the service when no
``WATCHDOG=1`` arrives within that time. The protocol is one ``sendto``; a library
(or libsystemd through ctypes) would add a dependency for less.

The agent pings the watchdog only while sampling is healthy: a sampling thread that
has stalled (or a main loop that hangs) stops the pings, and systemd restarts the
agent. Other problems (a paused recording) are told in ``STATUS=`` only: a restart
would not free a full disk.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("ai_bottleneck.agent")

#: The health check the watchdog asks: (sampling alive, one line for STATUS=).
Health = Callable[[], tuple[bool, str]]


def socket_address(env: Mapping[str, str]) -> str | None:
    """The notify socket's address for ``socket.sendto`` (abstract names with a NUL),
    or None when the agent does not run under systemd's notify protocol."""
    name = env.get("NOTIFY_SOCKET", "")
    if name.startswith("@") and len(name) > 1:
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    return None  # unset, empty, or a form systemd does not use (vsock: not for us)


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (``KEY=value`` lines) to systemd; False when there is no notify
    socket or it cannot be reached (logged once at debug: never fatal)."""
    address = socket_address(os.environ if env is None else env)
    if address is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message.encode("utf-8", "replace"), address)
        except OSError as exc:
            log.debug("systemd notify socket %r: %s", address, exc)
            return False
    return True


def watchdog_seconds(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """systemd's watchdog timeout for this process, or None when there is none
    (unset, unparsable, zero, or meant for another PID)."""
    owner = env.get("WATCHDOG_PID")
    if owner is not None and owner.strip() != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class Notifier:
    """The daemon's side of the protocol. ``tick(now)`` from the main loop pings the
    watchdog at half its timeout (as sd_watchdog_enabled(3) advises) while ``health``
    says sampling is alive, and sends STATUS= whenever the status line changes."""

    def __init__(self, health: Health, env: Mapping[str, str] | None = None) -> None:
        self._env = dict(os.environ if env is None else env)
        self.enabled = socket_address(self._env) is not None
        timeout = watchdog_seconds(self._env) if self.enabled else None
        self.ping_every = timeout / 2 if timeout is not None else None
        self._health = health
        self._last_ping: float | None = None
        self._status = ""
        self.withheld = False  # pings withheld because sampling is not alive

    def _send(self, message: str) -> None:
        notify(message, self._env)

    def ready(self, status: str) -> None:
        if self.enabled:
            self._status = status
            self._send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        if self.enabled:
            # MONOTONIC_USEC: systemd >= 253 ignores a RELOADING=1 without it.
            usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
            self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the config")

    def stopping(self) -> None:
        if self.enabled:
            self._send("STOPPING=1\nSTATUS=stopping")

    def tick(self, now: float) -> None:
        if not self.enabled:
            return
        alive, status = self._health()
        messages = []
        if status != self._status:
            self._status = status
            messages.append(f"STATUS={status}")
            if not alive:
                log.warning("not pinging systemd's watchdog: %s", status)
        due = self._last_ping is None or now - self._last_ping >= (self.ping_every or 0)
        if self.ping_every is not None and alive and due:
            messages.append("WATCHDOG=1")
            self._last_ping = now
        self.withheld = not alive
        if messages:
            self._send("\n".join(messages))
