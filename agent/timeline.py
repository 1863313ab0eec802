"""The label timeline of a run: one character per window while the run is short,
runs of one label ("idle 14:00:00-16:20:00") when it is long."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ai_bottleneck.labels import Label
from ai_bottleneck.pipeline import WindowResult
from ai_bottleneck.units import clock, duration

LABEL_CHARS: dict[str, str] = {
    Label.GPU_BOUND: "G", Label.VRAM_BOUND: "V", Label.NETWORK_BOUND: "N",
    Label.CPU_BOUND: "C", Label.BALANCED: "B", Label.IDLE: ".", Label.UNKNOWN: "?",
}


@dataclass(frozen=True)
class Run:
    """Consecutive windows with one label."""

    label: str
    start: float
    end: float
    windows: int

    @property
    def seconds(self) -> float:
        return self.end - self.start


def runs(results: Sequence[WindowResult]) -> list[Run]:
    out: list[Run] = []
    for r in results:
        if out and out[-1].label == r.label and abs(out[-1].end - r.start) < 1e-6:
            last = out[-1]
            out[-1] = Run(last.label, last.start, r.end, last.windows + 1)
        else:
            out.append(Run(r.label, r.start, r.end, 1))
    return out


def strip(results: Sequence[WindowResult], width: int) -> tuple[str, int]:
    """One character per window, or per ``k`` windows (the most frequent label
    among them) when there are more windows than ``width``; returns the strip and k."""
    labels = [r.label for r in results]
    k = max(1, -(-len(labels) // max(1, width)))
    chars = []
    for i in range(0, len(labels), k):
        label = Counter(labels[i:i + k]).most_common(1)[0][0]
        chars.append(LABEL_CHARS.get(label, "?"))
    return "".join(chars), k


def run_text(run: Run, with_date: bool = False) -> str:
    return (f"{clock(run.start, with_date=with_date)}-{clock(run.end)}  {run.label}  "
            f"({duration(run.seconds)}, {run.windows} window{'s' if run.windows != 1 else ''})")


def summarise(all_runs: Sequence[Run], limit: int) -> tuple[list[Run], int]:
    """Every run when there are at most ``limit``; else the ``limit`` longest, in time
    order, and how many were left out."""
    if len(all_runs) <= limit:
        return list(all_runs), 0
    longest = sorted(range(len(all_runs)), key=lambda i: -all_runs[i].seconds)[:limit]
    return [all_runs[i] for i in sorted(longest)], len(all_runs) - limit
