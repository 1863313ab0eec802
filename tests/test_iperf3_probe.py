"""The iperf3 probe against the real iperf3 program: loopback servers, failures, a shaped link."""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress

import psutil
import pytest

from ai_bottleneck.probes.iperf3 import (
    Iperf3Error,
    Iperf3Probe,
    Options,
    Target,
    client_argv,
    create,
    parse_result,
    parse_target,
)
from ai_bottleneck.probes.iperf3_server import Iperf3Server, ServerOptions
from ai_bottleneck.probes.options import OptionError, parse_options
from tests.netns import netns_link

pytestmark = pytest.mark.skipif(shutil.which("iperf3") is None,
                                reason="the iperf3 program is not installed")

Spawn = Callable[..., "subprocess.Popen[bytes]"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start processes that are killed, reaped and closed after the test, pass or fail."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        proc: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def wait_listening(pid: int, port: int, timeout: float = 10.0) -> None:
    """Wait until process ``pid``'s network namespace has a TCP listener on ``port``.

    Read from /proc rather than by connecting: a bare connection counts as a failed
    test for an iperf3 server, which then resets and refuses clients for a moment.
    iperf3 also reopens its listener between tests, so wait before each test.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for table in ("tcp", "tcp6"):
            with suppress(FileNotFoundError), open(f"/proc/{pid}/net/{table}") as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                        return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


@pytest.fixture
def server(spawn: Spawn) -> Callable[[], int]:
    """A real iperf3 server on a free loopback port; returns the port."""

    def start() -> int:
        port = free_port()
        proc = spawn(["iperf3", "--server", "--bind", "127.0.0.1", "--port", str(port)])
        wait_listening(proc.pid, port)
        return port

    return start


def probe_for(port: int, **options: object) -> Iperf3Probe:
    opts = {"targets": [f"127.0.0.1:{port}"], "duration_seconds": 1,
            "connect_timeout_seconds": 2, "grace_seconds": 5, **options}
    return Iperf3Probe(parse_options(Options, opts), rng=random.Random(7))


def occupy(spawn: Spawn, port: int, seconds: int) -> subprocess.Popen[bytes]:
    """Keep the server busy with another client's test; return once that test runs
    (its control and data connections are both up)."""
    proc = spawn(["iperf3", "--client", "127.0.0.1", "--port", str(port), "--time",
                  str(seconds), "--bitrate", "1M"])
    deadline = time.monotonic() + 10
    while True:
        assert proc.poll() is None, "the occupying client ended early"
        assert time.monotonic() < deadline, "the occupying client never started its test"
        with suppress(psutil.NoSuchProcess):
            up = [c for c in psutil.Process(proc.pid).net_connections("tcp")
                  if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]
            if len(up) >= 2:
                return proc
        time.sleep(0.02)


# -- options and parsing --------------------------------------------------------------


def test_targets_parse() -> None:
    assert parse_target("peer") == Target("peer", 5201)
    assert parse_target("10.0.0.2:5202") == Target("10.0.0.2", 5202)
    assert parse_target("[fd00::2]:5300") == Target("fd00::2", 5300)
    assert parse_target("fd00::2") == Target("fd00::2", 5201)
    assert parse_target("[fd00::2]:5300").label == "[fd00::2]:5300"
    for bad in ("", "host:0", "host:99999", "host:http", "[fd00::2", "[::1]x", "a b:1"):
        with pytest.raises(ValueError, match="target"):
            parse_target(bad)


def test_bad_options_name_the_key() -> None:
    with pytest.raises(OptionError, match="duration_seconds"):
        create({"targets": ["a"], "duration_seconds": "1.5s"})
    with pytest.raises(OptionError, match="port must be"):
        create({"targets": ["a:0"]})
    with pytest.raises(OptionError, match="parallel_streams"):
        create({"parallel_streams": 0})
    with pytest.raises(OptionError, match="unknown key"):
        create({"target": ["a"]})
    probe = create({"targets": ["a"], "duration_seconds": "10s", "max_bits_per_second": "50mbit",
                    "server": {"enabled": True, "port": 5300}})
    assert probe.options.duration_seconds == 10 and probe.options.max_bits_per_second == 50e6
    assert probe.active is True and probe.interval_seconds == 600
    server = probe.make_server()
    assert server is not None and server.options.port == 5300
    assert create({}).make_server() is None


def test_command_line_carries_the_options() -> None:
    opts = parse_options(Options, {"duration_seconds": 3, "parallel_streams": 4,
                                   "reverse": True, "omit_seconds": 1,
                                   "max_bits_per_second": "100mbit"})
    argv = client_argv(opts, Target("10.0.0.2", 5202))
    joined = " ".join(argv)
    assert argv[:5] == ["iperf3", "--client", "10.0.0.2", "--port", "5202"]
    assert "--json" in argv and "--reverse" in argv
    assert "--time 3" in joined and "--parallel 4" in joined and "--omit 1" in joined
    assert "--bitrate 25000000" in joined  # iperf3 -b is per stream
    assert "--connect-timeout 3000" in joined
    plain = client_argv(parse_options(Options, {}), Target("h"))
    assert "--reverse" not in plain and "--omit" not in plain and "--bitrate" not in plain


def test_time_limit_and_estimates_follow_options() -> None:
    probe = create({"targets": ["a", "b"], "duration_seconds": 5, "omit_seconds": 2,
                    "connect_timeout_seconds": 3, "grace_seconds": 4, "busy_retries": 2,
                    "busy_backoff_seconds": 1, "max_bits_per_second": "80mbit"})
    # Two targets x (3 tries x (3 + 2 + 5 + 4) s + backoffs of 1 and 2 s), plus a second.
    assert probe.timeout_seconds == pytest.approx(2 * (3 * 14 + 3) + 1)
    assert probe.expected_bytes() == pytest.approx(2 * 80e6 / 8 * 7)
    unmeasured = create({"targets": ["a"], "duration_seconds": 2,
                         "assumed_bits_per_second": "1gbit"})
    assert unmeasured.expected_bytes() == pytest.approx(1e9 / 8 * 2)


def test_error_report_in_json_is_a_failure() -> None:
    with pytest.raises(Iperf3Error, match="unable to connect"):
        parse_result({"start": {}, "end": {}, "error": "unable to connect to server: refused"})
    with pytest.raises(Iperf3Error, match="sum_received"):
        parse_result({"start": {}, "end": {}})


def test_check_says_why_not() -> None:
    assert "no targets" in create({}).check().reason
    missing = create({"targets": ["a"], "program": "/nonexistent/iperf3"}).check()
    assert not missing.usable and "install the iperf3 package" in missing.reason
    not_iperf = create({"targets": ["a"], "program": "true"}).check()
    assert not not_iperf.usable and "is not iperf3" in not_iperf.reason
    ok = create({"targets": ["a"]}).check()
    assert ok.usable and ok.reason.startswith("iperf 3")


# -- real runs on loopback ------------------------------------------------------------


def test_measures_loopback(server: Callable[[], int]) -> None:
    port = server()
    probe = probe_for(port)
    [sample] = probe.sample()
    assert sample.ok, sample.error
    assert sample.labels == {"target": f"127.0.0.1:{port}", "direction": "send"}
    v = sample.values
    assert v["bits_per_second"] > 1e6
    assert v["bytes"] > 0 and 0.5 < v["seconds"] < 3
    assert v["bits_per_second"] == pytest.approx(v["bytes"] * 8 / v["seconds"], rel=0.01)
    assert v["retransmits"] >= 0
    assert 0 < v["rtt_seconds"] < 1
    # The next run's estimate follows the rate just measured.
    assert probe.expected_bytes() == pytest.approx(v["bits_per_second"] / 8 * 1)


def test_reverse_with_parallel_streams(server: Callable[[], int]) -> None:
    port = server()
    [sample] = probe_for(port, reverse=True, parallel_streams=2).sample()
    assert sample.ok, sample.error
    assert sample.labels["direction"] == "receive"
    assert sample.values["bits_per_second"] > 1e6
    # The peer sends in reverse mode and reports no RTT: absent, never a zero.
    assert sample.values.get("rtt_seconds", 1.0) > 0


def test_no_server_is_a_failed_sample() -> None:
    port = free_port()
    [sample] = probe_for(port).sample()
    assert not sample.ok
    assert sample.error is not None and "unable to connect to server" in sample.error
    assert sample.labels["target"] == f"127.0.0.1:{port}"
    assert "\n" not in sample.error


def test_busy_server_retried_then_given_up(server: Callable[[], int], spawn: Spawn) -> None:
    port = server()
    occupy(spawn, port, seconds=8)
    probe = probe_for(port, busy_retries=1, busy_backoff_seconds=0.2)
    started = time.monotonic()
    [sample] = probe.sample()
    assert not sample.ok
    assert sample.error is not None
    assert "the server is busy running a test" in sample.error and "(2 tries)" in sample.error
    assert time.monotonic() - started < 8


def test_a_reset_between_tests_is_retried_like_busy() -> None:
    """A server between two tests resets new clients; that is retried, then given up."""
    import struct

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(10)
        port = listener.getsockname()[1]
        resets = 0

        def reset_clients() -> None:
            nonlocal resets
            for _ in range(2):
                with suppress(OSError):
                    conn, _ = listener.accept()
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    conn.close()
                    resets += 1

        t = threading.Thread(target=reset_clients, daemon=True)
        t.start()
        [sample] = probe_for(port, busy_retries=1, busy_backoff_seconds=0.1).sample()
        t.join(timeout=10)
    assert not sample.ok and sample.error is not None
    assert "Connection reset by peer" in sample.error and "(2 tries)" in sample.error
    assert resets == 2


def test_busy_server_retried_until_free(server: Callable[[], int], spawn: Spawn,
                                        caplog: pytest.LogCaptureFixture) -> None:
    port = server()
    occupy(spawn, port, seconds=1)
    probe = probe_for(port, busy_retries=5, busy_backoff_seconds=0.5)
    with caplog.at_level(logging.INFO, logger="ai_bottleneck.probes.iperf3"):
        [sample] = probe.sample()
    assert sample.ok, sample.error
    assert any("server busy, retry 1" in r.getMessage() for r in caplog.records)


def test_server_vanishing_mid_test(spawn: Spawn) -> None:
    port = free_port()
    srv = spawn(["iperf3", "--server", "--bind", "127.0.0.1", "--port", str(port)])
    wait_listening(srv.pid, port)
    probe = probe_for(port, duration_seconds=5, grace_seconds=10)
    killer = threading.Timer(1.0, srv.send_signal, args=(signal.SIGKILL,))
    killer.start()
    try:
        started = time.monotonic()
        [sample] = probe.sample()
        elapsed = time.monotonic() - started
    finally:
        killer.cancel()
    assert not sample.ok
    assert sample.error and "did not finish" not in sample.error  # iperf3's own message
    assert elapsed < 5


def test_time_limit_kills_a_hung_test() -> None:
    # A listener that never answers: iperf3 connects, then waits for the server forever.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        probe = probe_for(port, duration_seconds=1, connect_timeout_seconds=0.5,
                          grace_seconds=1)
        started = time.monotonic()
        [sample] = probe.sample()
        elapsed = time.monotonic() - started
    assert sample.error is not None and "did not finish within the 2.5 s limit" in sample.error
    assert 2.4 < elapsed < 10
    assert not [p for p in psutil.Process().children() if p.name() == "iperf3"]


def test_close_aborts_a_run_in_progress() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        probe = probe_for(silent.getsockname()[1], grace_seconds=30)
        result: list[object] = []
        worker = threading.Thread(target=lambda: result.extend(probe.sample()))
        started = time.monotonic()
        worker.start()
        time.sleep(0.5)
        probe.close()
        worker.join(timeout=10)
        assert not worker.is_alive()
    assert time.monotonic() - started < 10
    [sample] = result
    assert getattr(sample, "error", None) == "probe closed during the test"


def test_missing_program_is_a_failed_sample() -> None:
    [sample] = probe_for(free_port(), program="/nonexistent/iperf3").sample()
    assert sample.error is not None and "not found" in sample.error


# -- the server for peers -------------------------------------------------------------


def test_server_for_peers_restarts_after_dying(spawn: Spawn) -> None:
    port = free_port()
    srv = Iperf3Server(ServerOptions(enabled=True, bind_address="127.0.0.1", port=port,
                                     restart_delay_seconds=0))
    try:
        assert srv.ensure_running() is None  # the first call starts it
        pid = srv.pid
        assert pid is not None
        wait_listening(pid, port)
        assert srv.running and srv.ensure_running() is None
        [first] = probe_for(port).sample()
        assert first.ok, first.error
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while srv.running and time.monotonic() < deadline:
            time.sleep(0.02)
        note = srv.ensure_running()
        assert note is not None and "exited with status -9" in note and "restarted" in note
        assert srv.pid is not None and srv.pid != pid
        wait_listening(srv.pid, port)
        [second] = probe_for(port).sample()
        assert second.ok, second.error
    finally:
        srv.stop()
    assert not srv.running


def test_server_reports_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        srv = Iperf3Server(ServerOptions(enabled=True, bind_address="127.0.0.1", port=port,
                                         restart_delay_seconds=0))
        try:
            assert srv.start() is None
            deadline = time.monotonic() + 5
            while srv.running and time.monotonic() < deadline:
                time.sleep(0.05)
            note = srv.ensure_running()
            assert note is not None and "Address already in use" in note
        finally:
            srv.stop()


# -- a real shaped link ---------------------------------------------------------------


@pytest.mark.root
def test_measures_the_tbf_rate_of_a_namespaced_link() -> None:
    rate = 10e6
    with netns_link(rate_in_bits_per_second=rate, rate_out_bits_per_second=rate) as link:
        port = 5201
        server = link.popen(["iperf3", "--server", "--bind", link.ns_addr, "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for reverse in (False, True):
                probe = Iperf3Probe(parse_options(Options, {
                    "targets": [f"{link.ns_addr}:{port}"], "duration_seconds": 2,
                    "omit_seconds": 1, "reverse": reverse}))
                # After a test the server closes its listener and opens a new one; /proc
                # may still show the old one: a refused connection is that moment, so
                # the run is tried again (three times at most).
                for _ in range(3):
                    wait_listening(server.pid, port)
                    [sample] = probe.sample()
                    if "Connection refused" not in (sample.error or ""):
                        break
                    time.sleep(0.5)
                assert sample.ok, sample.error
                assert sample.values["bits_per_second"] == pytest.approx(rate, rel=0.10), reverse
        finally:
            server.kill()
            server.wait(timeout=10)
