"""Record format v1: round trip, and the reader's behaviour on bad files."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from agent.record import FORMAT_NAME, RecordError, RecordReader, RecordWriter, read_record
from agent.samples import Sample


def _samples() -> list[Sample]:
    return [
        Sample(t=1000.0, probe="gpu", labels={"gpu": "0", "uuid": "GPU-a"},
               values={"utilization_ratio": 0.5, "memory_used_bytes": 1e9,
                       "memory_total_bytes": 8e10}),
        Sample(t=1000.5, probe="http", labels={"target": "api"},
               values={"total_seconds": 0.25, "status": 200.0}),
        Sample(t=1001.0, probe="gpu", labels={"gpu": "1", "uuid": "GPU-b"},
               error="GPU is lost"),
        Sample(t=1001.0, probe="host", values={"cpu_utilization_ratio": 0.125}),
    ]


@pytest.mark.parametrize("name", ["rec.jsonl", "rec.jsonl.gz"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with RecordWriter(path) as w:
        w.write_many(_samples())
    header, samples, stats = read_record(path)
    assert header["format"] == FORMAT_NAME and header["version"] == 1
    assert samples == _samples()
    assert stats.samples == 4 and stats.malformed == 0


def test_lines_are_flushed_as_written(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    w = RecordWriter(path)
    w.write(_samples()[0])
    w.flush()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["probe"] == "gpu"
    w.close()


def test_malformed_lines_are_counted_and_named(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps(_samples()[3].to_json())
    path.write_text("\n".join([
        json.dumps({"format": FORMAT_NAME, "version": 1}),
        good,
        "{not json",
        json.dumps({"t": "yesterday", "probe": "host"}),
        json.dumps([1, 2, 3]),
        "",
        json.dumps({"t": 5, "probe": "future_probe", "values": {"x_ratio": 0.5, "s": "text"}}),
        good,
    ]) + "\n")
    with caplog.at_level(logging.WARNING):
        _header, samples, stats = read_record(path)
    assert [s.probe for s in samples] == ["host", "future_probe", "host"]
    assert samples[1].values == {"x_ratio": 0.5}  # unknown probe kept, non-numeric value dropped
    assert stats.malformed == 3
    assert stats.first_bad_lines == [3, 4, 5]
    assert "line 3" in caplog.text and "line 4" in caplog.text


@pytest.mark.parametrize(("content", "message"), [
    ("", "empty file"),
    ("hello world\n", "line 1 is not JSON"),
    ('{"format": "something-else"}\n', "not an ai-bottleneck-record header"),
    ('{"format": "ai-bottleneck-record", "version": 99}\n', "newer than this reader"),
])
def test_not_a_recording_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(content)
    with pytest.raises(RecordError, match=message) as info:
        RecordReader(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="no such file"):
        RecordReader(tmp_path / "nope.jsonl")


def test_truncated_gzip_keeps_what_was_read(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl.gz"
    with RecordWriter(path) as w:
        w.write_many(_samples() * 200)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    reader = RecordReader(path)
    got = list(reader)
    assert 0 < len(got) < 800
    assert reader.stats.malformed == 1


def test_writer_reports_unwritable_path(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="cannot write"):
        RecordWriter(tmp_path / "no-such-dir" / "r.jsonl")


def test_gzip_file_is_really_gzip(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl.gz"
    with RecordWriter(path) as w:
        w.write(_samples()[0])
    with gzip.open(path, "rt") as fh:
        assert json.loads(fh.readline())["format"] == FORMAT_NAME
