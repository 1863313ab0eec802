"""The reader's typed decoder (ai_bottleneck.sample_decoder) changes speed, never which
samples are read: every line gives what the general path (decode to dicts, then
Sample.from_json) gives, the odd lines included."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ai_bottleneck.probes.sample import Sample
from ai_bottleneck.record import FORMAT_NAME, RecordReader, default_loads

HEADER = json.dumps({"format": FORMAT_NAME, "version": 1}).encode()

#: Lines the typed decoder refuses or reads differently, beside plain ones.
ODD_LINES = [
    b'{"t": 1, "probe": "gpu", "labels": {"gpu": "0"}, "values": {"process_count": 1}}',
    b'{"t": 2.0, "probe": "host", "values": {"ok_ratio": 0.5, "flag": true}}',
    b'{"t": 3.0, "probe": "", "values": {}}',
    b'{"t": 4.0, "probe": "http", "error": 503, "values": {"status": 503}}',
    b'{"t": 5.0, "probe": "http", "error": "timed out", "labels": {"target": "a"}}',
    b'{"t": 6.0, "probe": "gpu", "labels": {"gpu": 0}, "values": {"power_watts": 70}}',
    b'{"t": 7.0, "probe": "nic", "labels": null}',
    b'{"t": 8.0, "probe": "nic", "values": {"big": 1e308, "bigger": 1e308}}',
    b'{"t": 9.0, "probe": "host", "values": {"x": ' + b"9" * 400 + b"}}",
    b'{"t": 10.0, "probe": "host", "values": {"x": NaN, "y": 0.25}}',
    b'{"t": 11.0, "probe": "nic", "labels": {"nic": "\\ud800"}, "values": {}}',
    b'{"t": 12.0, "probe": "gpu", "labels": {"name": "\xff\xfe"}, "values": {}}',
    b'{"t": 13.0, "t": 14.0, "probe": "host", "extra": [1, 2], "values": {"a": -0.0}}',
    b"[1, 2]",
    b"",
    b"   ",
    b'{"probe": "host", "values": {}}',
    b'{"t": true, "probe": "host"}',
    b"[" * 10_000 + b"]" * 10_000,
]


def _read(path: Path, *, general: bool) -> tuple[list[Sample], tuple[int, ...]]:
    """The samples and read statistics of ``path``: by default (the typed decoder
    first), or through the general path alone (the default decoder given explicitly,
    as the reader used it before the typed decoder)."""
    reader = RecordReader(path, loads=default_loads() if general else None)
    samples = list(reader)
    st = reader.stats
    return samples, (st.lines, st.samples, st.malformed, *st.first_bad_lines)


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join([HEADER, *lines]) + b"\n")
    return path


def test_odd_lines_read_the_same_through_either_path(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "odd.jsonl", ODD_LINES)
    with caplog.at_level(logging.WARNING):
        general = _read(path, general=True)
        general_log = caplog.text
        caplog.clear()
        typed = _read(path, general=False)
    assert typed == general
    assert caplog.text == general_log
    assert len(typed[0]) == 10  # blank lines skipped, the malformed ones counted
    assert typed[1][2] == 7


_label = st.text(max_size=6)
_number = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(min_value=-(2**70), max_value=2**70), st.booleans(), st.none(),
                    st.text(max_size=3))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.fixed_dictionaries(
    {"t": st.one_of(st.floats(min_value=1e9, max_value=1e9 + 100), st.integers(10**9, 10**9 + 99)),
     "probe": st.sampled_from(["gpu", "host", ""]),
     "labels": st.dictionaries(_label, st.one_of(_label, st.integers(0, 9)), max_size=3),
     "values": st.dictionaries(_label, _number, max_size=4)},
    optional={"error": st.one_of(st.none(), st.text(max_size=5), st.integers(0, 600))}),
    max_size=12))
def test_generated_lines_read_the_same_through_either_path(tmp_path: Path,
                                                           lines: list[dict[str, object]]) -> None:
    # allow_nan: json.dumps writes NaN and Infinity, which only the lenient path reads.
    encoded = [json.dumps(obj).encode() for obj in lines]
    path = _write(tmp_path / "gen.jsonl", encoded)
    typed, general = _read(path, general=False), _read(path, general=True)
    assert typed == general
    for s in typed[0]:
        assert all(math.isfinite(v) and type(v) is float for v in s.values.values())
