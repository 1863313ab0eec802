"""Parameter types and option groups of the CLI's commands (ai_bottleneck.cli)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ai_bottleneck.probes.options import parse_duration

__all__ = ["DURATION", "WINDOW", "Duration", "report_options"]


class Duration(click.ParamType[float]):
    """A duration such as 20s, 500ms, 2m, 1h (a bare number is seconds)."""

    name = "duration"

    def __init__(self, shortest: float = 1e-3, longest: float = 366 * 86400.0) -> None:
        self.shortest, self.longest = shortest, longest

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if not seconds > 0:
            self.fail(f"{value!r} must be longer than zero", param, ctx)
        # Checked here, before any arithmetic: 1e-320 s windows overflowed it, and a
        # duration past a year overflows the waits.
        if not math.isfinite(seconds) or seconds > self.longest:
            self.fail(f"{value!r} is longer than {self.longest:g}s", param, ctx)
        if seconds < self.shortest:
            self.fail(f"{value!r} is shorter than {self.shortest:g}s", param, ctx)
        return seconds


DURATION = Duration()
F = TypeVar("F", bound=Callable[..., Any])


def report_options(f: F) -> F:
    """--color, --windows and --html, on every command that prints a report (the
    report modules themselves load only when one is printed: `run` never does)."""
    f = click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Also write a self-contained HTML report (timeline, charts) here.")(f)
    f = click.option("--windows", "all_windows", is_flag=True,
                     help="List every window after the report.")(f)
    f = click.option("--color", "color", type=click.Choice(["auto", "always", "never"]),
                     default="auto", show_default=True,
                     help="Colour the report (auto: on a terminal, unless NO_COLOR is set).")(f)
    return f
#: Windows as the config takes them ([agent] window_seconds): 1 s to a day.
WINDOW = Duration(shortest=1.0, longest=86400.0)
