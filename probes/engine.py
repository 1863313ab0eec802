"""Model-server probe: the engine's own metrics endpoint, read as the engine sees itself.

Scrapes each target's Prometheus endpoint (vLLM, SGLang, TGI, Triton or the
llama.cpp server with ``--metrics``), detects the engine from its metric names
unless the config names it, and maps its series onto one vocabulary (probe
``engine``, labels ``engine`` and ``target``; docs/probes.md lists the values):
gauges as read, counters as read (windows take their growth), histograms as the
mean and p95 of what was observed since the previous scrape, from the bucket
deltas. A series the engine does not export gives no value, never a zero; an
endpoint that does not answer, or answers with no known engine's metrics, is a
failed sample with a one-line error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ai_bottleneck.probes.base import (
    Availability,
    Clock,
    Sample,
    clean_values,
    failed,
    option_info,
    parse_options,
)
from ai_bottleneck.probes.engine_map import ENGINES, SPECS, Engine, EngineSpec, detect
from ai_bottleneck.probes.promtext import Exposition, Histogram, parse
from ai_bottleneck.probes.vocabulary import ENGINE_KV_CAPACITY, ENGINE_KV_USAGE, ENGINE_LABEL

if TYPE_CHECKING:  # httpx is imported only where a target is configured: the
    import httpx  # agent without engine targets does not carry it (footprint)

#: Largest metrics page read; a vLLM page is tens of kilobytes, so this is only a guard.
MAX_BODY_BYTES = 8 * 2**20
_P95 = 0.95


def public_url(url: str) -> str:
    """The URL without credentials, query or fragment: what may appear in a label."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "(invalid URL)"
    return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))


@dataclass(frozen=True)
class Target:
    """One metrics endpoint of a model server."""

    url: str = field(metadata=option_info(doc="the server's metrics URL (http://host:8000/metrics)"))
    engine: Literal["auto", "vllm", "sglang", "tgi", "triton", "llamacpp"] = field(
        default="auto", metadata=option_info(doc="which engine serves it (default: detected)"))
    name: str = field(default="", metadata=option_info(
        doc="value of the `target` label (default: the URL without credentials or query)"))
    headers: dict[str, str] = field(default_factory=dict, metadata=option_info(
        doc="extra request headers (a bearer token)"))
    timeout_seconds: float = field(default=5.0, metadata=option_info(
        min=0.01, max=120, doc="limit for one scrape"))

    def __post_init__(self) -> None:
        import httpx

        try:
            parsed = httpx.URL(self.url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"url {public_url(self.url)!r} is not a valid URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("url must be an http:// or https:// URL with a host, got "
                             f"{public_url(self.url)!r}")

    @property
    def label(self) -> str:
        return self.name or public_url(self.url)


@dataclass(frozen=True)
class Options:
    targets: list[Target] = field(default_factory=list, metadata=option_info(
        doc="metrics URLs, or tables with url, engine, name, headers, timeout_seconds"))
    interval_seconds: float = field(default=5.0, metadata=option_info(
        min=0.1, max=86400, doc="how often to scrape"))
    verify_tls: bool = field(default=True, metadata=option_info(doc="check server certificates"))

    def __post_init__(self) -> None:
        labels = [t.label for t in self.targets]
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise ValueError(f"targets: two targets named {duplicates[0]!r}; give each a "
                             "distinct name")


@dataclass
class _Previous:
    """What the last scrape of one target read: the baselines for deltas."""

    engine: Engine
    histograms: dict[str, Histogram] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)


