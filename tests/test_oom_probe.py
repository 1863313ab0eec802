"""The OOM / load-failure watcher on real files (appended, rotated, truncated) and journals."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_bottleneck.probes.logtail import FileFollower, JournalFollower, parse_journal_entry
from ai_bottleneck.probes.oom import Classifier, OomProbe, Options, create
from ai_bottleneck.probes.options import OptionError
from ai_bottleneck.probes.sample import Sample
from tests import clitool

OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
VLLM_OOM = ("ValueError: No available memory for the cache blocks. Try increasing "
            "`gpu_memory_utilization` when initializing the engine.")
LOAD = "ERROR server: Failed to load model /models/llama-7b: checkpoint shard missing"
PLAIN = "INFO 127.0.0.1 - POST /v1/completions 200"


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def values(sample: Sample) -> dict[str, float]:
    assert sample.ok, sample.error
    return dict(sample.values)


@pytest.fixture
def probe_factory() -> Iterator[type[OomProbe]]:
    made: list[OomProbe] = []

    class Closing(OomProbe):
        def __init__(self, *args: object, **kwargs: object):
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    yield Closing
    for probe in made:
        probe.close()


def test_each_line_counts_once_in_one_category() -> None:
    c = Classifier.from_options(Options(extra_load_failure_patterns=(r"shard \d+ crashed",)))
    assert c.classify(OOM) == "oom"  # matches three oom patterns, one event
    assert c.classify(VLLM_OOM) == "oom"
    assert c.classify("RuntimeError: CUDA error: out of memory") == "oom"
    assert c.classify(LOAD) == "load_failure"
    assert c.classify("Error loading model: unknown architecture") == "load_failure"
    assert c.classify("Failed to load model: CUDA out of memory") == "oom"  # the cause wins
    assert c.classify("shard 3 crashed") == "load_failure"
    assert c.classify(PLAIN) is None
    assert c.classify("Out of memory: Killed process 4242 (python)") is None  # host OOM


def test_bad_options_name_the_key() -> None:
    with pytest.raises(OptionError, match=r"extra_oom_patterns\[1\]"):
        create({"extra_oom_patterns": ["ok", "(unclosed"]})
    with pytest.raises(OptionError, match="units"):
        create({"units": ["two words"]})
    with pytest.raises(OptionError, match="listed twice"):
        create({"files": ["/var/log/a.log", "/var/log/a.log"]})
    with pytest.raises(OptionError, match="max_read_bytes"):
        create({"max_read_bytes": 10})
    assert create({"max_read_bytes": "1MiB"}).options.max_read_bytes == 2**20


def test_file_appended_rotated_and_truncated(tmp_path: Path,
                                             probe_factory: type[OomProbe]) -> None:
    log = tmp_path / "vllm.log"
    log.write_text(f"{OOM}\n{LOAD}\n")  # before the watcher started: not counted
    probe = probe_factory(Options(files=(str(log),)))
    assert probe.check().usable and probe.active is False
    assert values(probe.sample()[0])["oom_events"] == 0

    append(log, f"{PLAIN}\n{OOM}\n{VLLM_OOM}\n{LOAD}\nCUDA out of mem")  # partial line
    [s] = probe.sample()
    assert s.labels == {"source": str(log)}
    assert values(s) == {"oom_events": 2, "load_failure_events": 1,
                         "oom_events_total": 2, "load_failure_events_total": 1}

    append(log, "ory\n")  # the held line completes
    assert values(probe.sample()[0])["oom_events"] == 1

    # Rotation by rename: lines written to the old file just before it moves are read,
    # then the new file from its start.
    append(log, f"{OOM}\n")
    log.rename(tmp_path / "vllm.log.1")
    assert values(probe.sample()[0])["oom_events"] == 1  # the old file, new one not there
    append(log, f"{LOAD}\n{OOM}\n")
    v = values(probe.sample()[0])
    assert (v["oom_events"], v["load_failure_events"]) == (1, 1)

    # Rotation by truncation (copytruncate): the file starts over, shorter than before.
    with open(log, "w", encoding="utf-8") as f:
        f.write(f"{LOAD}\n")
    v = values(probe.sample()[0])
    assert (v["oom_events"], v["load_failure_events"]) == (0, 1)
    assert (v["oom_events_total"], v["load_failure_events_total"]) == (5, 3)


def test_rotating_writer_running_concurrently(tmp_path: Path,
                                              probe_factory: type[OomProbe]) -> None:
    """A service logging through Python's RotatingFileHandler while the probe samples:
    every matching line is counted exactly once across the rotation."""
    log = tmp_path / "svc.log"
    kinds = [OOM, LOAD, PLAIN, PLAIN, VLLM_OOM, PLAIN]
    lines = 400
    size = sum(len(f"{i:05d} {kinds[i % len(kinds)]}\n") for i in range(lines))
    # Rotate at 60% of what will be written: exactly one rotation, mid-run.
    handler = logging.handlers.RotatingFileHandler(log, maxBytes=int(size * 0.6),
                                                   backupCount=3, encoding="utf-8")
    logger = logging.Logger("svc")
    logger.addHandler(handler)
    probe = probe_factory(Options(files=(str(log),), from_start=True))
    done = threading.Event()

    def write() -> None:
        try:
            for i in range(lines):
                logger.error("%05d %s", i, kinds[i % len(kinds)])
                if i % 40 == 0:
                    time.sleep(0.002)  # let the sampler interleave
        finally:
            handler.close()
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    samples: list[Sample] = []
    deadline = time.monotonic() + 30
    while not done.is_set() and time.monotonic() < deadline:
        samples.extend(s for s in probe.sample() if s.ok)
        time.sleep(0.001)
    writer.join(timeout=10)
    [last] = probe.sample()
    assert (tmp_path / "svc.log.1").exists() and not (tmp_path / "svc.log.2").exists()
    expected_oom = sum(1 for i in range(lines) if kinds[i % len(kinds)] in (OOM, VLLM_OOM))
    expected_load = sum(1 for i in range(lines) if kinds[i % len(kinds)] == LOAD)
    v = values(last)
    assert v["oom_events_total"] == expected_oom
    assert v["load_failure_events_total"] == expected_load
    assert sum(s.values["oom_events"] for s in [*samples, last]) == expected_oom
    assert sum(1 for s in samples if s.values["oom_events"] > 0) >= 2  # it did interleave


def test_file_that_appears_later_is_read_from_its_start(
        tmp_path: Path, probe_factory: type[OomProbe]) -> None:
    log = tmp_path / "later.log"
    probe = probe_factory(Options(files=(str(log),)))
    [s] = probe.sample()
    assert s.error is not None and "no such file" in s.error and str(log) in s.error
    log.write_text(f"{OOM}\n")
    assert values(probe.sample()[0])["oom_events"] == 1


def test_from_start_counts_what_is_there(tmp_path: Path,
                                         probe_factory: type[OomProbe]) -> None:
    log = tmp_path / "old.log"
    log.write_text(f"{OOM}\n{OOM}\n{LOAD}\n")
    v = values(probe_factory(Options(files=(str(log),), from_start=True)).sample()[0])
    assert (v["oom_events"], v["load_failure_events"]) == (2, 1)


def test_reads_are_bounded_and_catch_up(tmp_path: Path,
                                        probe_factory: type[OomProbe]) -> None:
    log = tmp_path / "big.log"
    line = f"{OOM} ".ljust(127, "x") + "\n"
    assert len(line) == 128
    log.write_text(line * 100)
    probe = probe_factory(Options(files=(str(log),), from_start=True, max_read_bytes=4096))
    per_sample = [values(probe.sample()[0])["oom_events"] for _ in range(5)]
    assert per_sample == [32, 32, 32, 4, 0]


def test_overlong_line_is_cut_not_hoarded(tmp_path: Path) -> None:
    log = tmp_path / "noise.log"
    log.write_text("")
    follower = FileFollower(log, max_line_bytes=1000)
    try:
        assert follower.read_lines(10_000) == []
        append(log, "y" * 2500)
        got = follower.read_lines(10_000)
        assert [len(s) for s in got] == [1000, 1000]
        append(log, "\n")
        assert [len(s) for s in follower.read_lines(10_000)] == [500]
    finally:
        follower.close()


def test_unreadable_source_is_a_failed_sample(tmp_path: Path,
                                              probe_factory: type[OomProbe]) -> None:
    ok = tmp_path / "ok.log"
    ok.write_text("")
    probe = probe_factory(Options(files=(str(tmp_path), str(ok))))  # a directory, a file
    bad, good = probe.sample()
    assert bad.error is not None and "directory" in bad.error.lower()
    assert bad.labels == {"source": str(tmp_path)}
    assert good.ok


# -- the journal ----------------------------------------------------------------------


def test_journal_entry_parsing() -> None:
    assert parse_journal_entry('{"MESSAGE": "hi", "__CURSOR": "c1"}') == ("hi", "c1")
    assert parse_journal_entry('{"MESSAGE": [67, 85, 68, 65, 255], "__CURSOR": "c2"}') == (
        "CUDA\ufffd", "c2")
    assert parse_journal_entry('{"MESSAGE": null, "__CURSOR": "c3"}') == (None, "c3")
    assert parse_journal_entry("-- No entries --") == (None, None)
    assert parse_journal_entry("[1, 2]") == (None, None)


def test_journal_without_journalctl_says_why(probe_factory: type[OomProbe]) -> None:
    probe = probe_factory(Options(units=("vllm.service",), journalctl="/nonexistent/journalctl"))
    availability = probe.check()
    assert not availability.usable and "journalctl not found" in availability.reason
    [s] = probe.sample()
    assert s.labels == {"source": "journal:vllm.service"}
    assert s.error is not None and "cannot be read on this host" in s.error


@pytest.mark.skipif(shutil.which("journalctl") is None, reason="journalctl is not installed")
def test_journal_of_a_quiet_unit_counts_nothing(probe_factory: type[OomProbe]) -> None:
    probe = probe_factory(Options(units=("ai-bottleneck-test-no-such-unit.service",)))
    for _ in range(2):  # the first call finds the end, the second reads from there
        v = values(probe.sample()[0])
        assert v["oom_events"] == 0 and v["oom_events_total"] == 0


def _journal_remote() -> str | None:
    """systemd-journal-remote (Debian package of that name) writes real journal files
    from journal export text; the test reads them back with the real journalctl."""
    candidates = [os.environ.get("SYSTEMD_JOURNAL_REMOTE", ""),
                  "/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote"]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def _write_journal(out: Path, entries: list[tuple[str, str]]) -> None:
    program = _journal_remote()
    assert program is not None
    now = int(time.time() * 1e6)
    text = "".join(
        f"__REALTIME_TIMESTAMP={now + i}\n__MONOTONIC_TIMESTAMP={now + i}\n"
        f"_BOOT_ID=0123456789abcdef0123456789abcdef\n_SYSTEMD_UNIT={unit}\n"
        f"MESSAGE={message}\n\n"
        for i, (unit, message) in enumerate(entries))
    subprocess.run([program, f"--output={out}", "-"], input=text.encode(), check=True,
                   capture_output=True, timeout=30)


@pytest.mark.skipif(shutil.which("journalctl") is None or _journal_remote() is None,
                    reason="needs journalctl and systemd-journal-remote")
def test_journal_followed_from_a_cursor(tmp_path: Path) -> None:
    journal = tmp_path / "remote.journal"
    _write_journal(journal, [("vllm.service", OOM), ("other.service", OOM)])
    follower = JournalFollower("vllm.service", directory=tmp_path, max_entries=2)
    assert follower.read_lines() == []  # finds the end: older entries are not news
    _write_journal(journal, [("vllm.service", LOAD), ("other.service", OOM),
                             ("vllm.service", OOM), ("vllm.service", PLAIN),
                             ("vllm.service", VLLM_OOM)])
    assert follower.read_lines() == [LOAD, OOM]  # bounded: 2 entries per call
    assert follower.read_lines() == [PLAIN, VLLM_OOM]
    assert follower.read_lines() == []
    probe = OomProbe(Options(units=("vllm.service",), journal_directory=str(tmp_path),
                             from_start=True))
    v = values(probe.sample()[0])
    assert (v["oom_events"], v["load_failure_events"]) == (3, 1)


# -- patterns that cannot hang ------------------------------------------------------------


def test_a_catastrophic_pattern_matches_in_linear_time_in_a_real_agent_process(
        tmp_path: Path) -> None:
    """^(a+)+$ froze Python's backtracking engine (and the whole process with it): here
    the watcher reads such lines in a real `diagnose`, which ends and reports on time."""
    log = tmp_path / "service.log"
    log.write_text(("a" * 40 + "!\n") * 50 + "a" * 30 + "\n")
    config = tmp_path / "config.toml"
    config.write_text(f'[agent]\ninterval_seconds = 0.25\n[probes.oom]\nfiles = ["{log}"]\n'
                      f'from_start = true\ninterval_seconds = 0.25\n'
                      f'extra_oom_patterns = ["^(a+)+$"]\n')
    env = clitool.clean_env(tmp_path, {"AI_BOTTLENECK_CONFIG": str(config)})
    proc = clitool.run(["diagnose", "--duration", "2s", "--window", "1s", "--json"], env,
                       tmp_path, timeout=30)
    clitool.assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verdict"]["windows"] == 2


@pytest.mark.parametrize(("pattern", "reason"), [
    (r"(a)\1", "invalid escape sequence"),
    (r"foo(?=bar)", "invalid perl operator"),
    (r"(?<!x)y", "invalid perl operator"),
    (r"x{1001}", "invalid repetition size"),
])
def test_constructs_re2_refuses_are_one_line_naming_the_option(tmp_path: Path, pattern: str,
                                                               reason: str) -> None:
    with pytest.raises(OptionError) as info:
        create({"extra_load_failure_patterns": ["fine", pattern]})
    text = str(info.value)
    assert "extra_load_failure_patterns[1]" in text and reason in text and "RE2" in text
    assert "\n" not in text
    config = tmp_path / "config.toml"
    config.write_text(f"[probes.oom]\nextra_oom_patterns = [{json.dumps(pattern)}]\n")
    proc = clitool.run(["probes", "--config", str(config)], clitool.clean_env(tmp_path),
                       tmp_path)
    clitool.assert_no_traceback(proc)
    assert "invalid" in proc.stdout + proc.stderr and "re2.cc" not in proc.stderr
