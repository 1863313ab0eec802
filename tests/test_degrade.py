"""Degrade, never die: a recording that cannot be written pauses, sampling goes on.

Full disks are real: a small tmpfs mounted for the test (tests/tmpfs.py), filled to
the last byte and freed again. The agent and `diagnose` run as the installed
command in subprocesses; /metrics and /healthz are read over real sockets.
"""

from __future__ import annotations

import http.client
import logging
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from ai_bottleneck.endpoint import MetricsServer
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.record import RecordError, RecordWriter, make_header, read_record
from ai_bottleneck.sampler import Round, Sampler
from ai_bottleneck.state import AgentState
from tests import clitool
from tests.plugin_probes import CounterProbe
from tests.test_daemon import (
    FAST,
    QUIET,
    Daemon,
    env_for,
    nvml_state,  # noqa: F401 (a fixture)
    scrape_until,
    start,  # noqa: F401 (a fixture)
    value,
)
from tests.tmpfs import Disk, mounted_tmpfs


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    with mounted_tmpfs(tmp_path) as mounted:
        yield mounted


def _batch(first: int, n: int) -> list[Sample]:
    # Values that do not repeat, so even the gzip stream of a batch spans pages.
    return [Sample(t=1_000.0 + i, probe="host",
                   values={"cpu_utilization_ratio": (i * 7919 % 10007) / 10007,
                           "load1_per_cpu": (i * 104729 % 1009) / 97})
            for i in range(first, first + n)]


# -- the writer --------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("name", ["rec.jsonl", "rec.jsonl.gz"])
def test_a_full_disk_pauses_the_recording_and_free_space_resumes_it(
        disk: Disk, name: str, caplog: pytest.LogCaptureFixture) -> None:
    path = disk.root / name
    writer = RecordWriter(path)
    writer.write_many(_batch(0, 50))
    assert writer.up and writer.count == 50
    size_before = path.stat().st_size
    disk.fill()
    with caplog.at_level(logging.WARNING, logger="ai_bottleneck.record"):
        for k in range(3):  # never raises
            writer.write_many(_batch(1000 + k * 500, 500))
        assert not writer.up
        assert writer.errors_total == 3 and writer.samples_lost == 1500
        assert path.stat().st_size == size_before  # the torn batch was cut off again
        paused = [r for r in caplog.records if "paused" in r.getMessage()]
        assert len(paused) == 1 and "No space left on device" in paused[0].getMessage()
        disk.free()
        writer.write_many(_batch(5000, 50))
        assert writer.up and writer.count == 100
        assert any("resumed" in r.getMessage() for r in caplog.records)
    writer.close()
    note = writer.lost_note()
    assert note is not None and "1500 samples were not recorded" in note
    _header, samples, stats = read_record(path)
    assert stats.malformed == 0
    assert samples == _batch(0, 50) + _batch(5000, 50)


@pytest.mark.root
def test_a_recording_started_on_a_full_disk_gets_its_header_when_space_returns(
        disk: Disk) -> None:
    disk.fill()
    path = disk.root / "late.jsonl"
    writer = RecordWriter(path, make_header(mode="test"))
    assert not writer.up and path.stat().st_size == 0
    writer.write_many(_batch(0, 500))
    disk.free()
    writer.write_many(_batch(600, 10))
    writer.close()
    header, samples, stats = read_record(path)
    assert header["mode"] == "test" and stats.malformed == 0
    assert samples == _batch(600, 10) and writer.samples_lost == 500


@pytest.mark.parametrize("target", ["/dev/full", "/dev/null"])
def test_a_device_is_no_recording(target: str) -> None:
    with pytest.raises(RecordError, match="not a regular file"):
        RecordWriter(target)


def test_a_fifo_is_refused_at_once_instead_of_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    outcome: list[str] = []

    def attempt() -> None:
        try:
            RecordWriter(fifo)
        except RecordError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=attempt, daemon=True)  # the old writer blocked for ever
    worker.start()
    worker.join(5)
    assert outcome and "not a regular file" in outcome[0]


