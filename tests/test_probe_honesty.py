"""Honest probes: what dies with the agent, what a deleted or rewritten log says,
what a stalled or redirected transfer says. Real processes, files and servers."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from ai_bottleneck.probes.download import create as create_download
from ai_bottleneck.probes.http import create as create_http
from ai_bottleneck.probes.logtail import FileFollower
from ai_bottleneck.probes.oom import OomProbe, Options
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.state import AgentState
from tests.test_daemon import (
    FAST,
    QUIET,
    Daemon,
    env_for,
    nvml_state,  # noqa: F401 (a fixture)
    start,  # noqa: F401 (a fixture)
)

OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _iperf3_servers(pid: int) -> list[psutil.Process]:
    """The agent's ``iperf3 --server`` children (its iperf3 probe's own client runs
    at start too, and a process can end between listing and reading it)."""
    servers = []
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            if child.name() == "iperf3" and "--server" in child.cmdline():
                servers.append(child)
    return servers


def _wait(what: str, done: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g}s: {what}")
        time.sleep(0.05)


def test_the_peer_iperf3_server_dies_with_a_killed_agent_and_the_next_one_binds(
        start: Callable[..., Daemon], nvml_state: Path) -> None:  # noqa: F811
    port = _free_port()
    config = (FAST + QUIET
              + '[probes.iperf3]\ntargets = ["127.0.0.1:9"]\ninterval_seconds = 3600\n'
              f"[probes.iperf3.server]\nenabled = true\nbind_address = \"127.0.0.1\"\n"
              f"port = {port}\n")
    first = start(config, env_for(nvml_state))
    first.wait_log("sampling every")
    _wait("the first agent's iperf3 server", lambda: bool(_iperf3_servers(first.proc.pid)))
    [server] = _iperf3_servers(first.proc.pid)
    listening = [c.laddr for c in server.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN]
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", port)]  # the bound address
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    _wait("the orphaned iperf3 server to end", lambda: not server.is_running()
          or server.status() == psutil.STATUS_ZOMBIE)
    second = start(config, env_for(nvml_state))
    second.wait_log("sampling every")
    _wait("the second agent's iperf3 server", lambda: bool(_iperf3_servers(second.proc.pid)))
    time.sleep(1.5)  # a server that cannot bind exits at once; this one stays
    assert _iperf3_servers(second.proc.pid), second.log()
    assert "Address already in use" not in second.log()
    assert second.stop() == 0


def test_a_deleted_log_is_a_failing_source_and_its_last_lines_still_count(
        tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("start\n")
    probe = OomProbe(Options(files=(str(log),)))
    assert probe.sample()[0].ok
    with open(log, "a") as fh:
        fh.write(OOM + "\n")
    log.unlink()
    [gone] = probe.sample()
    assert not gone.ok and gone.error is not None and "deleted" in gone.error
    log.write_text(OOM + "\n")  # the service logs again: a new file, read from its start
    [back] = probe.sample()
    assert back.ok and back.values["oom_events"] == 1
    assert back.values["oom_events_total"] == 2  # the line read from the deleted file too
    probe.close()


def test_a_log_truncated_and_refilled_past_the_old_offset_loses_no_line(
        tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("x" * 100 + "\n")
    follower = FileFollower(log)
    assert follower.read_lines(1 << 20) == []
    with open(log, "r+") as fh:  # truncated and refilled within one interval, longer
        fh.truncate(0)
        fh.write(OOM + "\n" + "y" * 200 + "\n")
    assert follower.read_lines(1 << 20) == [OOM, "y" * 200]
    follower.close()


# -- downloads that stall, end early or redirect ---------------------------------------------


class _RawServer:
    """One-shot HTTP answers written by hand: a body that stalls, one cut short, a
    redirect. Serves each connection on its own thread until the test ends."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by close()
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the client may leave at any point
            conn.recv(65536)
            if self.behaviour == "redirect":
                conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://mirror.test/w.bin"
                             b"?token=T0KEN\r\nContent-Length: 0\r\n\r\n")
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
            conn.sendall(b"x" * 200_000)
            if self.behaviour == "stall":
                self._stop.wait(30)  # holds the connection, sends nothing more

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(5)


@pytest.mark.parametrize(("behaviour", "fragment"), [
    ("stall", "stalled: no data for"),
    ("cut", "cut short"),
    ("redirect", "redirected (302) from"),
])
def test_a_download_that_stalls_ends_early_or_redirects_is_a_failure_with_its_reason(
        behaviour: str, fragment: str) -> None:
    server = _RawServer(behaviour)
    probe = create_download({"url": f"http://127.0.0.1:{server.port}/w.bin",
                             "max_seconds": 4, "stall_seconds": 1, "warmup_seconds": 0})
    try:
        [sample] = probe.sample()
    finally:
        probe.close()
        server.close()
    assert not sample.ok and sample.error is not None and fragment in sample.error, sample.error
    assert "T0KEN" not in sample.error


def test_a_probe_error_text_is_logged_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    state = AgentState(interval_seconds=1.0)
    down = Sample(t=1.0, probe="http", labels={"target": "api"}, error="cannot connect: refused")
    other = Sample(t=2.0, probe="http", labels={"target": "api"}, error="timed out after 5s")
    with caplog.at_level(logging.WARNING, logger="ai_bottleneck.agent"):
        for sample in (down, down, down, other, other, down):
            state.record_samples("http", [sample])
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["probe http: cannot connect: refused", "probe http: timed out after 5s",
                     "probe http: cannot connect: refused"]


@pytest.mark.parametrize("redirect_is_up", [True, False])
def test_an_http_redirect_is_reported_as_one(redirect_is_up: bool) -> None:
    server = _RawServer("redirect")
    probe = create_http({"targets": [{"url": f"http://127.0.0.1:{server.port}/v1",
                                      "redirect_is_up": redirect_is_up}]})
    try:
        [sample] = probe.sample()
    finally:
        probe.close()
        server.close()
    assert sample.values["status"] == 302
    if redirect_is_up:
        assert sample.ok
    else:
        assert sample.error == (f"redirected (302) from http://127.0.0.1:{server.port}/v1 to "
                                f"http://mirror.test/w.bin?token=REDACTED")
