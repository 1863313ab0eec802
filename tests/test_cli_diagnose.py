"""`ai-bottleneck diagnose` end to end: the installed command in a subprocess, real
HTTP servers (on loopback, or in a network namespace behind a tbf-limited link),
real host and NIC probes, and the fake NVML backend as the only fake.

Runs are short (8 s in 2 s windows, passive probes every 0.5 s) and each scenario
runs once per module; its tests read the same run.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ai_bottleneck.config import DEFAULT_PATH
from tests import clitool
from tests.clitool import LABELS
from tests.fakes.fake_nvml import make_gpus, write_state
from tests.netns import netns_link
from tests.servers import HttpServer, ServerConfig, subprocess_server

DURATION = 8
WINDOW = 2
INTERVAL = 0.5
WINDOWS = DURATION // WINDOW


@dataclass
class Run:
    proc: subprocess.CompletedProcess[str]
    record: Path
    home: Path
    env: dict[str, str]

    @property
    def out(self) -> dict[str, Any]:
        return dict(json.loads(self.proc.stdout))

    @property
    def windows(self) -> list[dict[str, Any]]:
        return list(self.out["windows"])


def _config(path: Path, body: str = "") -> Path:
    path.write_text(f"[agent]\ninterval_seconds = {INTERVAL}\n{body}", encoding="utf-8")
    return path


def _gpu_state(path: Path, busy_percent: float) -> Path:
    """One H100 with GPM, SM activity and coarse utilization at ``busy_percent``."""
    write_state(path, make_gpus(1, utilization_percent=busy_percent, gpm={
        "sm_util": busy_percent, "sm_occupancy": busy_percent / 2,
        "tensor_util": busy_percent / 2, "dram_bw_util": busy_percent / 3},
        memory_used_bytes=30 * 2**30))
    return path


def _diagnose(home: Path, config_body: str, busy_percent: float) -> Run:
    config = _config(home / "config.toml", config_body)
    env = clitool.fake_gpu_env(home, _gpu_state(home / "nvml.json", busy_percent), config)
    record = home / "run.jsonl"
    proc = clitool.run(["diagnose", "--duration", f"{DURATION}s", "--window", f"{WINDOW}s",
                        "--json", "--record", str(record)], env, cwd=home)
    clitool.assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    return Run(proc, record, home, env)


def _http_target(url: str, **extra: Any) -> str:
    fields = ", ".join([f'url = "{url}"', *(f"{k} = {json.dumps(v)}" for k, v in extra.items())])
    return f"[probes.http]\ntargets = [{{ {fields} }}]\n"


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """A server that takes 1.2 s per request while the fake GPU is 95% busy."""
    home = tmp_path_factory.mktemp("gpu-run")
    with HttpServer(ServerConfig("delay", delay_seconds=1.2)) as server:
        run = _diagnose(home, _http_target(server.url("/v1/generate")), busy_percent=95)
        assert server.stats.requests, "the http probe never reached the server"
    yield run


@pytest.fixture(scope="module")
def network_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """5 MB uploads to a server behind a 30 Mbit/s link while the fake GPU idles: the
    article's big GPU behind a thin pipe."""
    home = tmp_path_factory.mktemp("network-run")
    with netns_link(rate_in_bits_per_second=30e6) as link, \
            subprocess_server("sink", bind=link.ns_addr, launcher=link.popen) as (host, port):
        body = (_http_target(f"http://{host}:{port}/v1/ocr", method="POST",
                             body_bytes=5_000_000, timeout_seconds=8)
                + f'[probes.nic]\ninclude = ["{link.host_dev}"]\n')
        run = _diagnose(home, body, busy_percent=2)
    yield run


# -- the labels ------------------------------------------------------------------------