def test_a_taken_name_gets_a_suffix_and_the_old_file_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl.gz"
    path.write_bytes(b"earlier run")
    paths = []
    for _ in range(3):
        with RecordWriter(path) as writer:
            writer.write_many(_batch(0, 2))
        paths.append(writer.path)
    assert path.read_bytes() == b"earlier run"
    assert len(set(paths)) == 3 and path not in paths
    assert all(p.name.startswith("run-") and p.name.endswith(".jsonl.gz") for p in paths)
    assert all(read_record(p)[1] == _batch(0, 2) for p in paths)


def test_a_recording_is_mode_0640_and_never_follows_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "etc-shadow"  # a dangling link a root agent must not create
    link = tmp_path / "run.jsonl"
    link.symlink_to(victim)
    old = os.umask(0o022)
    try:
        with RecordWriter(link) as writer:
            writer.write_many(_batch(0, 1))
    finally:
        os.umask(old)
    assert not victim.exists() and link.is_symlink()
    assert writer.path != link and stat.S_IMODE(writer.path.stat().st_mode) == 0o640


# -- the sampling loop and /healthz -------------------------------------------------------


def test_a_consumer_that_raises_does_not_end_sampling(caplog: pytest.LogCaptureFixture) -> None:
    got: list[Sample] = []

    def broken(rounds: Sequence[Round]) -> None:
        got.extend(s for r in rounds for s in r.samples)
        raise RuntimeError("consumer bug")

    sampler = Sampler([CounterProbe()], interval_seconds=0.05, consumer=broken)
    try:
        with caplog.at_level(logging.ERROR):
            for _ in range(3):
                sampler.tick()
                time.sleep(0.06)
    finally:
        sampler.close()
    assert [s.values["count"] for s in got] == [1, 2, 3]
    assert sampler.consumer_errors == 3
    assert sum("consumer failed" in r.getMessage() for r in caplog.records) == 1


