"""The agent's live page (`GET /` on the daemon): the current label, the last
hour's label timeline and the HTML report's charts, refreshed in place.

The daemon hands every labelled window to ``LivePage.add``; a request renders
the windows of the last hour through ai_bottleneck.html_report, which is
imported on the first request only (an agent nobody looks at never loads it).
The endpoint serves it behind the same auth as /metrics.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from ai_bottleneck.pipeline import WindowResult

#: How much history the page shows.
HISTORY_SECONDS = 3600.0
#: How often an open page fetches its content again.
REFRESH_SECONDS = 10.0


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
            self._windows.append(result)
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
