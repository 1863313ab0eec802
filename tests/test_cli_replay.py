"""`ai-bottleneck replay` end to end on recordings good and bad: the installed command
in a subprocess, recordings written with the record writer from synthetic samples
in the agreed vocabulary (tests/synth.py), then damaged on purpose.

Every outcome is clear: a label with notes for what was skipped, or one line and
exit 2 for a file that is not a recording. Never a traceback.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.record import RecordWriter, make_header
from tests import clitool, synth
from tests.clitool import LABELS

WINDOW = 10.0
SECONDS = 40
PROBES = ["gpu", "host", "http", "nic"]


def _busy_gpu_scene(start: float = synth.T0) -> list[Sample]:
    """40 s of a GPU at 92% SM activity behind slow requests that spend their time in
    the server: gpu_bound in each of four 10 s windows."""
    return synth.scene(synth.gpu(util=0.97, sm=0.92), synth.host(cpu=0.3),
                       synth.nic(tx=2e6), synth.http(total=2.0, server=1.9, upload=0.02),
                       seconds=SECONDS, start=start)


def _write(path: Path, samples: Sequence[Sample], **header: Any) -> Path:
    fields = {"window_seconds": WINDOW, "probes": PROBES, **header}
    with RecordWriter(path, make_header(**fields)) as writer:
        writer.write_many(samples)
    return path


def _replay(path: Path, *args: str) -> Any:
    proc = clitool.run(["replay", str(path), *args], clitool.clean_env(path.parent),
                       path.parent)
    clitool.assert_no_traceback(proc)
    return proc


def _windows(path: Path, *args: str) -> list[dict[str, Any]]:
    proc = _replay(path, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _labels(windows: Sequence[dict[str, Any]]) -> list[tuple[float, str, float]]:
    return [(w["start"], w["label"], w["confidence"]) for w in windows]


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    return _write(tmp_path / "clean.jsonl", _busy_gpu_scene())


def test_a_clean_recording_is_labelled_window_by_window(clean: Path) -> None:
    windows = _windows(clean)
    assert [w["start"] for w in windows] == [synth.T0 + i * WINDOW for i in range(4)]
    for w in windows:
        assert w["label"] == "gpu_bound" and w["label"] in LABELS
        assert 0.0 < w["confidence"] <= 1.0
        assert w["end"] - w["start"] == WINDOW
        assert isinstance(w["evidence"], list) and all(isinstance(e, str) for e in w["evidence"])
        assert w["late_samples"] == 0
    text = _replay(clean)
    assert text.returncode == 0
    assert f"{4 * SECONDS} samples, 4 windows" in text.stdout.splitlines()[0]
    assert "VERDICT  gpu_bound" in text.stdout


def test_malformed_lines_are_counted_skipped_and_named(clean: Path, tmp_path: Path) -> None:
    lines = clean.read_text(encoding="utf-8").splitlines()
    bad = ['{"t": 1700000001.0, "probe": "gpu"',            # cut short
           "not json at all",
           "[1, 2, 3]",                                     # JSON, not an object
           '{"t": "yesterday", "probe": "host", "values": {}}',
           '{"t": 1700000002.0, "values": {"cpu_utilization_ratio": 0.3}}',  # no probe
           '{"t": 1700000003.0, "probe": "host", "values": "lots"}']
    # spread through the file: after the header, in the middle, at the end
    damaged = [lines[0], bad[0], *lines[1:50], bad[1], bad[2], *lines[50:120], bad[3],
               *lines[120:], bad[4], bad[5]]
    path = tmp_path / "damaged.jsonl"
    path.write_text("\n".join(damaged) + "\n", encoding="utf-8")
    bad_lines = [i + 1 for i, line in enumerate(damaged) if line in bad]

    proc = _replay(path)
    assert proc.returncode == 0, proc.stderr
    assert f"note: {len(bad)} malformed lines skipped (first at line {bad_lines[0]})" \
        in proc.stdout
    for number in bad_lines:  # each one named in a warning
        assert f"line {number} skipped" in proc.stderr, (number, proc.stderr)
    assert _labels(_windows(path)) == _labels(_windows(clean))

    as_json = _replay(path, "--json")
    assert all(json.loads(line)["label"] in LABELS for line in as_json.stdout.splitlines())
    assert f"ai-bottleneck: {len(bad)} malformed lines skipped" in as_json.stderr


def test_unknown_probes_and_values_are_kept_and_ignored(tmp_path: Path) -> None:
    scene = _busy_gpu_scene()
    extra = [Sample(synth.T0 + i + 0.5, "teleporter", {"unit": "a"}, {"flux_ratio": 0.5})
             for i in range(SECONDS)]
    renamed = [Sample(s.t, s.probe, s.labels, {**s.values, "from_the_future_ratio": 0.1})
               if s.probe == "host" else s for s in scene]
    mixed = sorted([*renamed, *extra], key=lambda s: s.t)
    plain = _write(tmp_path / "plain.jsonl", scene)
    path = _write(tmp_path / "future.jsonl", mixed, from_a_newer_writer={"x": 1})
    proc = _replay(path)
    assert proc.returncode == 0, proc.stderr
    assert "malformed" not in proc.stdout + proc.stderr
    assert _labels(_windows(path)) == _labels(_windows(plain))


def test_samples_slightly_out_of_order_land_in_their_own_windows(clean: Path,
                                                                 tmp_path: Path) -> None:
    """Probe threads finish in any order: up to the 2 s reorder delay it makes no
    difference to the windows."""
    rng = random.Random(4)
    scene = _busy_gpu_scene()
    first, rest = scene[:4], scene[4:]  # the first second stays first: it sets the origin
    jumbled = first + sorted(rest, key=lambda s: s.t + rng.uniform(-1.5, 1.5))
    assert jumbled != scene
    path = _write(tmp_path / "jumbled.jsonl", jumbled)
    windows = _windows(path)
    assert [(w["start"], w["label"], w["samples"], w["late_samples"]) for w in windows] == \
        [(w["start"], w["label"], w["samples"], w["late_samples"]) for w in _windows(clean)]


def test_a_sample_far_out_of_order_is_kept_and_reported(clean: Path, tmp_path: Path) -> None:
    scene = _busy_gpu_scene()
    straggler = synth.http_sample(synth.T0 + 3, total=2.1, server=2.0, upload=0.02)
    path = _write(tmp_path / "late.jsonl", [*scene[:-4], straggler, *scene[-4:]])
    proc = _replay(path)
    assert proc.returncode == 0, proc.stderr
    assert "note: 1 samples out of time order were counted in the oldest open window" \
        in proc.stdout
    windows = _windows(path)
    assert sum(w["late_samples"] for w in windows) == 1
    assert [w["label"] for w in windows] == [w["label"] for w in _windows(clean)]


def test_a_recording_written_backwards_is_one_window_with_a_note(tmp_path: Path) -> None:
    """The reader does not sort files: the first sample sets the origin and everything
    older is late. The outcome is stated, not hidden."""
    path = _write(tmp_path / "backwards.jsonl", list(reversed(_busy_gpu_scene())))
    proc = _replay(path)
    assert proc.returncode == 0, proc.stderr
    assert "samples out of time order were counted in the oldest open window" in proc.stdout
    windows = _windows(path)
    assert len(windows) == 1
    assert windows[0]["late_samples"] == 4 * SECONDS - 4  # all but the last second


def test_a_recording_with_only_a_header_has_no_windows(tmp_path: Path) -> None:
    path = _write(tmp_path / "header-only.jsonl", [])
    proc = _replay(path)
    assert proc.returncode == 0, proc.stderr
    assert "0 samples, 0 windows" in proc.stdout
    assert "VERDICT  unknown" in proc.stdout
    assert "no window: no samples were labelled" in proc.stdout
    assert _replay(path, "--json").stdout == ""


@pytest.mark.parametrize(("content", "fragments"), [
    (b"", ["empty file"]),
    (b"hello, this is a text file\n", ["line 1 is not JSON", "not an ai-bottleneck recording"]),
    (b"\x00\x01\x02\xffbinary", ["line 1 is not JSON", "not an ai-bottleneck recording"]),
    (b'{"format": "something-else", "version": 1}\n', ["not an ai-bottleneck-record header"]),
    (b'{"t": 1700000000.0, "probe": "gpu", "values": {}}\n', ["header"]),
    (b'{"format": "ai-bottleneck-record", "version": 99}\n', ["version 99"]),
    (b'{"format": "ai-bottleneck-record", "version": 1, "window_seconds": -1}\n',
     ["header.window_seconds"]),
    (b'{"format": "ai-bottleneck-record", "version": 1, "origin": "noon"}\n',
     ["header.origin"]),
])
def test_a_file_that_is_not_a_recording_is_one_line(tmp_path: Path, content: bytes,
                                                    fragments: list[str]) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(content)
    for args in ((), ("--json",)):
        clitool.assert_one_line_error(_replay(path, *args), str(path), *fragments)


def test_a_missing_file_or_a_directory_is_one_line(tmp_path: Path) -> None:
    clitool.assert_one_line_error(_replay(tmp_path / "nope.jsonl"), "nope.jsonl", "no such file")
    clitool.assert_one_line_error(_replay(tmp_path), "directory")
    clitool.assert_one_line_error(_replay(tmp_path / "x.jsonl.gz"), "no such file")


def test_a_damaged_gzip_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(b"this is not gzip")
    clitool.assert_one_line_error(_replay(path), str(path))


def test_a_compressed_recording_replays_like_the_plain_one(clean: Path, tmp_path: Path) -> None:
    packed = tmp_path / "clean.jsonl.gz"
    packed.write_bytes(gzip.compress(clean.read_bytes()))
    assert _windows(packed) == _windows(clean)


def test_window_flag_overrides_the_recording(clean: Path) -> None:
    windows = _windows(clean, "--window", "20s")
    assert [w["end"] - w["start"] for w in windows] == [20.0, 20.0]
    assert {w["label"] for w in windows} == {"gpu_bound"}


def test_a_header_origin_places_the_windows(tmp_path: Path) -> None:
    """A live run fixes its window origin when sampling starts and records it; the
    replay cuts the same windows, not windows from the first sample in the file."""
    scene = _busy_gpu_scene(start=synth.T0 + 4)
    windows = _windows(_write(tmp_path / "origin.jsonl", scene, origin=synth.T0))
    assert [w["start"] for w in windows] == [synth.T0 + i * WINDOW for i in range(5)]
    assert sum(w["late_samples"] for w in windows) == 0
    without = _windows(_write(tmp_path / "first.jsonl", scene))
    assert without[0]["start"] == synth.T0 + 4


def test_a_value_that_is_not_a_number_is_absent_not_a_malformed_line(clean: Path,
                                                                     tmp_path: Path) -> None:
    lines = clean.read_text(encoding="utf-8").splitlines()
    odd = ('{"t": 1700000039.5, "probe": "host", "labels": {}, '
           '"values": {"cpu_utilization_ratio": NaN, "cpu_count": 16}}')
    path = tmp_path / "nan.jsonl"
    path.write_text("\n".join([*lines, odd]) + "\n", encoding="utf-8")
    proc = _replay(path)
    assert proc.returncode == 0, proc.stderr
    assert "malformed" not in proc.stdout + proc.stderr
    assert f"{4 * SECONDS + 1} samples" in proc.stdout.splitlines()[0]
    assert _labels(_windows(path)) == _labels(_windows(clean))


def test_a_line_that_is_not_utf8_is_one_malformed_line(clean: Path, tmp_path: Path) -> None:
    lines = clean.read_bytes().splitlines()
    bad = b'{"t": 1700000025.0, "probe": "ho\xffst", "values": {}}'
    path = tmp_path / "bad-byte.jsonl"
    path.write_bytes(b"\n".join([*lines[:100], bad, *lines[100:]]) + b"\n")
    proc = _replay(path)
    assert proc.returncode == 0, proc.stderr
    assert "note: 1 malformed lines skipped (first at line 101)" in proc.stdout
    assert f"{4 * SECONDS} samples" in proc.stdout.splitlines()[0]
