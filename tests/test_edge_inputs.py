"""Validate at the edge: numbers, files and recordings a user can hand the agent.

Every bad input is one line naming the key or file (exit 2), never a traceback,
a hang or a busy loop. Commands run as the installed program in a subprocess
with a time limit: a hang fails the test instead of the run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import msgspec
import pytest

from ai_bottleneck.config import MAX_CONFIG_BYTES, load_config
from ai_bottleneck.probes.options import OptionError, option_info, parse_options
from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.record import (
    MAX_LINE_BYTES,
    RecordError,
    RecordReader,
    RecordWriter,
    make_header,
)
from ai_bottleneck.record_times import TimeGate
from ai_bottleneck.thresholds import Thresholds
from tests import clitool, synth


def _env(home: Path, config: Path | None = None) -> dict[str, str]:
    if config is None:
        config = home / "quick.toml"
        config.write_text("[agent]\ninterval_seconds = 0.25\n[probes.oom]\nenabled = false\n")
    return clitool.clean_env(home, {"AI_BOTTLENECK_CONFIG": str(config)})


# -- numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize("given", [float("nan"), float("inf"), float("-inf"), "nan%", "inf%",
                                   "1e999%", "9" * 400, 10 ** 400])
@pytest.mark.parametrize("key", ["latency_objective_seconds", "nic_idle_bits_per_second",
                                 "gpu_low_utilization_ratio"])
def test_non_finite_numbers_are_refused_naming_the_key(key: str, given: object) -> None:
    with pytest.raises(OptionError) as info:
        parse_options(Thresholds, {key: given}, prefix="thresholds")
    assert str(info.value).startswith(f"thresholds.{key}: ")
    assert "\n" not in str(info.value)


@dataclasses.dataclass(frozen=True)
class _Open:
    """Fields without a declared range: the general limits apply."""

    wait_seconds: float = 1.0
    size_bytes: int = 1
    count: float = 1.0
    share_ratio: float = 0.5


@pytest.mark.parametrize(("options", "fragment"), [
    ({"wait_seconds": 1e300}, "wait_seconds: must be <="),
    ({"wait_seconds": 1e-320}, "wait_seconds: must be 0 or at least"),
    ({"wait_seconds": "0.000001ms"}, "wait_seconds: must be 0 or at least"),
    ({"count": 1e16}, "count: must be <="),
    ({"count": -1e16}, "count: must be <="),
    ({"size_bytes": "9" * 400 + "TB"}, "size_bytes: must be a finite number"),
    ({"count": "30%"}, "a percentage is only taken by *_ratio keys"),
    ({"wait_seconds": "50%"}, "a percentage is only taken by *_ratio keys"),
])
def test_absurd_magnitudes_and_stray_percentages_are_refused(options: dict[str, object],
                                                             fragment: str) -> None:
    with pytest.raises(OptionError, match=fragment.replace("*", r"\*")):
        parse_options(_Open, options)


def test_reasonable_values_still_pass() -> None:
    got = parse_options(_Open, {"wait_seconds": 0, "count": 1e15, "share_ratio": "30%",
                                "size_bytes": "5MB"})
    assert got == _Open(wait_seconds=0.0, count=1e15, size_bytes=5_000_000, share_ratio=0.3)
    ranged = dataclasses.make_dataclass("Ranged", [("far_seconds", float, dataclasses.field(
        default=1.0, metadata=option_info(min=0, max=1e10)))], frozen=True)
    assert parse_options(ranged, {"far_seconds": 1e9}).far_seconds == 1e9  # its own range


@pytest.mark.parametrize(("text", "fragments"), [
    ("[agent]\ninterval_seconds = nan\n", ["agent.interval_seconds", "finite"]),
    ('[agent]\ninterval_seconds = "nan%"\n', ["agent.interval_seconds", "*_ratio"]),
    ("[agent]\nwindow_seconds = inf\n", ["agent.window_seconds", "finite"]),
    ("[agent]\nwindow_seconds = 1e-320\n", ["agent.window_seconds"]),
    ("[thresholds]\nlatency_objective_seconds = nan\n",
     ["thresholds.latency_objective_seconds", "finite"]),
    ("[thresholds]\nnic_idle_bits_per_second = -inf\n",
     ["thresholds.nic_idle_bits_per_second", "finite"]),
    ("[budget]\nbusy_nic_ratio = nan\n", ["budget.busy_nic_ratio", "finite"]),
    ("[budget]\nhourly_traffic_bytes = 1e300\n", ["budget.hourly_traffic_bytes"]),
])
def test_a_config_with_nan_or_absurd_numbers_is_one_line(tmp_path: Path, text: str,
                                                         fragments: list[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    proc = clitool.run(["diagnose", "--config", str(config), "--duration", "1s", "--window",
                        "1s"], _env(tmp_path), tmp_path, timeout=30)
    clitool.assert_one_line_error(proc, str(config), *fragments)


@pytest.mark.parametrize(("args", "fragments"), [
    (["diagnose", "--window", "0." + "0" * 320 + "1"], ["--window", "shorter than 1s"]),
    (["diagnose", "--duration", "0." + "0" * 320 + "1"], ["--duration"]),
    (["diagnose", "--duration", "9" * 400], ["--duration", "longer than"]),
    (["diagnose", "--duration", "1000000h"], ["--duration", "longer than"]),
    (["diagnose", "--duration", "nan"], ["--duration", "not a duration"]),
    (["replay", "x.jsonl", "--window", "0.5"], ["--window", "shorter than 1s"]),
    (["replay", "x.jsonl", "--window", "2d"], ["--window", "longer than 86400s"]),
    (["replay", "x.jsonl", "--window", "2x"], ["--window", "not a duration"]),
])
def test_cli_numbers_are_checked_before_any_arithmetic(tmp_path: Path, args: list[str],
                                                       fragments: list[str]) -> None:
    proc = clitool.run(args, _env(tmp_path), tmp_path, timeout=30)
    clitool.assert_one_line_error(proc, *fragments)


# -- files -----------------------------------------------------------------------------------


def _special(tmp_path: Path, kind: str) -> str:
    if kind == "fifo":
        path = tmp_path / "fifo.toml"
        os.mkfifo(path)
        return str(path)
    return {"zero": "/dev/zero", "urandom": "/dev/urandom", "dir": str(tmp_path)}[kind]


@pytest.mark.parametrize("kind", ["fifo", "zero", "urandom", "dir"])
def test_a_config_must_be_a_regular_file(tmp_path: Path, kind: str) -> None:
    target = _special(tmp_path, kind)
    proc = clitool.run(["probes", "--config", target], _env(tmp_path), tmp_path, timeout=20)
    clitool.assert_one_line_error(proc, target)


def test_a_config_has_a_size_limit_and_a_nesting_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    proc = clitool.run(["probes", "--config", str(big)], _env(tmp_path), tmp_path)
    clitool.assert_one_line_error(proc, str(big), "larger than")
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 50_000 + "]" * 50_000 + "\n")
    proc = clitool.run(["probes", "--config", str(deep)], _env(tmp_path), tmp_path)
    clitool.assert_one_line_error(proc, str(deep), "nested too deeply")
    inline = tmp_path / "inline.toml"
    inline.write_text("x = " + "{a = " * 20_000 + "1" + "}" * 20_000 + "\n")
    with pytest.raises(Exception, match="nested too deeply"):
        load_config(inline)


@pytest.mark.parametrize("kind", ["fifo", "zero", "dir"])
def test_a_recording_must_be_a_regular_file(tmp_path: Path, kind: str) -> None:
    target = _special(tmp_path, kind)
    with pytest.raises(RecordError, match=r"regular file|directory"):
        RecordReader(target)
    proc = clitool.run(["replay", target], _env(tmp_path), tmp_path, timeout=20)
    clitool.assert_one_line_error(proc, target)


def test_an_endless_line_is_skipped_without_holding_it(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    with RecordWriter(path) as writer:
        writer.write_many([Sample(t=1.0, probe="host", values={"x_ratio": 0.5})])
    with open(path, "ab") as fh:
        fh.write(b'{"t": 2, "probe": "host", "labels": {"a": "' + b"x" * (3 * MAX_LINE_BYTES)
                 + b'"}}\n')
        fh.write(b'{"t": 3, "probe": "host", "values": {}}\n')
    reader = RecordReader(path)
    assert [s.t for s in reader] == [1.0, 3.0]
    assert reader.stats.malformed == 1 and reader.stats.first_bad_lines == [3]


def test_a_label_with_a_lone_surrogate_does_not_break_the_report(tmp_path: Path) -> None:
    path = tmp_path / "surrogate.jsonl"
    lines = [json.dumps(make_header(window_seconds=2.0))]
    http = '"probe": "http", "labels": {"target": "\\ud800api"}, "values": {"total_seconds": 3.0}'
    host = '"probe": "host", "values": {"cpu_utilization_ratio": 0.1}'
    for i in range(20):
        t = synth.T0 + i * 0.5
        lines += [f'{{"t": {t!r}, {http}}}', f'{{"t": {t!r}, {host}}}']
    iperf3 = '"probe": "iperf3", "labels": {"target": "\\udcff"}, "error": "refused \\ud800"'
    lines.append(f'{{"t": {synth.T0 + 5!r}, {iperf3}}}')
    path.write_text("\n".join(lines) + "\n")
    for args in ([], ["--json"]):
        proc = clitool.run(["replay", str(path), *args], _env(tmp_path), tmp_path)
        clitool.assert_no_traceback(proc)
        assert proc.returncode == 0, proc.stderr
        assert "\\ud800api" in proc.stdout  # written escaped


# -- implausible times in a recording -----------------------------------------------------------


def _stream(ts: list[float]) -> list[float]:
    gate = TimeGate()
    out: list[float] = []
    for t in ts:
        out += [s.t for s in gate.admit(Sample(t=t, probe="host"))]
    out += [s.t for s in gate.finish()]
    return out


def test_the_time_gate_drops_outliers_and_follows_real_jumps() -> None:
    base = [synth.T0 + i for i in range(10)]
    assert _stream(base) == base
    assert _stream([*base[:5], base[5] * 1000, *base[5:]]) == base  # milliseconds
    assert _stream([*base[:5], base[5] + 3e7, *base[5:]]) == base  # a year ahead
    assert _stream([base[0] * 1000, *base]) == base  # a bad first line
    later = [t + 2 * 86400 for t in base]  # a recording paused for two days
    assert _stream(base + later) == base + later
    assert _stream(base[:1]) == base[:1]  # too short to judge: kept
    assert _stream([*base[:3], 1e15, 1e15 + 1]) == base[:3]  # outliers at the very end


def test_one_millisecond_stamped_line_does_not_collapse_the_windows(tmp_path: Path) -> None:
    scene = synth.scene(synth.gpu(util=0.97, sm=0.92), synth.host(cpu=0.3), seconds=60)
    bad = msgspec.structs.replace(scene[40], t=scene[40].t * 1000)
    path = tmp_path / "ms.jsonl"
    with RecordWriter(path, make_header(window_seconds=10.0)) as writer:
        writer.write_many([*scene[:41], bad, *scene[41:]])
    proc = clitool.run(["replay", str(path), "--json"], _env(tmp_path), tmp_path)
    clitool.assert_no_traceback(proc)
    windows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(windows) == 6 and all(w["late_samples"] == 0 for w in windows)
    assert {w["label"] for w in windows} == {"gpu_bound"}
    assert "1 samples dropped" in proc.stderr
    text = clitool.run(["replay", str(path)], _env(tmp_path), tmp_path)
    assert "1 samples dropped: their time is more than a day away" in text.stdout


def test_recording_target_in_dev_is_refused_before_sampling(tmp_path: Path) -> None:
    proc = subprocess.run([*clitool.command(), "diagnose", "--duration", "1s", "--window", "1s",
                           "--record", "/dev/zero"], env=_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=20, check=False)
    clitool.assert_one_line_error(proc, "/dev/zero", "not a regular file")
