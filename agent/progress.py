"""The live progress line of `diagnose`: elapsed/total, the latest window's leading
numbers and its provisional label, redrawn in place on one terminal line.

Only on a terminal (stderr): a pipe or a file gets nothing but the report.
"""

from __future__ import annotations

import os
import sys
from typing import IO

from ai_bottleneck.path_use import busier, window_uses
from ai_bottleneck.pipeline import WindowResult
from ai_bottleneck.termstyle import terminal_width
from ai_bottleneck.units import bits, duration, pct, secs


def leading_numbers(result: WindowResult) -> list[str]:
    """The window's GPU busy, CPU, link use and p95 request time, from its readings."""
    r = result.readings
    if r is None:
        return []
    out = []
    busy = [g.busy for g in r.gpus if g.busy is not None]
    if busy:
        out.append(f"GPU {pct(max(busy))}")
    if r.host is not None and r.host.cpu is not None:
        out.append(f"CPU {pct(r.host.cpu)}")
    nics = [n for n in r.nics if not n.loopback]
    # Against the capacity the classifier judged the link by (ai_bottleneck.path_use).
    peaks = [u.ratio for n in nics if (u := busier(window_uses(n, result.saturations)))]
    if peaks:
        out.append(f"link {pct(max(peaks))}")
    elif nics:
        out.append(f"net {bits(max(n.traffic_bits_per_second for n in nics))}")
    p95 = [h.total.p95 for h in r.http if h.total is not None]
    if p95:
        out.append(f"p95 {secs(max(p95))}")
    return out


def progress_text(elapsed: float, total: float, last: WindowResult | None, width: int) -> str:
    """One line, at most ``width - 1`` columns (the last column would wrap on some
    terminals); the parts that do not fit are dropped from the right."""
    head = f"sampling {duration(elapsed)}/{duration(total)}"
    parts = [head]
    if last is None:
        parts.append("first window pending")
    else:
        parts.append(f"now {last.label} ({last.confidence:.2f})")
        parts += leading_numbers(last)
    line = ""
    for p in parts:
        candidate = f"{line}  {p}" if line else p
        if len(candidate) > width - 1:
            break
        line = candidate
    return line[:width - 1]


class ProgressLine:
    """Redraws one line on ``stream`` (stderr) while sampling; silent off a terminal."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() and os.environ.get("TERM") != "dumb"
        self._drawn = False

    def __call__(self, elapsed: float, total: float, last: WindowResult | None) -> None:
        if not self.enabled:
            return
        text = progress_text(elapsed, total, last, terminal_width())
        # Carriage return, the text, then erase to the end of the line: a shorter
        # line leaves nothing of the longer one behind.
        self.stream.write(f"\r{text}\x1b[K")
        self.stream.flush()
        self._drawn = True

    def done(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
