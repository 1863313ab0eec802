"""Small inline SVG charts for the HTML report and the live page: a line chart over
time, stacked bars per window, and a band of labels. Plain strings, no script,
no fonts or files fetched: the page draws the same opened from a disk offline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from ai_bottleneck.labels import Label
from ai_bottleneck.units import clock

WIDTH = 760
HEIGHT = 170
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 26, 24
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22")
#: One colour per label, the terminal's colours in the same spirit.
LABEL_FILL: dict[str, str] = {
    Label.GPU_BOUND: "#d62728", Label.VRAM_BOUND: "#9467bd", Label.NETWORK_BOUND: "#ff7f0e",
    Label.CPU_BOUND: "#17becf", Label.BALANCED: "#2ca02c", Label.IDLE: "#c7c7c7",
    Label.UNKNOWN: "#7f7f7f"}

Fmt = Callable[[float], str]


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float | None]]   # (unix seconds, value); None: a gap
    dashed: bool = False


class _Frame:
    """Maps time and value onto the plot area."""

    def __init__(self, t0: float, t1: float, y_max: float) -> None:
        self.t0, self.t1 = t0, t1 if t1 > t0 else t0 + 1.0
        self.y_max = y_max if y_max > 0 else 1.0
        self.w = WIDTH - LEFT - RIGHT
        self.h = HEIGHT - TOP - BOTTOM

    def x(self, t: float) -> float:
        return LEFT + (t - self.t0) / (self.t1 - self.t0) * self.w

    def y(self, v: float) -> float:
        return TOP + self.h - min(1.0, max(0.0, v / self.y_max)) * self.h


def _axes(f: _Frame, title: str, y_fmt: Fmt) -> list[str]:
    out = [f'<text x="{LEFT}" y="16" class="t">{escape(title)}</text>',
           f'<rect x="{LEFT}" y="{TOP}" width="{f.w}" height="{f.h}" class="plot"/>']
    for i in range(3):
        v = f.y_max * i / 2
        y = f.y(v)
        out.append(f'<line x1="{LEFT}" x2="{LEFT + f.w}" y1="{y:.1f}" y2="{y:.1f}" '
                   'class="grid"/>')
        out.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" class="yl">{escape(y_fmt(v))}</text>')
    for i in range(5):
        t = f.t0 + (f.t1 - f.t0) * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        out.append(f'<text x="{f.x(t):.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}" '
                   f'class="xl">{clock(t)}</text>')
    return out


def _legend(names: Sequence[str]) -> list[str]:
    out, x = [], WIDTH - RIGHT
    for i, name in reversed(list(enumerate(names))):
        x -= 22 + 7 * len(name)
        out.append(f'<rect x="{x}" y="8" width="10" height="10" '
                   f'fill="{PALETTE[i % len(PALETTE)]}"/>'
                   f'<text x="{x + 13}" y="17" class="lg">{escape(name)}</text>')
    return out


def _svg(body: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'role="img" aria-label="{escape(label)}">' + "".join(body) + "</svg>")


def line_chart(title: str, series: Sequence[Series], t0: float, t1: float, *,
               y_fmt: Fmt, y_max: float | None = None,
               marks: Sequence[tuple[float, str]] = ()) -> str:
    """Lines over time; ``marks`` are horizontal reference lines (a link's speed)."""
    values = [v for s in series for _, v in s.points if v is not None]
    top = y_max if y_max is not None else max([*values, *(m for m, _ in marks), 0.0]) * 1.1
    f = _Frame(t0, t1, top)
    body = _axes(f, title, y_fmt)
    for value, name in marks:
        y = f.y(value)
        body.append(f'<line x1="{LEFT}" x2="{LEFT + f.w}" y1="{y:.1f}" y2="{y:.1f}" '
                    f'class="mark"/><text x="{LEFT + 4}" y="{y - 3:.1f}" class="ml">'
                    f'{escape(name)}</text>')
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        runs: list[list[str]] = [[]]
        for t, v in s.points:
            if v is None:
                runs.append([])
            else:
                runs[-1].append(f"{f.x(t):.1f},{f.y(v):.1f}")
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                body.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{color}"/>')
            elif run:
                body.append(f'<polyline points="{" ".join(run)}" fill="none" '
                            f'stroke="{color}" stroke-width="1.5"{dash}/>')
    body += _legend([s.name for s in series])
    return _svg(body, title)


def stacked_bars(title: str, bars: Sequence[tuple[float, float, Sequence[float]]],
                 names: Sequence[str], t0: float, t1: float, *, y_fmt: Fmt) -> str:
    """One bar per window (start, end, a value per name) stacked in ``names`` order."""
    top = max((sum(v) for _, _, v in bars), default=0.0) * 1.1
    f = _Frame(t0, t1, top)
    body = _axes(f, title, y_fmt)
    for start, end, values in bars:
        x0, x1 = f.x(start), f.x(end)
        base = 0.0
        for i, v in enumerate(values):
            if v <= 0:
                continue
            y_top, y_base = f.y(base + v), f.y(base)
            body.append(f'<rect x="{x0:.1f}" y="{y_top:.1f}" width="{max(0.5, x1 - x0 - 0.5):.1f}"'
                        f' height="{max(0.0, y_base - y_top):.1f}" '
                        f'fill="{PALETTE[i % len(PALETTE)]}"/>')
            base += v
    body += _legend(names)
    return _svg(body, title)


def label_band(runs: Sequence[tuple[float, float, str]], t0: float, t1: float) -> str:
    """The label timeline: one coloured span per run of a label, with a legend."""
    f = _Frame(t0, t1, 1.0)
    height = 62
    body = []
    for start, end, label in runs:
        x0, x1 = f.x(start), f.x(end)
        body.append(f'<rect x="{x0:.1f}" y="8" width="{max(0.5, x1 - x0):.1f}" height="26" '
                    f'fill="{LABEL_FILL.get(label, "#7f7f7f")}"><title>{escape(label)} '
                    f'{clock(start)}-{clock(end)}</title></rect>')
    x = LEFT
    for label in dict.fromkeys(lbl for _, _, lbl in runs):
        body.append(f'<rect x="{x}" y="44" width="10" height="10" '
                    f'fill="{LABEL_FILL.get(label, "#7f7f7f")}"/>'
                    f'<text x="{x + 13}" y="53" class="lg">{escape(label)}</text>')
        x += 24 + 7 * len(label)
    body.append(f'<text x="{LEFT - 4}" y="25" class="yl">{clock(t0)}</text>')
    body.append(f'<text x="{WIDTH - RIGHT}" y="53" text-anchor="end" class="xl">'
                f'{clock(t1)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
            f'role="img" aria-label="label timeline">' + "".join(body) + "</svg>")
