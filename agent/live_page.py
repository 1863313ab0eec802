"""The agent's live page (`GET /` on the daemon): the current label, the last
hour's label timeline and the HTML report's charts, refreshed in place.

The daemon hands every labelled window to ``LivePage.add``; a request renders
the windows of the last hour through ai_bottleneck.html_report, which is
imported on the first request only (an agent nobody looks at never loads it).
The endpoint serves it behind the same auth as /metrics.

An hour is 360 windows of 10 s held in the agent's memory, so the page keeps a
compact copy of each (``compact``): the window summary cut to the parts the page
reads, and every part equal to the previous window's (the probes' states, the
warnings, a GPU's readings that did not change) shared with it rather than held
twice. The page renders the same from the copies as from the windows
(tests/test_live_page.py checks it on the lab corpus).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from typing import Any, TypeVar

from ai_bottleneck.gpu_faults import HEALTH_KEY
from ai_bottleneck.gpu_workloads import SUMMARY_KEY
from ai_bottleneck.pipeline import WindowResult

#: How much history the page shows.
HISTORY_SECONDS = 3600.0
#: How often an open page fetches its content again.
REFRESH_SECONDS = 10.0
#: The parts of a window's summary the page reads (the key numbers' GPU workloads and
#: GPU health); the rest of the summary is /metrics' and the JSON output's.
PAGE_SUMMARY_KEYS = (SUMMARY_KEY, HEALTH_KEY)

_T = TypeVar("_T")


def _shared(new: _T, old: _T | None) -> _T:
    """``new`` with each field equal to ``old``'s taken from ``old`` (one object held
    where two equal ones were); a tuple's items (GPUs, NICs, ...) are matched by place."""
    if old is None or new is old:
        return new
    changes: dict[str, Any] = {}
    for f in fields(new):  # type: ignore[arg-type]
        a, b = getattr(new, f.name), getattr(old, f.name)
        if a is b:
            continue
        if a == b:
            changes[f.name] = b
        elif isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
            items = tuple(y if x == y else x for x, y in zip(a, b, strict=True))
            if any(x is y for x, y in zip(items, b, strict=True)):
                changes[f.name] = items
    return replace(new, **changes) if changes else new  # type: ignore[type-var]


def compact(result: WindowResult, previous: WindowResult | None) -> WindowResult:
    """The page's copy of a window: the summary cut to PAGE_SUMMARY_KEYS, and every
    part equal to ``previous``'s (the page's copy of the window before) shared with it."""
    summary = {k: result.summary[k] for k in PAGE_SUMMARY_KEYS if k in result.summary}
    readings = result.readings
    if readings is not None:
        readings = _shared(readings, previous.readings if previous is not None else None)
    copy = replace(result, summary=summary, readings=readings)
    return _shared(copy, previous)


class LivePage:
    def __init__(self, *, history_seconds: float = HISTORY_SECONDS,
                 refresh_seconds: float = REFRESH_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.history_seconds = history_seconds
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._windows: deque[WindowResult] = deque()
        self._unavailable: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, result: WindowResult) -> None:
        with self._lock:
            previous = self._windows[-1] if self._windows else None
            self._windows.append(compact(result, previous))
            self._trim(result.end)

    def set_unavailable(self, unavailable: Mapping[str, str]) -> None:
        with self._lock:
            self._unavailable = dict(unavailable)

    def _trim(self, now: float) -> None:
        while self._windows and self._windows[0].end <= now - self.history_seconds:
            self._windows.popleft()

    def render(self, query: str = "") -> bytes:
        """The whole page, or only its content for ``part=main`` (the refresh)."""
        from ai_bottleneck.html_report import render_html, report_main
        from ai_bottleneck.verdict import overall_verdict

        with self._lock:
            self._trim(self._clock())
            windows = list(self._windows)
            unavailable = dict(self._unavailable)
        verdict = overall_verdict(windows)
        host = socket.gethostname()
        title = (f"ai-bottleneck on {host}: the last {len(windows)} windows "
                 f"(up to an hour), refreshed every {self.refresh_seconds:g} s")
        current = windows[-1] if windows else None
        if "part=main" in query.split("&"):
            text = report_main(windows, verdict, title=title, not_measured=unavailable,
                               current=current)
        else:
            text = render_html(windows, verdict, title=title, not_measured=unavailable,
                               refresh_seconds=self.refresh_seconds, current=current)
        return text.encode("utf-8")