def test_slow_server_with_a_busy_gpu_is_gpu_bound(gpu_run: Run) -> None:
    verdict = gpu_run.out["verdict"]
    assert verdict["label"] == "gpu_bound", verdict
    assert verdict["label_windows"] == {"gpu_bound": WINDOWS}
    for w in gpu_run.windows:
        assert (w["label"], w["raw_label"]) == ("gpu_bound", "gpu_bound"), w["evidence"]
        gpu = w["summary"]["gpu"]["0"]
        assert gpu["busy_signal"] == "sm_active" and gpu["busy_ratio"] >= 0.9
        assert w["probes"]["gpu"] == w["probes"]["host"] == "ok"
    evidence = " | ".join(verdict["reasons"])
    assert "SM activity 95%" in evidence
    assert "server time" in evidence  # the request time is the server's, not the wire's
    assert 0.5 < verdict["confidence"] <= 1.0


@pytest.mark.root
@pytest.mark.slow
def test_large_uploads_over_a_thin_link_with_an_idle_gpu_are_network_bound(
        network_run: Run) -> None:
    verdict = network_run.out["verdict"]
    assert verdict["label"] == "network_bound", verdict
    assert verdict["label_windows"] == {"network_bound": WINDOWS}
    for w in network_run.windows:
        assert (w["label"], w["raw_label"]) == ("network_bound", "network_bound"), w["evidence"]
        (http,) = w["summary"]["http"].values()
        assert http["network_share_ratio"] > 0.9
        assert http["mean_upload_seconds"] > 1.0  # 5 MB at 30 Mbit/s is ~1.4 s
        assert w["summary"]["gpu"]["0"]["busy_ratio"] < 0.3
    evidence = " | ".join(verdict["reasons"])
    assert "network is" in evidence and "upload" in evidence
    assert "resource mismatch" in evidence  # an idle H100 behind < 50 Mbit/s
    assert any("Mbit/s per request" in a for a in verdict["advice"])
    assert 0.5 < verdict["confidence"] <= 1.0


# -- the JSON form and the windows -----------------------------------------------------

def test_json_output_is_one_object_with_windows_and_a_verdict(gpu_run: Run) -> None:
    out = gpu_run.out
    assert {"windows", "verdict"} <= set(out)
    assert out["interrupted"] is False
    assert "gpu" not in out["not_measured"]  # the fake GPU was read
    for w in gpu_run.windows:
        assert w["end"] - w["start"] == pytest.approx(WINDOW)
        assert w["label"] in LABELS
        assert 0.0 <= w["confidence"] <= 1.0
        assert isinstance(w["evidence"], list) and w["evidence"]
        assert all(isinstance(e, str) and e for e in w["evidence"])
    verdict = out["verdict"]
    assert verdict["label"] in LABELS and 0.0 <= verdict["confidence"] <= 1.0
    assert verdict["windows"] == len(gpu_run.windows)
    assert verdict["reasons"][0] == f"gpu_bound in {WINDOWS} of {WINDOWS} windows"


def test_windows_cover_the_duration_and_start_when_sampling_does(gpu_run: Run) -> None:
    """8 s in 2 s windows is 4 full windows from the recorded origin: no fifth window
    holding the run's final reading alone, and no first-round sample counted late
    because another probe's sample of the same round was handed over first."""
    windows = gpu_run.windows
    assert len(windows) == WINDOWS
    header = json.loads(gpu_run.record.read_text(encoding="utf-8").splitlines()[0])
    assert windows[0]["start"] == header["origin"]
    for before, after in itertools.pairwise(windows):
        assert after["start"] == pytest.approx(before["end"])
    assert windows[-1]["end"] == pytest.approx(header["origin"] + DURATION)
    assert [w["late_samples"] for w in windows] == [0] * WINDOWS
    # every window has about the same number of passive readings (0.5 s rounds)
    gpu_readings = [_count(gpu_run.record, "gpu", w) for w in windows]
    assert min(gpu_readings) >= WINDOW / INTERVAL - 1, gpu_readings


def _count(record: Path, probe: str, window: dict[str, Any]) -> int:
    n = 0
    for line in record.read_text(encoding="utf-8").splitlines()[1:]:
        s = json.loads(line)
        if s["probe"] == probe and window["start"] <= s["t"] < window["end"]:
            n += 1
    return n


# -- record and replay -----------------------------------------------------------------

