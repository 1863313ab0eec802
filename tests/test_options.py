"""Typed options: every bad value is one line naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from ai_bottleneck.probes.options import (
    OptionError,
    describe_options,
    option_info,
    parse_bytes,
    parse_duration,
    parse_options,
    parse_rate,
)


@dataclass(frozen=True)
class Target:
    url: str
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class Opts:
    interval_seconds: float = field(default=1.0, metadata=option_info(min=0.01, doc="how often"))
    count: int = field(default=3, metadata=option_info(min=1, max=10))
    mode: Literal["cold", "warm"] = "cold"
    rate_bits_per_second: float | None = None
    body_bytes: int = 0
    path: Path | None = None
    targets: list[Target] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    enabled: bool = True


def test_defaults_and_conversions() -> None:
    o = parse_options(Opts, {
        "interval_seconds": "500ms", "rate_bits_per_second": "5mbit", "body_bytes": "5MB",
        "path": "/tmp/x", "targets": [{"url": "http://127.0.0.1:1/"}],
        "headers": {"a": "b"}, "mode": "warm",
    })
    assert o.interval_seconds == 0.5
    assert o.rate_bits_per_second == 5e6
    assert o.body_bytes == 5_000_000
    assert o.path == Path("/tmp/x")
    assert o.targets == [Target("http://127.0.0.1:1/")]
    assert o.mode == "warm" and o.count == 3
    assert parse_options(Opts, None) == Opts()


@pytest.mark.parametrize(("options", "key", "problem"), [
    ({"colour": 1}, "colour", "unknown key"),
    ({"count": 0}, "count", "must be >= 1"),
    ({"count": 11}, "count", "must be <= 10"),
    ({"count": 2.5}, "count", "expected an integer"),
    ({"count": True}, "count", "expected an integer"),
    ({"enabled": "yes"}, "enabled", "expected true or false"),
    ({"mode": "hot"}, "mode", "must be one of"),
    ({"interval_seconds": "soon"}, "interval_seconds", "not a duration"),
    ({"targets": [{"url": "x", "timeout": 3}]}, "targets[0].timeout", "unknown key"),
    ({"targets": [{}]}, "targets[0].url", "required key is missing"),
    ({"targets": "http://x"}, "targets", "expected a list"),
    ({"headers": {"a": 1}}, "headers.a", "expected a string"),
])
def test_errors_name_the_key(options: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(OptionError) as info:
        parse_options(Opts, options, prefix="probes.x")
    assert info.value.key == f"probes.x.{key}"
    assert problem in str(info.value)
    assert "\n" not in str(info.value)


def test_unit_parsers() -> None:
    assert parse_duration("2m") == 120 and parse_duration("1h") == 3600
    assert parse_duration("250ms") == 0.25 and parse_duration("7") == 7
    assert parse_rate("1gbit") == 1e9 and parse_rate("100kbit") == 1e5
    assert parse_rate("5 Mbit/s") == 5e6
    assert parse_bytes("2MiB") == 2 * 2**20 and parse_bytes("512k") == 512e3
    for bad, fn in (("fast", parse_rate), ("big", parse_bytes), ("1 day", parse_duration)):
        with pytest.raises(ValueError):
            fn(bad)


def test_describe_options_lists_docs() -> None:
    rows = {r[0]: r for r in describe_options(Opts)}
    assert rows["interval_seconds"][3] == "how often"
    assert rows["targets"][2] == []
