"""The report side of the command line: colour and width, --since/--until,
--windows, --html and --fail-on, shared by `diagnose` and `replay`.

Imported only by the commands that print a report, never by `run`.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import click

from ai_bottleneck.labels import Label
from ai_bottleneck.pipeline import WindowResult
from ai_bottleneck.report import ReportOptions, render
from ai_bottleneck.termstyle import terminal_width, use_color
from ai_bottleneck.verdict import Verdict

LABELS = tuple(label.value for label in Label)
#: Exit status of `diagnose --fail-on` when the verdict is one of the labels given.
FAIL_ON_EXIT = 3

def parse_fail_on(text: str | None) -> frozenset[str]:
    if not text:
        return frozenset()
    labels = {t.strip() for t in text.split(",") if t.strip()}
    bad = sorted(labels - set(LABELS))
    if bad:
        raise click.BadParameter(f"unknown label {', '.join(bad)} (labels: "
                                 f"{', '.join(LABELS)})", param_hint="--fail-on")
    return frozenset(labels)


def parse_when(text: str, day_of: float | None, flag: str) -> float:
    """--since/--until: unix seconds, an ISO date and time, or a clock time (HH:MM or
    HH:MM:SS, local) on the day the recording starts."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        pass
    for fmt in ("%H:%M:%S", "%H:%M"):
        try:
            t = dt.datetime.strptime(text, fmt).time()
        except ValueError:
            continue
        day = (dt.datetime.fromtimestamp(day_of) if day_of is not None
               else dt.datetime.now()).date()
        return dt.datetime.combine(day, t).timestamp()
    raise click.BadParameter(f"{text!r} is not a time (examples: 14:05, 14:05:30, "
                             "2026-12-04T14:05, 1796392800)", param_hint=flag)


def print_report(results: Sequence[WindowResult], verdict: Verdict, *, title: str,
                 not_measured: Mapping[str, str], notes: Sequence[str], color: str,
                 all_windows: bool) -> None:
    options = ReportOptions(width=terminal_width(), color=use_color(color, sys.stdout),
                            all_windows=all_windows)
    click.echo(render(results, verdict, title=title, not_measured=not_measured, notes=notes,
                      options=options), nl=False, color=options.color)


def check_html_path(path: Path | None) -> None:
    """Before sampling: a folder that is not there or not writable is a usage error
    now, not a lost report after a long run."""
    if path is None:
        return
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise click.BadParameter(f"{path}: the folder {folder} does not exist",
                                 param_hint="--html")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise click.BadParameter(f"{path}: not writable", param_hint="--html")


def write_html(path: Path, results: Sequence[WindowResult], verdict: Verdict, *, title: str,
               not_measured: Mapping[str, str], notes: Sequence[str]) -> tuple[str, bool]:
    """Write the HTML report; returns a note for the terminal report and whether it
    was written (the terminal report still comes when it was not)."""
    from ai_bottleneck.html_report import render_html

    text = render_html(results, verdict, title=title, not_measured=not_measured, notes=notes)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        return f"could not write the HTML report to {path}: {exc.strerror or exc}", False
    return f"HTML report written to {path}", True
