"""Bounded fuzzing of the edges: the config loader, the command line's value
parsers and the recording reader. Whatever hypothesis makes of them, the answer
is a value that passed every check or one clear error, never another
exception, a hang or a non-finite number. Bounded: a few hundred examples each,
a few seconds in all; no example database is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import click
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ai_bottleneck.budget import BudgetOptions
from ai_bottleneck.cli import DURATION, WINDOW
from ai_bottleneck.config import AgentOptions, ConfigError, load_config
from ai_bottleneck.probes.options import OptionError, parse_options
from ai_bottleneck.record import FORMAT_NAME, RecordError, RecordReader
from ai_bottleneck.thresholds import Thresholds

BOUNDED = settings(max_examples=300, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow])

_SECTIONS: dict[str, type[Any]] = {"agent": AgentOptions, "thresholds": Thresholds,
                                    "budget": BudgetOptions}
_KEYS = [(section, f.name) for section, cls in _SECTIONS.items()
         for f in dataclasses.fields(cls)]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # a TOML basic string is a JSON string


_NUMBERISH = st.sampled_from(["nan", "inf", "-inf", "nan%", "1e999", "0", "-0", "1e-320",
                              "0.000000001ms", "99999999999h", "30%", "150%", "5MB", "1gbit",
                              "2m", "10s", "", " ", "1e3", "0x10"])
_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-2**63, max_value=2**63 - 1),
    st.booleans(),
    _NUMBERISH,
    st.text(max_size=20),
    st.lists(st.floats(allow_nan=True), max_size=3),
)


def _numbers_finite(obj: Any) -> bool:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return all(_numbers_finite(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, list | tuple):
        return all(_numbers_finite(v) for v in obj)
    return True


def _load(text: str | bytes) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        if isinstance(text, str):
            path.write_text(text, encoding="utf-8")
        else:
            path.write_bytes(text)
        return load_config(path)


@BOUNDED
@given(st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), min_size=1, max_size=4))
def test_config_values_load_or_give_one_line(entries: list[tuple[tuple[str, str], Any]]) -> None:
    tables: dict[str, dict[str, Any]] = {}
    for (section, key), value in entries:
        tables.setdefault(section, {})[key] = value
    text = "".join(f"[{section}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in keys.items())
                   for section, keys in tables.items())
    try:
        config = _load(text)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert _numbers_finite(config.agent) and _numbers_finite(config.thresholds)
    assert config.budget is None or _numbers_finite(config.budget)
    assert 0 < config.agent.interval_seconds <= config.agent.window_seconds <= 86400


@BOUNDED
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_any_config_text_loads_or_gives_one_line(text: str | bytes) -> None:
    try:
        _load(text)
    except ConfigError as exc:
        assert "\n" not in str(exc)


@BOUNDED
@given(st.one_of(st.text(max_size=30), _NUMBERISH, st.floats(allow_nan=True)))
def test_cli_durations_parse_or_fail_cleanly(value: Any) -> None:
    for kind in (DURATION, WINDOW):
        try:
            seconds = kind.convert(value, None, None)
        except click.BadParameter as exc:
            assert "\n" not in exc.format_message()
            continue
        assert math.isfinite(seconds) and kind.shortest <= seconds <= kind.longest


@dataclasses.dataclass(frozen=True)
class _Every:
    wait_seconds: float = 1.0
    link_bits_per_second: float = 1.0
    size_bytes: int = 1
    share_ratio: float = 0.5
    count: int = 1


@BOUNDED
@given(st.dictionaries(st.sampled_from([f.name for f in dataclasses.fields(_Every)]),
                       _VALUES, max_size=5))
def test_option_values_parse_or_fail_cleanly(options: dict[str, Any]) -> None:
    try:
        parsed = parse_options(_Every, options)
    except OptionError as exc:
        assert "\n" not in str(exc)
        return
    assert _numbers_finite(parsed)


_LINES = st.one_of(
    st.binary(max_size=120),
    st.builds(lambda t, probe, v: json.dumps({"t": t, "probe": probe, "values": {"x_ratio": v}}
                                             ).encode(),
              st.one_of(st.floats(), st.integers(), st.text(max_size=5)),
              st.text(max_size=8), st.floats()),
    st.sampled_from([b'{"t": 1e400, "probe": "x"}', b'{"t": "\\ud800", "probe": "\\udcff"}',
                     b"[" * 5000, b'{"t": 1, "probe": "x", "labels": {"a": "\\ud800"}}']),
)


@BOUNDED
@given(st.lists(_LINES, max_size=30), st.booleans())
def test_recordings_read_or_give_one_line(lines: list[bytes], good_header: bool) -> None:
    header = json.dumps({"format": FORMAT_NAME, "version": 1}).encode() if good_header \
        else (lines[0] if lines else b"")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.jsonl"
        path.write_bytes(b"\n".join([header, *lines]) + b"\n")
        try:
            reader = RecordReader(path)
        except RecordError as exc:
            assert "\n" not in str(exc) and not good_header
            return
        samples = list(reader)
    assert all(math.isfinite(s.t) for s in samples)
    assert reader.stats.samples == len(samples)
