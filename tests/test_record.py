"""Record format v1: round trip, and the reader's behaviour on bad files."""

from __future__ import annotations

import gzip
import json
import logging
import math
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ai_bottleneck.probes.sample import Sample, SampleError
from ai_bottleneck.record import (
    FORMAT_NAME,
    RecordError,
    RecordReader,
    RecordWriter,
    default_loads,
    read_record,
)


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


# -- the fast path for ordinary lines, and the decoders -----------------------------

_GOOD_LINE = {"t": 1000.25, "probe": "gpu", "labels": {"gpu": "0", "uuid": "GPU-a"},
              "values": {"utilization_ratio": 0.5, "memory_used_bytes": 1e9}}


def _decoded(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as a JSON decoder gives it back: fresh dicts every call."""
    return typing.cast(dict[str, Any], json.loads(json.dumps(obj)))


def _line(**values: object) -> dict[str, Any]:
    return _decoded({**_GOOD_LINE, "values": {**_GOOD_LINE["values"], **values}})


@pytest.fixture(params=[True, False], ids=["adopt", "copy"])
def adopt(request: pytest.FixtureRequest) -> bool:
    """Both ways in: the reader's fast path (adopt) and the fully checked one."""
    return typing.cast(bool, request.param)


def test_ordinary_line_gives_the_sample_written(adopt: bool) -> None:
    obj = _line()
    s = Sample.from_json(obj, adopt=adopt)
    assert s == Sample(1000.25, "gpu", {"gpu": "0", "uuid": "GPU-a"},
                       {"utilization_ratio": 0.5, "memory_used_bytes": 1e9})
    assert s.ok and s.error is None
    # The fast path keeps the decoded dicts; the checked one builds its own.
    assert (s.values is obj["values"] and s.labels is obj["labels"]) is adopt


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, True, "0.5", None, [1.0],
                                 {"x": 1.0}, 10**400])
def test_bad_value_on_an_ordinary_line_is_dropped(bad: object, adopt: bool) -> None:
    s = Sample.from_json(_line(bad_ratio=bad), adopt=adopt)
    assert s.values == {"utilization_ratio": 0.5, "memory_used_bytes": 1e9}
    assert s.labels == {"gpu": "0", "uuid": "GPU-a"}


def test_integer_values_become_floats(adopt: bool) -> None:
    obj = _line(process_count=3, status=200)
    s = Sample.from_json(obj, adopt=adopt)
    assert s.values == {"utilization_ratio": 0.5, "memory_used_bytes": 1e9,
                        "process_count": 3.0, "status": 200.0}
    assert all(type(v) is float for v in s.values.values())
    assert (s.values is obj["values"]) is adopt  # converted on the fast path, not refused


def test_finite_values_whose_sum_overflows_are_kept(adopt: bool) -> None:
    s = Sample.from_json(_line(a_bytes=1.5e308, b_bytes=1.5e308), adopt=adopt)
    assert s.values["a_bytes"] == 1.5e308 and s.values["b_bytes"] == 1.5e308


@pytest.mark.parametrize("label", [7, 2.5, True, None])
def test_non_string_label_values_are_stringified(label: object, adopt: bool) -> None:
    obj = _decoded({**_GOOD_LINE, "labels": {"gpu": label}})
    assert Sample.from_json(obj, adopt=adopt).labels == {"gpu": str(label)}


@pytest.mark.parametrize("t", [math.nan, math.inf, 10**400, True, "1000", None])
def test_bad_time_is_a_sample_error(t: object, adopt: bool) -> None:
    with pytest.raises(SampleError, match="'t' must be a finite number"):
        Sample.from_json(_decoded({**_GOOD_LINE, "t": t}), adopt=adopt)


def test_integer_time_becomes_float(adopt: bool) -> None:
    s = Sample.from_json(_decoded({**_GOOD_LINE, "t": 1000}), adopt=adopt)
    assert s.t == 1000.0 and type(s.t) is float


