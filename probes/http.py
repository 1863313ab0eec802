"""HTTP latency probe: timed calls to configured URLs, split into phases.

Each call is one sample of probe ``http`` with label ``target`` and values
total_seconds, dns_seconds, connect_seconds, tls_seconds, upload_seconds,
server_seconds, download_seconds, status, request_bytes, response_bytes and
concurrency (phase definitions: probes/httptiming.py and docs/probes.md).

A timeout, a refused connection, a DNS failure, a TLS error or an unexpected
status is a failed sample with a one-line ``error``; nothing raises out of
``sample()``. With ``concurrency`` N, each target gets N calls at once per
sample (to reproduce "10 users upload at once"). Calls go only to the
configured URLs: proxies and other settings from the environment are ignored
and redirects are not followed.
"""

from __future__ import annotations

import concurrent.futures
import mimetypes
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from ai_bottleneck.probes.base import (
    IN_FLIGHT_LABELS,
    Availability,
    Clock,
    Sample,
    clean_values,
    failed,
    option_info,
    parse_options,
)
from ai_bottleneck.probes.calltimer import CallTimer
from ai_bottleneck.probes.httpfailure import describe_failure
from ai_bottleneck.probes.httptiming import TimingBackend, make_client, make_ssl_context
from ai_bottleneck.probes.redact import DEFAULT_SECRET_PARAMETERS, redact_url, scrub
from ai_bottleneck.probes.vocabulary import (
    IN_FLIGHT_CALLS,
    IN_FLIGHT_NETWORK_SECONDS,
    IN_FLIGHT_SECONDS,
    IN_FLIGHT_SERVER_SECONDS,
    REQUEST_BYTES,
    RESPONSE_BYTES,
    STATUS_VALUE,
)

Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: Extra seconds the probe allows beyond its targets' timeouts before the agent
#: may give up on a sample (thread start-up, closing connections).
_GRACE_SECONDS = 2.0