class _Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def _healthz(port: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@pytest.mark.root
def test_healthz_says_why_when_sampling_stalls_or_the_recording_pauses(
        disk: Disk) -> None:
    clock = _Clock()
    state = AgentState(interval_seconds=1.0, clock=clock)
    state.register_probe("host")
    writer = RecordWriter(disk.root / "r.jsonl")
    state.watch_recording(writer)
    with MetricsServer(state, "127.0.0.1:0", process_metrics=False) as server:
        assert _healthz(server.port) == (200, "ok\n")
        clock.t += 31  # no probe round for 31 s: five intervals, at least 30 s
        status, body = _healthz(server.port)
        assert status == 503 and body == "sampling stalled: no probe round for 31 s\n"
        state.record_samples("host", _batch(0, 1))
        assert _healthz(server.port) == (200, "ok\n")
        disk.fill()
        writer.write_many(_batch(0, 500))
        assert _healthz(server.port) == (503, "recording paused: No space left on device\n")
        disk.free()
        writer.write_many(_batch(0, 1))
        assert _healthz(server.port) == (200, "ok\n")
    writer.close()
    # A reload swaps the writer: its errors stay counted.
    state.watch_recording(None)
    assert state.snapshot().record_errors_total() == 1


# -- the agent and diagnose, as users run them ------------------------------------------------


def _healthz_until(port: int, done: Callable[[int, str], bool], what: str) -> str:
    deadline = time.monotonic() + 20
    while True:
        status, body = _healthz(port)
        if done(status, body):
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: /healthz still says {status} {body!r}")
        time.sleep(0.1)


@pytest.mark.root
@pytest.mark.slow
def test_the_agent_samples_on_through_a_full_disk_and_records_again_after(
        start: Callable[..., Daemon], nvml_state: Path,  # noqa: F811
        disk: Disk) -> None:
    record = disk.root / "agent.jsonl"
    daemon = start(FAST + f'record_file = "{record}"\n' + QUIET, env_for(nvml_state))
    conn = daemon.connect()
    try:
        scrape_until(conn, lambda f: value(f, "ai_bottleneck_recording_up") == 1.0
                     and "ai_bottleneck_window_label" in f, "a first window, recording")
        disk.fill()
        families = scrape_until(conn, lambda f: value(f, "ai_bottleneck_recording_up") == 0.0,
                                "the recording paused")
        assert (value(families, "ai_bottleneck_record_errors_total") or 0) >= 1
        body = _healthz_until(daemon.port, lambda s, b: s == 503, "not OK while paused")
        assert body == "recording paused: No space left on device\n"
        windows = sum(families["ai_bottleneck_windows_total"].values())
        host = value(families, "ai_bottleneck_probe_samples_total", probe="host") or 0
        # Sampling and labelling go on while nothing can be written.
        scrape_until(conn, lambda f: sum(f["ai_bottleneck_windows_total"].values()) > windows + 1
                     and (value(f, "ai_bottleneck_probe_samples_total", probe="host") or 0)
                     > host + 4 and value(f, "ai_bottleneck_recording_up") == 0.0,
                     "windows and samples while paused")
        disk.free()
        scrape_until(conn, lambda f: value(f, "ai_bottleneck_recording_up") == 1.0,
                     "the recording resumed")
        _healthz_until(daemon.port, lambda s, b: (s, b) == (200, "ok\n"), "OK again")
    finally:
        conn.close()
    assert daemon.stop() == 0
    log = daemon.log()
    assert "Traceback" not in log
    assert len([line for line in log.splitlines() if "recording to" in line
                and "paused" in line]) == 1
    assert "resumed" in log
    _header, samples, stats = read_record(record)
    assert stats.malformed == 0 and samples


def _quick_env(home: Path) -> dict[str, str]:
    config = home / "config.toml"
    config.write_text("[agent]\ninterval_seconds = 0.25\n[probes.oom]\nenabled = false\n")
    return clitool.clean_env(home, {"AI_BOTTLENECK_CONFIG": str(config)})


@pytest.mark.root
def test_diagnose_onto_a_full_disk_still_reports_and_says_what_was_lost(
        tmp_path: Path, disk: Disk) -> None:
    disk.fill()
    record = disk.root / "run.jsonl"
    proc = clitool.run(["diagnose", "--duration", "2s", "--window", "1s", "--record",
                        str(record)], _quick_env(tmp_path), tmp_path)
    clitool.assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ai-bottleneck diagnose on ")
    assert any(line.startswith("VERDICT  ") for line in proc.stdout.splitlines())
    # The report wraps its notes to the terminal width, long paths included: compared
    # with the line breaks and spaces out.
    report = "".join(proc.stdout.split())
    assert f"recordingto{record}pausedattheend" in report
    assert "sampleswerenotrecorded(Nospaceleftondevice)" in report


@pytest.mark.parametrize("target", ["/dev/full", "fifo"])
def test_diagnose_refuses_a_record_target_that_is_no_file(tmp_path: Path, target: str) -> None:
    if target == "fifo":
        target = str(tmp_path / "fifo")
        os.mkfifo(target)
    proc = clitool.run(["diagnose", "--duration", "1s", "--window", "1s", "--record", target],
                       _quick_env(tmp_path), tmp_path, timeout=20)
    clitool.assert_one_line_error(proc, target, "not a regular file")


@pytest.mark.parametrize("args", [["probes"], ["--help"],
                                  ["diagnose", "--duration", "1s", "--window", "1s"]])
def test_output_to_a_full_disk_or_a_closed_pipe_is_no_traceback(tmp_path: Path,
                                                                args: list[str]) -> None:
    env = _quick_env(tmp_path)
    with open("/dev/full", "w") as full:
        proc = subprocess.run([*clitool.command(), *args], env=env, cwd=tmp_path, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=30, check=False)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.returncode == 1 and "No space left on device" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # A reader that went away: the pipe is closed before the command writes.
    reader, writer = os.pipe()
    os.close(reader)
    try:
        proc = subprocess.run([*clitool.command(), *args], env=env, cwd=tmp_path, stdout=writer,
                              stderr=subprocess.PIPE, text=True, timeout=30, check=False)
    finally:
        os.close(writer)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.returncode != 0