def test_replay_of_the_recording_gives_the_live_labels(gpu_run: Run) -> None:
    proc = clitool.run(["replay", str(gpu_run.record), "--json"], gpu_run.env, gpu_run.home)
    clitool.assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    replayed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert replayed == gpu_run.windows  # same windows, labels, confidence, evidence

    text = clitool.run(["replay", str(gpu_run.record)], gpu_run.env, gpu_run.home)
    verdict = gpu_run.out["verdict"]
    assert f"VERDICT  {verdict['label']}  (confidence {verdict['confidence']:.2f})" in text.stdout


@pytest.mark.root
@pytest.mark.slow
def test_replay_of_the_network_recording_gives_the_live_labels(network_run: Run) -> None:
    proc = clitool.run(["replay", str(network_run.record), "--json"], network_run.env,
                       network_run.home)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line) for line in proc.stdout.splitlines()] == network_run.windows


# -- a new user ------------------------------------------------------------------------

def _probe_reasons(env: dict[str, str], cwd: Path) -> dict[str, tuple[str, str]]:
    proc = clitool.run(["probes"], env, cwd)
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines()[1:]:
        name, status, detail = line.split(None, 2)
        rows[name] = (status, detail)
    return rows


@pytest.mark.slow
def test_a_new_user_on_a_bare_machine_gets_a_readable_report(tmp_path: Path) -> None:
    """No config file, no GPU backend override: the real nvidia-ml-py looks for a
    driver; defaults everywhere; the issue's exact command line."""
    if DEFAULT_PATH.exists():
        pytest.skip(f"{DEFAULT_PATH} exists on this host: not a bare machine")
    env = clitool.clean_env(tmp_path)
    probes = _probe_reasons(env, tmp_path)
    proc = clitool.run(["diagnose", "--duration", "20s"], env, tmp_path)
    clitool.assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    lines = out.splitlines()
    assert lines[0].startswith("ai-bottleneck diagnose on ")
    assert "20 s from" in lines[0] and "2 windows" in lines[0]
    for section in ("VERDICT  ", "TIMELINE  ", "NOT MEASURED"):
        assert any(line.startswith(section) for line in lines), (section, out)
    verdict_line = next(line for line in lines if line.startswith("VERDICT  "))
    assert verdict_line.split()[1] in LABELS
    not_measured = lines[lines.index("NOT MEASURED") + 1:]
    rows = {}
    name = ""
    for line in not_measured:
        if not line.startswith("  "):
            break
        if line.startswith("   ") and name:  # a long reason wraps onto the next lines
            rows[name] += " " + line.strip()
            continue
        name, reason = line.split(None, 1)
        rows[name] = reason
    gpu_status, gpu_reason = probes["gpu"]
    if gpu_status == "unusable":
        assert rows["gpu"] == gpu_reason  # e.g. "no NVIDIA driver: NVML library ... not found"
        assert "NVIDIA" in gpu_reason or "NVML" in gpu_reason
    else:  # a host with a driver: the GPU was measured
        assert "gpu" not in rows
    assert rows["http"].startswith("no targets configured")


# -- Ctrl-C ------------------------------------------------------------------------------

