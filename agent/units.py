"""Every number a person reads, in one convention (docs/units.md).

- Bytes in binary (IEC) units: B, KiB, MiB, GiB, TiB. GPU memory is sized in
  powers of two (an "80 GB" A100 holds 80 GiB; nvidia-smi prints 81920 MiB), so
  the binary unit gives the number on the box and the number nvidia-smi shows.
- Bits per second in decimal (SI) units: bit/s, kbit/s, Mbit/s, Gbit/s, as link
  speeds and iperf3 give them.
- Ratios as percentages, clamped to 0-100% unless a caller asks for more (a
  ratio past 1 is a measuring artefact, not news); absurd inputs (NaN,
  infinities, 1e308, negatives) never print a 300-digit number or a "-4%".
- Seconds as ms below one second, seconds below a minute, and compact Go-style
  durations (1m30s, 2h05m) above.

The classifier's evidence and advice (through ai_bottleneck.words), the
terminal report, the HTML report and the live page all format through here,
so one GPU never reads "80 GB" in one place and "74.5 GiB" in another.
"""

from __future__ import annotations

import math
import time

#: Shown where a value is missing or not a number at all.
MISSING = "-"

_BYTE_UNITS = ((2**60, "EiB"), (2**50, "PiB"), (2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"),
               (2**10, "KiB"))
_BIT_UNITS = ((1e12, "Tbit/s"), (1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s"))


def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(x)


def _three_digits(x: float) -> str:
    """At most three significant digits, never scientific notation: 80, 74.5, 1.25;
    past the largest unit, ">9999" rather than a 300-digit number."""
    if x >= 10_000:
        return ">9999"
    if x >= 100:
        return f"{x:.0f}"
    text = f"{x:.1f}" if x >= 10 else f"{x:.2f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def pct(ratio: float | None, digits: int = 0, *, clamp: bool = True) -> str:
    """0.183 -> "18%". Clamped to 0..100% (``clamp=False`` keeps shares past 100%
    but still caps the text at ">999%"); NaN and None read "?"."""
    if not _finite(ratio):
        if ratio is not None and isinstance(ratio, float) and math.isinf(ratio) and ratio > 0:
            return "100%" if clamp else ">999%"
        return "?"
    assert ratio is not None
    value = ratio * 100
    if clamp:
        value = min(100.0, max(0.0, value))
    elif value > 999:
        return ">999%"
    elif value < 0:
        value = 0.0
    text = f"{value:.{digits}f}"
    # "-0%" from a tiny negative rounding error is not a reading.
    return f"{text.lstrip('-') if float(text) == 0 else text}%"


def secs(seconds: float | None) -> str:
    """0.042 -> "42 ms", 4.25 -> "4.25 s", 95 -> "1m35s"."""
    if not _finite(seconds):
        return MISSING
    assert seconds is not None
    s = max(0.0, seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 10:
        return f"{s:.3g} s"
    if s < 60:
        return f"{s:.0f} s"
    return duration(s)


def duration(seconds: float | None) -> str:
    """A span in Go/Prometheus form, to the second: 90 -> "1m30s", 7500 -> "2h05m";
    spans of a day or more drop the seconds: "1d04h"."""
    if not _finite(seconds):
        return MISSING
    assert seconds is not None
    s = round(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs_ = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs_:02d}s"


def bits(bps: float | None) -> str:
    """Bits per second in decimal units: 5e6 -> "5 Mbit/s"."""
    if not _finite(bps):
        return MISSING
    assert bps is not None
    v = max(0.0, bps)
    for scale, unit in _BIT_UNITS:
        if v >= scale:
            return f"{_three_digits(v / scale)} {unit}"
    return f"{_three_digits(v)} bit/s"


def size(nbytes: float | None) -> str:
    """Bytes in binary units: 85899345920 -> "80 GiB", 5e6 -> "4.77 MiB"."""
    if not _finite(nbytes):
        return MISSING
    assert nbytes is not None
    n = max(0.0, nbytes)
    for scale, unit in _BYTE_UNITS:
        if n >= scale:
            return f"{_three_digits(n / scale)} {unit}"
    return f"{n:.0f} B"


def watts(w: float | None) -> str:
    return f"{max(0.0, w):.0f} W" if _finite(w) and w is not None else MISSING


def celsius(c: float | None) -> str:
    return f"{c:.0f} C" if _finite(c) and c is not None else MISSING


def count(n: float | None) -> str:
    """A whole count: 1234 -> "1234"; missing -> "-"."""
    return f"{n:.0f}" if _finite(n) and n is not None else MISSING


def clock(t: float | None, *, with_date: bool = False) -> str:
    """Unix seconds as local wall-clock time: "14:02:10" (or with its date)."""
    if not _finite(t):
        return MISSING
    assert t is not None
    return time.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S", time.localtime(t))


__all__ = ["MISSING", "bits", "celsius", "clock", "count", "duration", "pct", "secs", "size",
           "watts"]

