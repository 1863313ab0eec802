"""systemd's notify protocol (READY, STATUS, the watchdog) over real AF_UNIX
datagram sockets, a path one and an abstract one, and from the real agent.

systemd is not PID 1 where the tests run (a container), so systemd itself does
not take part: tests/test_deploy.py runs `systemd-analyze verify` on the unit
with its Type=notify and WatchdogSec=, and here a real socket stands where
systemd's would be, receiving exactly what systemd would.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_bottleneck.daemon import sampling_health
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.sdnotify import Notifier, notify, socket_address, watchdog_seconds
from ai_bottleneck.state import AgentState
from tests.test_daemon import FAST, QUIET, Daemon, env_for, nvml_state  # noqa: F401
from tests.test_exporter import Clock


class Listener:
    """A datagram socket where systemd's would be; ``messages()`` drains it."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)

    def messages(self, wait: float = 0.0) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        deadline = time.monotonic() + wait
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return out
                continue
            out.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20.0
                 ) -> list[dict[str, str]]:
        """Every message until one sets ``key`` (to ``value``); fail after ``timeout``."""
        seen: list[dict[str, str]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.messages():
                seen.append(m)
                if key in m and (value is None or m[key] == value):
                    return seen
        pytest.fail(f"no {key}={value or '*'} within {timeout:g}s; got {seen}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, Listener]]:
    path = str(tmp_path / "notify")
    listener = Listener(path)
    yield path, listener
    listener.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, Listener]]:
    name = f"ai-bottleneck-test-{uuid.uuid4().hex}"
    listener = Listener("\0" + name)
    yield "@" + name, listener
    listener.close()


def test_notify_reaches_a_path_socket(path_socket: tuple[str, Listener]) -> None:
    name, listener = path_socket
    assert notify("READY=1\nSTATUS=hello", {"NOTIFY_SOCKET": name})
    assert listener.messages(1.0) == [{"READY": "1", "STATUS": "hello"}]


def test_notify_reaches_an_abstract_socket(abstract_socket: tuple[str, Listener]) -> None:
    name, listener = abstract_socket
    assert socket_address({"NOTIFY_SOCKET": name}) == "\0" + name[1:]
    assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": name})
    assert listener.messages(1.0) == [{"WATCHDOG": "1"}]


def test_without_systemd_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": ""})
    # A socket that went away: a False, never an exception.
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not Notifier(lambda: (True, "ok"), env={}).enabled


def test_watchdog_timeout_is_for_this_process_only() -> None:
    assert watchdog_seconds({"WATCHDOG_USEC": "60000000"}) == 60.0
    assert watchdog_seconds({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}) \
        == 60.0
    assert watchdog_seconds({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_seconds({}) is None


def test_watchdog_is_pinged_only_while_sampling_goes_on(
        path_socket: tuple[str, Listener]) -> None:
    name, listener = path_socket
    clock = Clock(1_800_000_000.0)
    state = AgentState(clock=clock, interval_seconds=1, window_seconds=10)
    state.register_probe("host")
    state.record_samples("host", [Sample(clock(), "host", {}, {"cpu_busy_ratio": 0.5})])
    notifier = Notifier(lambda: sampling_health(state),
                        env={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "20000000"})
    assert notifier.ping_every == 10.0
    notifier.ready("starting")
    assert listener.messages(1.0) == [{"READY": "1", "STATUS": "starting"}]

    notifier.tick(0.0)
    assert listener.messages(1.0) == [{"STATUS": "sampling; all well", "WATCHDOG": "1"}]
    notifier.tick(5.0)  # not due yet: half of the 20 s timeout
    assert listener.messages(0.3) == []
    notifier.tick(10.0)
    assert listener.messages(1.0) == [{"WATCHDOG": "1"}]

    clock.t += 31  # no probe round for 31 s: sampling has stalled
    notifier.tick(20.0)
    stalled = listener.messages(1.0)
    assert len(stalled) == 1 and "WATCHDOG" not in stalled[0], stalled
    assert stalled[0]["STATUS"].startswith("sampling stalled: no probe round for 31 s")
    notifier.tick(30.0)
    notifier.tick(40.0)
    assert listener.messages(0.3) == []  # no pings: systemd restarts the agent
    assert notifier.withheld

    state.record_samples("host", [Sample(clock(), "host", {}, {"cpu_busy_ratio": 0.5})])
    notifier.tick(41.0)
    assert listener.messages(1.0) == [{"STATUS": "sampling; all well", "WATCHDOG": "1"}]


def test_the_agent_speaks_the_protocol(tmp_path: Path, nvml_state: Path,  # noqa: F811
                                       abstract_socket: tuple[str, Listener]) -> None:
    name, listener = abstract_socket
    config = tmp_path / "config.toml"
    config.write_text(FAST + 'listen = "127.0.0.1:0"\n' + QUIET)
    env = {**env_for(nvml_state), "NOTIFY_SOCKET": name, "WATCHDOG_USEC": "1000000"}
    daemon = Daemon(["--config", str(config)], env, tmp_path / "agent.log")
    try:
        before_ready = listener.wait_for("READY", "1")
        assert daemon.port > 0  # the endpoint is bound before READY=1
        assert not any("WATCHDOG" in m for m in before_ready)
        pings = [m for m in listener.messages(3.0) if m.get("WATCHDOG") == "1"]
        assert len(pings) >= 3, pings  # every 0.5 s: half of WATCHDOG_USEC
        daemon.proc.send_signal(signal.SIGHUP)
        reload = listener.wait_for("READY", "1")
        assert any(m.get("RELOADING") == "1" and int(m["MONOTONIC_USEC"]) > 0 for m in reload)
        daemon.proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING", "1")
        assert daemon.proc.wait(20) == 0
    finally:
        daemon.close()
