"""One unit convention for every number a person reads (docs/units.md)."""

from __future__ import annotations

import math

import pytest

from ai_bottleneck import units, words
from ai_bottleneck.probes.options import parse_duration


@pytest.mark.parametrize(("ratio", "text"), [
    (0.183, "18%"), (1.0, "100%"), (0.0, "0%"), (1e308, "100%"), (math.inf, "100%"),
    (-0.04, "0%"), (-1e308, "0%"), (-1e-9, "0%"), (math.nan, "?"), (None, "?"),
    (1.7, "100%"),
])
def test_percentages_are_clamped_and_sane(ratio: float | None, text: str) -> None:
    assert units.pct(ratio) == text


def test_unclamped_shares_stop_at_three_digits() -> None:
    assert units.pct(2.5, clamp=False) == "250%"
    assert units.pct(1e308, clamp=False) == ">999%"
    assert units.pct(-3.0, clamp=False) == "0%"


@pytest.mark.parametrize(("n", "text"), [
    (80 * 2**30, "80 GiB"), (80e9, "74.5 GiB"), (5e6, "4.77 MiB"), (512, "512 B"),
    (1536, "1.5 KiB"), (3 * 2**40, "3 TiB"), (1000 * 2**30, "1000 GiB"),
    (1e308, ">9999 EiB"), (-5, "0 B"), (math.nan, "-"), (None, "-"),
])
def test_bytes_are_binary_units(n: float | None, text: str) -> None:
    assert units.size(n) == text
    assert len(units.size(n)) < 40


def test_one_gpu_reads_the_same_in_the_evidence_and_the_report() -> None:
    assert words.size is units.size and words.pct is units.pct
    assert words.bits is units.bits and words.secs is units.secs


@pytest.mark.parametrize(("bps", "text"), [
    (5e6, "5 Mbit/s"), (1e9, "1 Gbit/s"), (94.3e6, "94.3 Mbit/s"), (999, "999 bit/s"),
    (-1.0, "0 bit/s"), (math.inf, "-"), (1e308, ">9999 Tbit/s"),
])
def test_bit_rates_are_decimal_units(bps: float, text: str) -> None:
    assert units.bits(bps) == text


@pytest.mark.parametrize(("s", "text"), [
    (0.042, "42 ms"), (4.25, "4.25 s"), (42.0, "42 s"), (90.0, "1m30s"), (7500.0, "2h05m"),
    (100_000.0, "1d03h"), (-3.0, "0 ms"), (math.nan, "-"),
])
def test_seconds(s: float, text: str) -> None:
    assert units.secs(s) == text


@pytest.mark.parametrize(("text", "seconds"), [
    ("1m30s", 90.0), ("500ms", 0.5), ("10s", 10.0), ("2h", 7200.0), ("1.5h", 5400.0),
    ("1h2m3s", 3723.0), ("7", 7.0), ("1d", 86400.0), ("10 s", 10.0),
])
def test_durations_in_go_form(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "fast", "1x", "-5", "-5s", "1m30", "inf", "s"])
def test_bad_durations_say_so(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)