def check_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an absolute http(s) URL with a host (the
    message shows the URL redacted: it goes to the terminal and the log)."""
    shown = redact_url(url)
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"url {shown!r} is not a valid URL: {scrub(str(exc), url)}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"url must be an http:// or https:// URL with a host, got {shown!r}")


def host_and_port(url: str) -> str:
    """'host:port' of a URL for messages ('[::1]:80' for IPv6)."""
    parsed = httpx.URL(url)
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{host}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"


@dataclass(frozen=True)
class Target:
    """One URL to call."""

    url: str = field(metadata=option_info(doc="http:// or https:// URL to call"))
    name: str = field(default="", metadata=option_info(
        doc="value of the `target` label (default: the URL, credentials and secret "
            "parameters redacted)"))
    method: Method = field(default="GET", metadata=option_info(doc="HTTP method"))
    body_bytes: int | None = field(default=None, metadata=option_info(
        min=0, max=2**31, doc="send a request body of this size (e.g. \"5MB\")"))
    body_file: Path | None = field(default=None, metadata=option_info(
        doc="send this file as the request body (e.g. an image to upload)"))
    headers: dict[str, str] = field(default_factory=dict, metadata=option_info(
        doc="extra request headers"))
    expect_status: int | list[int] | None = field(default=None, metadata=option_info(
        doc="status code(s) that count as success (default: any below 400)"))
    timeout_seconds: float = field(default=10.0, metadata=option_info(
        min=0.01, max=600, doc="limit for the whole call, from DNS to the last byte"))
    redirect_is_up: bool = field(default=True, metadata=option_info(
        doc="whether a 3xx answer counts as success; calls never follow redirects, and "
            "with false a redirect is a failure naming where it points"))

    def __post_init__(self) -> None:
        check_url(self.url)
        if self.body_bytes is not None and self.body_file is not None:
            raise ValueError("body_bytes and body_file: give one of them, not both")
        statuses = self.expected_statuses()
        if statuses is not None and not all(100 <= s <= 599 for s in statuses):
            raise ValueError(f"expect_status: status codes are 100..599, got {statuses}")

    @property
    def label(self) -> str:
        return self.label_for(DEFAULT_SECRET_PARAMETERS)

    def label_for(self, secret_parameters: Sequence[str]) -> str:
        return self.name or redact_url(self.url, secret_parameters)

    def expected_statuses(self) -> tuple[int, ...] | None:
        if self.expect_status is None:
            return None
        if isinstance(self.expect_status, int):
            return (self.expect_status,)
        return tuple(self.expect_status)


@dataclass(frozen=True)
class Options:
    targets: list[Target] = field(default_factory=list, metadata=option_info(
        doc="URLs to call (tables with url, method, body_bytes or body_file, headers, "
            "expect_status, timeout_seconds, name)"))
    concurrency: int = field(default=1, metadata=option_info(
        min=1, max=256, doc="parallel calls per target per sample"))
    keep_alive: bool = field(default=False, metadata=option_info(
        doc="reuse connections between calls (default: a fresh connection per call, "
            "as curl measures)"))
    interval_seconds: float = field(default=30.0, metadata=option_info(
        min=0.1, max=86400, doc="how often to sample"))
    verify_tls: bool = field(default=True, metadata=option_info(doc="check server certificates"))
    ca_file: Path | None = field(default=None, metadata=option_info(
        doc="PEM file of CA certificates to trust instead of the bundled ones"))
    secret_parameters: tuple[str, ...] = field(default=DEFAULT_SECRET_PARAMETERS,
                                               metadata=option_info(
        doc="query parameters whose values are redacted in labels and errors (shell "
            "patterns, any case); user:password in a URL always is"))

    def __post_init__(self) -> None:
        labels = [t.label_for(self.secret_parameters) for t in self.targets]
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise ValueError(f"targets: two targets named {duplicates[0]!r}; give each a "
                             "distinct name")


class HttpProbe:
    """Timed calls to each target; one sample per call."""

    name = "http"
    active = False

    def __init__(self, options: Options, *, backend: TimingBackend | None = None,
                 clock: Clock = time.perf_counter, wall_clock: Clock = time.time):
        self.options = options
        self.interval_seconds: float | None = options.interval_seconds
        self.timeout_seconds = (sum(t.timeout_seconds for t in options.targets)
                                + _GRACE_SECONDS)
        self._clock = clock
        self._wall_clock = wall_clock
        self._backend = backend or TimingBackend(clock=clock)
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        #: Calls running now: id -> (target label, timer), for in_flight().
        self._running: dict[int, tuple[str, CallTimer]] = {}
        self._random_bodies: dict[int, bytes] = {}

    def check(self) -> Availability:
        if not self.options.targets:
            return Availability.no("no targets configured (set targets in the http probe's "
                                   "options, or pass --url)")
        if self.options.ca_file is not None and not self.options.ca_file.is_file():
            return Availability.no(f"ca_file {self.options.ca_file} not found")
        for target in self.options.targets:
            problem = _body_file_problem(target)
            if problem:
                return Availability.no(
                    f"target {target.label_for(self.options.secret_parameters)}: {problem}")
        mode = "keep-alive" if self.options.keep_alive else "a fresh connection per call"
        n = len(self.options.targets)
        return Availability.yes(f"{n} target{'s' if n != 1 else ''}, "
                                f"{self.options.concurrency} at once, {mode}")

    def sample(self) -> Sequence[Sample]:
        samples: list[Sample] = []
        for target in self.options.targets:
            samples.extend(self._sample_target(target))
        return samples

    def in_flight(self) -> Sequence[Sample]:
        """Calls still running, one sample per target (its longest call): elapsed
        time so far and how much of it was the network's and the server's, each a
        lower bound. Labelled ``call: in_flight``; they count as no finished call."""
        now = self._clock()
        t = self._wall_clock()
        with self._lock:
            running = list(self._running.values())
        longest: dict[str, tuple[tuple[float, float, float], int]] = {}
        for label, timer in running:
            progress = timer.progress(now)
            if progress is None:
                continue
            best = longest.get(label)
            count = (best[1] if best else 0) + 1
            if best is None or progress[0] > best[0][0]:
                longest[label] = (progress, count)
            else:
                longest[label] = (best[0], count)
        return [Sample(t=t, probe=self.name, labels={"target": label, **IN_FLIGHT_LABELS},
                       values={IN_FLIGHT_SECONDS: elapsed, IN_FLIGHT_NETWORK_SECONDS: network,
                               IN_FLIGHT_SERVER_SECONDS: server, IN_FLIGHT_CALLS: float(count)})
                for label, ((elapsed, network, server), count) in longest.items()]

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- internals ---------------------------------------------------------------

    def _get_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                context = make_ssl_context(self.options.verify_tls, self.options.ca_file)
                self._client = make_client(self._backend, context,
                                           keep_alive=self.options.keep_alive,
                                           max_idle=self.options.concurrency)
            return self._client

    def _sample_target(self, target: Target) -> list[Sample]:
        labels = {"target": target.label_for(self.options.secret_parameters)}
        try:
            body, content_type = self._load_body(target)
            client = self._get_client()
        except (OSError, ValueError) as exc:
            return [failed(self.name, str(exc), labels, t=self._wall_clock())]
        headers = dict(target.headers)
        if content_type and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = content_type
        n = self.options.concurrency
        if n == 1:
            return [self._call(client, target, body, headers, None)]
        start_together = threading.Barrier(n)
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=n,
                                                     thread_name_prefix="http-probe")
        try:
            futures = [pool.submit(self._call, client, target, body, headers, start_together)
                       for _ in range(n)]
            done, _ = concurrent.futures.wait(futures,
                                              timeout=target.timeout_seconds + _GRACE_SECONDS)
        finally:
            # Never wait here for a call that is still running: every call is held
            # to its deadline by its socket timeouts, so a straggler ends on its own.
            pool.shutdown(wait=False, cancel_futures=True)
        results = []
        for future in futures:
            if future in done:
                results.append(future.result())
            else:
                results.append(failed(self.name, f"call did not finish within "
                                      f"{target.timeout_seconds:g}s", labels,
                                      t=self._wall_clock()))
        return results

    def _call(self, client: httpx.Client, target: Target, body: bytes | None,
              headers: Mapping[str, str], start_together: threading.Barrier | None) -> Sample:
        secrets = self.options.secret_parameters
        labels = {"target": target.label_for(secrets)}
        timer = CallTimer(deadline=0.0, clock=self._clock)
        where = host_and_port(target.url)
        try:
            if start_together is not None:
                start_together.wait(timeout=target.timeout_seconds)
            request = client.build_request(
                target.method, target.url, content=body, headers=headers,
                timeout=target.timeout_seconds, extensions={"trace": timer.trace})
        except (threading.BrokenBarrierError, httpx.HTTPError, ValueError) as exc:
            reason = scrub(str(exc), target.url, secrets)
            return failed(self.name, f"cannot make the call: {reason}", labels,
                          t=self._wall_clock())
        t = self._wall_clock()
        timer.start = self._clock()
        timer.deadline = timer.start + target.timeout_seconds
        status = 0
        with self._lock:
            self._running[id(timer)] = (target.label, timer)
        location = ""
        try:
            with self._backend.bind(timer):
                response = client.send(request, stream=True)
                try:
                    status = response.status_code
                    location = response.headers.get("Location", "")
                    for _ in response.iter_raw():
                        pass
                    if timer.body_done is None:
                        timer.body_done = self._clock()
                finally:
                    response.close()
        except Exception as exc:  # every failure of the call is a failed sample
            error = describe_failure(exc, timer, where, target.timeout_seconds)
            return Sample(t=t, probe=self.name, labels=labels,
                          values={"status": status} if status else {}, error=error)
        finally:
            with self._lock:
                self._running.pop(id(timer), None)
        expected = target.expected_statuses()
        if 300 <= status < 400 and not target.redirect_is_up and (
                expected is None or status not in expected):
            # Calls are not followed to where they point: a redirect is reported as one.
            return Sample(t=t, probe=self.name, labels=labels, values={"status": status},
                          error=f"redirected ({status}) from {redact_url(target.url, secrets)} "
                                f"to {redact_url(location or '(no Location)', secrets)}")
        if status not in expected if expected is not None else status >= 400:
            want = " or ".join(map(str, expected)) if expected is not None else "below 400"
            return Sample(t=t, probe=self.name, labels=labels, values={"status": status},
                          error=f"status {status} from {redact_url(target.url, secrets)}, "
                                f"expected {want}")
        values: dict[str, float | None] = dict(timer.phases())
        values.update({STATUS_VALUE: status, REQUEST_BYTES: timer.request_bytes,
                       RESPONSE_BYTES: timer.response_bytes,
                       "concurrency": self.options.concurrency})
        return Sample(t=t, probe=self.name, labels=labels, values=clean_values(values))

    def _load_body(self, target: Target) -> tuple[bytes | None, str | None]:
        """The request body and its content type. A file is read at every sample, so a
        replaced image is picked up; a size gives random bytes, which no link on the way
        can compress."""
        if target.body_file is not None:
            problem = _body_file_problem(target)
            if problem:
                raise ValueError(problem)
            data = target.body_file.read_bytes()
            kind, _ = mimetypes.guess_type(target.body_file.name)
            return data, kind or "application/octet-stream"
        if target.body_bytes is not None:
            with self._lock:
                body = self._random_bodies.get(target.body_bytes)
                if body is None:
                    body = os.urandom(target.body_bytes)
                    self._random_bodies[target.body_bytes] = body
            return body, "application/octet-stream"
        return None, None


def _body_file_problem(target: Target) -> str:
    path = target.body_file
    if path is None:
        return ""
    if not path.is_file():
        return f"body_file {path} not found"
    if not os.access(path, os.R_OK):
        return f"body_file {path} is not readable"
    return ""


def create(options: Mapping[str, Any]) -> HttpProbe:
    """Entry point ``ai_bottleneck.probes: http``."""
    return HttpProbe(parse_options(Options, options))
