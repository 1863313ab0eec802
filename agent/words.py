"""Numbers in plain words for evidence and advice: 18%, 4.2 s, 94 Mbit/s, 80 GB."""

from __future__ import annotations


def pct(ratio: float | None, digits: int = 0) -> str:
    if ratio is None:
        return "?"
    return f"{ratio * 100:.{digits}f}%"


def secs(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.3g} s"
    return f"{seconds:.0f} s"


def bits(bps: float) -> str:
    for scale, unit in ((1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:.3g} bit/s"


def size(nbytes: float | None) -> str:
    n = nbytes or 0.0
    for scale, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"