def test_failed_sample_keeps_its_error_and_values(adopt: bool) -> None:
    s = Sample.from_json(_decoded({**_GOOD_LINE, "values": {"status": 503}, "error": 503}),
                         adopt=adopt)
    assert s.error == "503" and s.values == {"status": 503.0} and not s.ok


def test_without_adopt_the_sample_owns_its_dicts() -> None:
    obj = _line()
    s = Sample.from_json(obj)
    obj["labels"]["gpu"] = "9"
    obj["values"]["utilization_ratio"] = 0.0
    assert s.labels["gpu"] == "0" and s.values["utilization_ratio"] == 0.5


def test_without_adopt_keys_are_stringified() -> None:
    s = Sample.from_json({"t": 1.0, "probe": "x", "labels": {1: "a"}, "values": {2: 0.5}})
    assert s.labels == {"1": "a"} and s.values == {"2": 0.5}


def _strict_decoder() -> Callable[[bytes], Any]:
    """The reader's default decoder; the test is about it refusing what stdlib reads."""
    decoder = default_loads()
    if decoder is json.loads:
        pytest.skip("orjson not installed: the reader uses the standard library only")
    return decoder


@pytest.mark.parametrize("decoder", ["default", "stdlib"])
def test_decoders_read_the_same_samples(tmp_path: Path, decoder: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """Lines a strict decoder refuses (NaN, Infinity, lone surrogates) are read by the
    standard library; a bad byte or a broken line spoils that line only."""
    loads = _strict_decoder() if decoder == "default" else json.loads
    path = tmp_path / "mixed.jsonl"
    head = json.dumps({"format": FORMAT_NAME, "version": 1}).encode()
    lines = [
        head,
        b'{"t": 1.0, "probe": "host", "labels": {}, "values": {"cpu_utilization_ratio": NaN,'
        b' "cpu_count": 8}}',
        b'{"t": 2.0, "probe": "host", "labels": {}, "values": {"cpu_utilization_ratio": 0.5,'
        b' "x_ratio": Infinity, "y_ratio": 1e400}}',
        b'{"t": 3.0, "probe": "nic", "labels": {"nic": "\\ud800"}, "values": {}}',
        b'{"t": 4.0, "probe": "gpu", "labels": {"name": "\xff\xfe"}, "values": {}}',
        b'{"t": 5.0, "probe": "host", "values": {"big": ' + b"9" * 400 + b"}}",
        b"[" * 100_000 + b"]" * 100_000,
        b"",
        b'{"t": 6.0, "probe": "gpu", "labels": {"gpu": 0}, "values": {"power_watts": 70}}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING):
        reader = RecordReader(path, loads=loads)
        got = list(reader)
    assert [(s.t, s.probe) for s in got] == [(1.0, "host"), (2.0, "host"), (3.0, "nic"),
                                              (5.0, "host"), (6.0, "gpu")]
    assert got[0].values == {"cpu_count": 8.0}
    assert got[1].values == {"cpu_utilization_ratio": 0.5}
    assert got[2].labels == {"nic": "\ud800"}
    assert got[3].values == {}
    assert got[4].labels == {"gpu": "0"} and got[4].values == {"power_watts": 70.0}
    assert reader.stats.malformed == 2 and reader.stats.first_bad_lines == [5, 7]
    assert "line 5" in caplog.text and "line 7" in caplog.text
    assert reader.stats.samples == 5 and reader.stats.lines == 9


def test_gzip_recording_is_read_through_the_fast_decoder(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl.gz"
    with RecordWriter(path) as w:
        w.write_many(_samples())
    reader = RecordReader(path, loads=_strict_decoder())
    assert list(reader) == _samples()


def test_reader_falls_back_to_the_standard_library(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "orjson", None)  # as if not installed: import fails
    assert default_loads() is json.loads
    path = tmp_path / "r.jsonl"
    with RecordWriter(path) as w:
        w.write_many(_samples())
    assert list(RecordReader(path)) == _samples()