def test_ctrl_c_ends_sampling_early_and_still_reports(tmp_path: Path) -> None:
    config = _config(tmp_path / "config.toml")
    env = clitool.clean_env(tmp_path, {"AI_BOTTLENECK_CONFIG": str(config)})
    record = tmp_path / "run.jsonl"
    proc = subprocess.Popen([*clitool.command(), "diagnose", "--duration", "60s",
                             "--window", "1s", "--record", str(record)],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_samples_spanning(record, seconds=2.5, timeout=20)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == 0, stderr
    title = " ".join(stdout.split("\n\n")[0].split())  # wrapped to the width
    assert "(ended early by Ctrl-C)" in title
    n = int(title.split(" windows")[0].rsplit(" ", 1)[1])
    assert 3 <= n < 60
    lines = stdout.splitlines()
    assert any(line.startswith("VERDICT  ") for line in lines)
    timeline = lines[lines.index(next(x for x in lines if x.startswith("TIMELINE"))) + 1]
    assert len(timeline.strip()) == n  # one character per window done


def _wait_for_samples_spanning(record: Path, seconds: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if record.exists():
            times = [json.loads(line)["t"] for line in
                     record.read_text(encoding="utf-8").splitlines()[1:] if line.endswith("}")]
            if times and max(times) - min(times) >= seconds:
                return
        time.sleep(0.1)
    raise AssertionError(f"no samples spanning {seconds}s in {record} after {timeout}s")


# -- bad input -----------------------------------------------------------------------

@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    return clitool.clean_env(tmp_path, {"AI_BOTTLENECK_CONFIG": str(_config(
        tmp_path / "config.toml"))})


@pytest.mark.parametrize(("args", "fragments"), [
    (["diagnose", "--duration", "abc"], ["--duration", "'abc' is not a duration"]),
    (["diagnose", "--duration", "0s"], ["--duration", "longer than zero"]),
    (["diagnose", "--duration", "2s", "--window", "5s"], ["--window", "5s", "2s"]),
    # the config's window (the 10 s default) against a shorter duration
    (["diagnose", "--duration", "5s"], ["window_seconds", "10s", "5s"]),
    (["diagnose", "--bogus"], ["diagnose", "--bogus", "--help"]),
    (["diagnose", "--duration", "1s", "--window", "1s", "--url", "not-a-url"],
     ["--url: ", "not-a-url"]),
    (["diagnose", "--duration", "1s", "--window", "1s", "--download", "ftp://x/"],
     ["--download: ", "ftp://x/"]),
    (["diagnose", "--duration", "1s", "--window", "1s", "--record", "no/such/dir/r.jsonl"],
     ["no/such/dir/r.jsonl", "cannot write recording"]),
    (["diagnose", "--record", "."], ["--record", "directory"]),
    (["frobnicate"], ["frobnicate"]),
])
def test_bad_arguments_are_one_line_and_exit_2(cli_env: dict[str, str], tmp_path: Path,
                                               args: list[str], fragments: list[str]) -> None:
    clitool.assert_one_line_error(clitool.run(args, cli_env, tmp_path), *fragments)


@pytest.mark.parametrize(("text", "fragments"), [
    ("[agent]\ninterval_seconds = 'fast'\n", ["agent.interval_seconds", "'fast'"]),
    ("[agent\n", ["not valid TOML"]),
    ("[probes.teleporter]\n", ["probes.teleporter", "unknown probe"]),
    ("[probes.http]\ntargets = [{ url = 'ftp://x/' }]\n", ["probes.http.targets[0]"]),
    ("[probes.http]\nconcurrency = 0\n", ["probes.http.concurrency"]),
])
def test_a_bad_config_is_one_line_naming_file_and_key(tmp_path: Path, text: str,
                                                      fragments: list[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text, encoding="utf-8")
    env = clitool.clean_env(tmp_path)
    proc = clitool.run(["diagnose", "--config", str(config), "--duration", "1s",
                        "--window", "1s"], env, tmp_path)
    clitool.assert_one_line_error(proc, str(config), *fragments)


def test_a_named_config_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    env = clitool.clean_env(tmp_path, {"AI_BOTTLENECK_CONFIG": str(missing)})
    proc = clitool.run(["diagnose", "--duration", "1s", "--window", "1s"], env, tmp_path)
    clitool.assert_one_line_error(proc, str(missing), "no such file")


def test_a_bad_flag_value_is_blamed_on_the_flag_not_the_config(tmp_path: Path) -> None:
    """With no config file the message used to name the absent default file
    ("/etc/ai-bottleneck/config.toml (absent: defaults): probes.http.targets[0]: ...")
    for a bad --url, sending the user to a file that does not exist."""
    env = clitool.clean_env(tmp_path)
    proc = clitool.run(["diagnose", "--duration", "1s", "--window", "1s", "--url", "nope"],
                       env, tmp_path)
    line = clitool.assert_one_line_error(proc, "--url: ", "'nope'")
    assert "config" not in line and "probes.http" not in line


def test_help_still_shows_usage(tmp_path: Path) -> None:
    proc = clitool.run(["diagnose", "--help"], clitool.clean_env(tmp_path), tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("Usage: ")
    bare = clitool.run([], clitool.clean_env(tmp_path), tmp_path)
    assert "Usage: " in bare.stdout + bare.stderr and "Traceback" not in bare.stderr

