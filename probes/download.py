"""Timed download probe: how fast a configured URL can be fetched from here.

One streamed GET per sample, never more than ``max_bytes`` of body and never
longer than ``max_seconds``, with ``Accept-Encoding: identity`` so that the
bytes counted are the bytes that crossed the link. The rate leaves out a
short warm-up (TCP slow start, the server finding the file): it counts the
bytes that arrived after the warm-up over the time they took.

Sample: probe ``download``, label ``url``; values bits_per_second, bytes (all
body bytes read), seconds (request start to last byte), and measured_bytes,
measured_seconds (what the rate was computed from). A transfer too short to
time (one read) has no bits_per_second. This is an active probe: it makes
traffic of its own, so the agent budgets it and runs it rarely (every 300 s
unless configured otherwise).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpcore
import httpx

from ai_bottleneck.probes.base import (
    Availability,
    Clock,
    Sample,
    clean_values,
    failed,
    option_info,
    parse_options,
)
from ai_bottleneck.probes.calltimer import CallTimer
from ai_bottleneck.probes.http import check_url, host_and_port
from ai_bottleneck.probes.httpfailure import describe_failure
from ai_bottleneck.probes.httptiming import TimingBackend, make_client, make_ssl_context
from ai_bottleneck.probes.redact import DEFAULT_SECRET_PARAMETERS, redact_url, scrub
from ai_bottleneck.probes.vocabulary import BYTES_VALUE, STATUS_VALUE, THROUGHPUT_VALUE

#: Query parameter added by ``cache_bust`` (a fresh random value every sample).
CACHE_BUST_PARAM = "nocache"
#: The warm-up also ends once this share of ``max_bytes`` has arrived, so that a
#: fast link that reaches the byte cap early is still measured on most bytes.
WARMUP_SHARE_OF_CAP = 0.1
_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Options:
    url: str | None = field(default=None, metadata=option_info(
        doc="http:// or https:// URL of a large file"))
    name: str = field(default="", metadata=option_info(
        doc="value of the `url` label (default: the URL, credentials and secret parameters "
            "redacted)"))
    interval_seconds: float = field(default=300.0, metadata=option_info(
        min=1, max=86400, doc="how often to download"))
    max_bytes: int = field(default=50_000_000, metadata=option_info(
        min=1, max=10**12, doc="byte cap: stop after this many body bytes"))
    max_seconds: float = field(default=10.0, metadata=option_info(
        min=0.1, max=600, doc="time cap for the whole download, connect included"))
    warmup_seconds: float = field(default=1.0, metadata=option_info(
        min=0, max=60, doc="leave this first part of the transfer out of the rate"))
    stall_seconds: float = field(default=3.0, metadata=option_info(
        min=0.1, max=600, doc="no body byte for this long is a stall: the download is a "
                              "failure, not a slow success"))
    cache_bust: bool = field(default=False, metadata=option_info(
        doc=f"add a random `{CACHE_BUST_PARAM}` query parameter so caches pass it through"))
    range_request: bool = field(default=True, metadata=option_info(
        doc="ask for the first max_bytes only (Range header), so a server that honours "
            "it sends no more than the cap"))
    headers: dict[str, str] = field(default_factory=dict, metadata=option_info(
        doc="extra request headers"))
    verify_tls: bool = field(default=True, metadata=option_info(doc="check server certificates"))
    ca_file: Path | None = field(default=None, metadata=option_info(
        doc="PEM file of CA certificates to trust instead of the bundled ones"))
    secret_parameters: tuple[str, ...] = field(default=DEFAULT_SECRET_PARAMETERS,
                                               metadata=option_info(
        doc="query parameters whose values are redacted in the label and errors (shell "
            "patterns, any case); user:password in the URL always is"))

    def __post_init__(self) -> None:
        if self.url is not None:
            check_url(self.url)


class DownloadProbe:
    """A capped, streamed download; one sample per call."""

    name = "download"
    active = True

    def __init__(self, options: Options, *, backend: TimingBackend | None = None,
                 clock: Clock = time.perf_counter, wall_clock: Clock = time.time):
        self.options = options
        self.interval_seconds: float | None = options.interval_seconds
        self.timeout_seconds = options.max_seconds + _GRACE_SECONDS
        self._clock = clock
        self._wall_clock = wall_clock
        self._backend = backend or TimingBackend(clock=clock)
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def check(self) -> Availability:
        if self.options.url is None:
            return Availability.no("no url configured (set url in the download probe's "
                                   "options, or pass --download)")
        if self.options.ca_file is not None and not self.options.ca_file.is_file():
            return Availability.no(f"ca_file {self.options.ca_file} not found")
        return Availability.yes(f"{self._label(self.options.url)}, at most "
                                f"{self.options.max_bytes} bytes "
                                f"in {self.options.max_seconds:g}s")

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def sample(self) -> Sequence[Sample]:
        url = self.options.url
        if url is None:
            return [failed(self.name, "no url configured", t=self._wall_clock())]
        return [self._download(url)]

    def _get_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                context = make_ssl_context(self.options.verify_tls, self.options.ca_file)
                self._client = make_client(self._backend, context, keep_alive=False)
            return self._client

    def _request(self, client: httpx.Client, url: str, timer: CallTimer) -> httpx.Request:
        opts = self.options
        headers = dict(opts.headers)
        # Set last: a compressed body would count fewer bytes than crossed the link.
        headers = {k: v for k, v in headers.items() if k.lower() != "accept-encoding"}
        headers["Accept-Encoding"] = "identity"
        if opts.range_request:
            headers["Range"] = f"bytes=0-{opts.max_bytes - 1}"
        target = httpx.URL(url)
        if opts.cache_bust:  # added to the URL's own query, which `params=` would replace
            target = target.copy_merge_params({CACHE_BUST_PARAM: secrets.token_hex(8)})
        return client.build_request("GET", target, headers=headers,
                                    timeout=opts.max_seconds,
                                    extensions={"trace": timer.trace})

    def _label(self, url: str) -> str:
        return self.options.name or redact_url(url, self.options.secret_parameters)

    def _download(self, url: str) -> Sample:
        opts = self.options
        shown = redact_url(url, opts.secret_parameters)
        labels = {"url": self._label(url)}
        where = host_and_port(url)
        timer = CallTimer(deadline=0.0, clock=self._clock)
        try:
            client = self._get_client()
            request = self._request(client, url, timer)
        except (OSError, ValueError, httpx.HTTPError) as exc:
            return failed(self.name, "cannot make the request: "
                          f"{scrub(str(exc), url, opts.secret_parameters)}", labels,
                          t=self._wall_clock())
        t = self._wall_clock()
        timer.start = self._clock()
        timer.deadline = timer.start + opts.max_seconds
        meter = _RateMeter(opts.max_bytes, opts.warmup_seconds,
                           opts.max_bytes * WARMUP_SHARE_OF_CAP)
        status = 0
        try:
            with self._backend.bind(timer):
                response = client.send(request, stream=True)
                try:
                    status = response.status_code
                    if status not in ((200, 206) if opts.range_request else (200,)):
                        return Sample(t=t, probe=self.name, labels=labels,
                                      values={"status": status},
                                      error=self._bad_status(response, shown))
                    self._read(response, meter, timer)
                finally:
                    response.close()
            problem = self._incomplete(response, meter)
            if problem is not None:
                return Sample(t=t, probe=self.name, labels=labels,
                              values=clean_values({"status": status, "bytes": meter.bytes}),
                              error=problem)
        except Exception as exc:  # every failure of the download is a failed sample
            error = describe_failure(exc, timer, where, opts.max_seconds)
            return Sample(t=t, probe=self.name, labels=labels,
                          values={"status": status} if status else {}, error=error)
        if meter.bytes == 0:
            return Sample(t=t, probe=self.name, labels=labels, values={"status": status},
                          error=f"empty response body from {shown}")
        measured_bytes, measured_seconds = meter.measured()
        rate = (measured_bytes * 8 / measured_seconds
                if measured_seconds and measured_bytes else None)
        return Sample(t=t, probe=self.name, labels=labels, values=clean_values({
            THROUGHPUT_VALUE: rate,
            BYTES_VALUE: meter.bytes,
            "seconds": (meter.last_time or timer.start) - timer.start,
            "measured_bytes": measured_bytes if rate is not None else None,
            "measured_seconds": measured_seconds if rate is not None else None,
            STATUS_VALUE: status,
        }))

    def _bad_status(self, response: httpx.Response, shown: str) -> str:
        status = response.status_code
        if 300 <= status < 400:  # downloads do not follow redirects: say where it points
            location = redact_url(response.headers.get("Location", "") or "(no Location)",
                                  self.options.secret_parameters)
            return f"redirected ({status}) from {shown} to {location}; set url to the target"
        return f"status {status} from {shown}"

    def _incomplete(self, response: httpx.Response, meter: _RateMeter) -> str | None:
        """A body that stalled, or ended before its announced length (and the cap)."""
        stall = self.options.stall_seconds
        if meter.longest_gap >= stall:
            return (f"stalled: no data for {meter.longest_gap:.1f}s after {meter.stalled_at} "
                    f"bytes (stall_seconds {stall:g})")
        announced = response.headers.get("Content-Length", "")
        if meter.ended and announced.isdigit() and meter.bytes < min(int(announced), meter.cap):
            return f"cut short: {meter.bytes} of {announced} bytes arrived"
        return None

    def _read(self, response: httpx.Response, meter: _RateMeter, timer: CallTimer) -> None:
        """Read the body into ``meter`` until it ends, the byte cap or the time cap."""
        try:
            for chunk in response.iter_raw():
                if meter.add(len(chunk), self._clock()):
                    return
            meter.ended = True  # the body ended by itself, not at a cap
        except httpcore.TimeoutException:
            # The time cap ends a download that is still going: that is a
            # result, not a failure (unless nothing came at all). The rate
            # runs to the cap, so a transfer that stalled counts as slow.
            now = self._clock()
            if now < timer.deadline - 0.005 or meter.bytes == 0:
                raise
            meter.note_gap(now)  # silent up to the cap: a stall, if long enough
            meter.stop(now)


class _RateMeter:
    """Counts body bytes up to a cap and times those after the warm-up."""

    def __init__(self, cap: int, warmup_seconds: float, warmup_bytes: float):
        self.cap = cap
        self.warmup_seconds = warmup_seconds
        self.warmup_bytes = warmup_bytes
        self.bytes = 0
        self.first_time: float | None = None
        self.first_bytes = 0
        self.last_time: float | None = None
        self.warm_time: float | None = None
        self.warm_bytes = 0
        self.longest_gap = 0.0
        self.stalled_at = 0
        self.ended = False

    def note_gap(self, now: float) -> None:
        """The longest wait for body bytes so far, and after how many it began."""
        if self.last_time is not None and now - self.last_time > self.longest_gap:
            self.longest_gap, self.stalled_at = now - self.last_time, self.bytes

    def add(self, nbytes: int, now: float) -> bool:
        """Count a chunk that arrived at ``now``; True once the cap is reached."""
        self.note_gap(now)
        nbytes = min(nbytes, self.cap - self.bytes)
        self.bytes += nbytes
        self.last_time = now
        if self.first_time is None:
            self.first_time, self.first_bytes = now, self.bytes
        elif self.warm_time is None and (now - self.first_time >= self.warmup_seconds
                                         or self.bytes >= self.warmup_bytes):
            self.warm_time, self.warm_bytes = now, self.bytes
        return self.bytes >= self.cap

    def stop(self, now: float) -> None:
        """The time cap was reached at ``now`` with no more bytes."""
        self.last_time = now

    def measured(self) -> tuple[int, float]:
        """(bytes, seconds) the rate is computed from: what arrived after the warm-up,
        or, for a transfer that ended within it, everything after the first read."""
        if self.last_time is None or self.first_time is None:
            return 0, 0.0
        if self.warm_time is not None and self.last_time > self.warm_time:
            return self.bytes - self.warm_bytes, self.last_time - self.warm_time
        return self.bytes - self.first_bytes, self.last_time - self.first_time


def create(options: Mapping[str, Any]) -> DownloadProbe:
    """Entry point ``ai_bottleneck.probes: download``."""
    return DownloadProbe(parse_options(Options, options))