class EngineProbe:
    """One sample per target per scrape."""

    name = "engine"
    active = False

    def __init__(self, options: Options, *, transport: httpx.BaseTransport | None = None,
                 wall_clock: Clock = time.time):
        self.options = options
        self.targets = options.targets
        self.interval_seconds: float | None = options.interval_seconds
        # A llama.cpp target may take a second GET (/slots, for its KV cache use).
        self.timeout_seconds = sum(
            t.timeout_seconds * (2 if t.engine in ("auto", "llamacpp") else 1)
            for t in self.targets) + 1.0
        self._wall_clock = wall_clock
        self._transport = transport
        self._client: httpx.Client | None = None
        self._previous: dict[str, _Previous] = {}
        self._lock = threading.Lock()

    def check(self) -> Availability:
        if not self.targets:
            return Availability.no("no targets configured (set targets in the engine probe's "
                                   "options, or pass --engine)")
        n = len(self.targets)
        return Availability.yes(f"{n} metrics endpoint{'s' if n != 1 else ''}")

    def sample(self) -> Sequence[Sample]:
        with self._lock:
            return [self._sample_target(t) for t in self.targets]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _http(self) -> httpx.Client:
        if self._client is None:
            import httpx

            self._client = httpx.Client(transport=self._transport, trust_env=False,
                                        follow_redirects=False, verify=self.options.verify_tls)
        return self._client

    def _sample_target(self, target: Target) -> Sample:
        t = self._wall_clock()
        labels = {"target": target.label}
        if target.engine != "auto":
            labels[ENGINE_LABEL] = target.engine
        import httpx

        try:
            text = self._fetch(target)
        except (httpx.HTTPError, ValueError) as exc:
            error = _describe(exc).replace(target.url, target.label)
            return failed(self.name, f"{target.label}: {error}", labels, t=t)
        page = parse(text)
        engine: Engine | None = target.engine if target.engine != "auto" else detect(
            set(page.names()))
        if engine is None:
            return failed(self.name, f"{target.label}: no metric of a known engine "
                          f"({', '.join(ENGINES)}) among {len(page.samples)} series; is this "
                          "the server's metrics URL, with metrics enabled?", labels, t=t)
        labels[ENGINE_LABEL] = engine
        previous = self._previous.get(target.label)
        if previous is not None and previous.engine != engine:
            previous = None  # another server now answers at this URL: no deltas across
        now = _Previous(engine)
        values = read_values(SPECS[engine], page, previous, now)
        if engine == "llamacpp" and values.get(ENGINE_KV_USAGE) is None:
            values.update(self._llamacpp_kv(target))
        self._previous[target.label] = now
        return Sample(t=t, probe=self.name, labels=labels, values=clean_values(values))

    def _llamacpp_kv(self, target: Target) -> dict[str, float | None]:
        """KV use from the server's /slots, where its /metrics has no gauge for it
        (probes/engine_slots.py says how it maps)."""
        from ai_bottleneck.probes.engine_slots import read_kv, slots_url  # imports httpx

        url = slots_url(target.url)
        if url is None:
            return {}
        usage, capacity = read_kv(self._http(), url, target.headers, target.timeout_seconds)
        return {ENGINE_KV_USAGE: usage, ENGINE_KV_CAPACITY: capacity}

    def _fetch(self, target: Target) -> str:
        with self._http().stream("GET", target.url, headers=target.headers,
                                 timeout=target.timeout_seconds) as response:
            if response.status_code != 200:
                raise ValueError(f"status {response.status_code} from the metrics URL")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise ValueError(f"metrics page larger than {MAX_BODY_BYTES} bytes")
            return body.decode("utf-8", errors="replace")


def read_values(spec: EngineSpec, page: Exposition, previous: _Previous | None,
                now: _Previous) -> dict[str, float | None]:
    """The probe's values from one scrape; ``now`` receives the baselines for the next."""
    values: dict[str, float | None] = {}
    for value, names in spec.summed.items():
        values[value] = _first(page.sum, names)
    for value, names in spec.maximum.items():
        values[value] = _first(page.max, names)
    for value, names in spec.counters.items():
        values[value] = _first(page.sum, names)
    for value, names in spec.histogram_sums.items():
        found = _first(page.histogram, names)
        values[value] = found.sum if found is not None else None
    for base, names in spec.histograms.items():
        hist = _first(page.histogram, names)
        if hist is None:
            continue
        now.histograms[base] = hist
        delta = hist.since(previous.histograms.get(base) if previous else None)
        if delta is not None:
            values[base.mean_name] = delta.mean
            values[base.p95_name] = delta.quantile(_P95)
    for base, ratio in spec.ratios.items():
        num = _total(page, ratio.numerator)
        den = _total(page, ratio.denominator)
        if num is None or den is None:
            continue
        now.counters[base + ":num"], now.counters[base + ":den"] = num, den
        if previous is None or (base + ":num") not in previous.counters:
            continue
        grown_num = num - previous.counters[base + ":num"]
        grown_den = den - previous.counters[base + ":den"]
        if grown_num < 0 or grown_den < 0:  # restarted: the totals are all new
            grown_num, grown_den = num, den
        if grown_den > 0:
            values[base.mean_name] = ratio.scale * grown_num / grown_den
    if spec.engine == "vllm":
        values[ENGINE_KV_CAPACITY] = _vllm_capacity(page)
    return values


def _first(read: Any, names: Sequence[str]) -> Any:
    """The first of ``names`` (newest first) the page has."""
    for name in names:
        found = read(name)
        if found is not None:
            return found
    return None


def _total(page: Exposition, names: Sequence[str]) -> float | None:
    found = [v for n in names if (v := page.sum(n)) is not None]
    return sum(found) if found else None


def _vllm_capacity(page: Exposition) -> float | None:
    """KV cache size in tokens from vllm:cache_config_info's labels (blocks x block size)."""
    total = 0.0
    for labels, _ in page.samples.get("vllm:cache_config_info", ()):
        try:
            total += float(labels["num_gpu_blocks"]) * float(labels["block_size"])
        except (KeyError, ValueError):
            continue
    return total or None


def _describe(exc: Exception) -> str:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc})"
    return str(exc) or type(exc).__name__


def create(options: Mapping[str, Any]) -> EngineProbe:
    """Entry point ``ai_bottleneck.probes: engine``. A target may be a bare URL (the
    config's short form and --engine) or a table."""
    targets = options.get("targets")
    if isinstance(targets, list):
        targets = [{"url": t} if isinstance(t, str) else t for t in targets]
        options = {**options, "targets": targets}
    return EngineProbe(parse_options(Options, options))
