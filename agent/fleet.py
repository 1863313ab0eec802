"""`ai-bottleneck fleet`: every host's current label, read from Prometheus.

The agent stays per host; Prometheus, which already scrapes the fleet, is
the engine that answers "which of my hosts are network-bound right now".
This module asks its HTTP API (``/api/v1/query``, instant queries only) for
the agents' series and joins them per host:

- the label: ``ai_bottleneck_window_label == 1``;
- its confidence and since when it holds
  (``ai_bottleneck_window_confidence``,
  ``ai_bottleneck_window_label_since_timestamp_seconds``);
- the top evidence line (``ai_bottleneck_window_top_evidence_info``);
- probes and targets down (``ai_bottleneck_probe_up == 0``,
  ``ai_bottleneck_target_up == 0``);
- agents Prometheus saw within the last hour that it cannot scrape now
  (``up == 0``): shown as ``unreachable``, first.

A host is one (job, instance) pair, named by its ``host`` label, else its
``node`` label (the Kubernetes ServiceMonitor adds it), else the instance.
Hosts are sorted by severity: unreachable, then vram_bound, network_bound,
cpu_bound, unknown, gpu_bound, balanced, idle; then by probes down, then by
confidence.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

#: Most severe first. gpu_bound is where a GPU host should be (its costly part is
#: busy), so it sorts after unknown; unreachable hosts say nothing at all.
SEVERITY = ("unreachable", "vram_bound", "network_bound", "cpu_bound", "unknown", "gpu_bound",
            "balanced", "idle")
QUERIES = {
    "label": "ai_bottleneck_window_label == 1",
    "confidence": "ai_bottleneck_window_confidence",
    "since": "ai_bottleneck_window_label_since_timestamp_seconds",
    "evidence": "ai_bottleneck_window_top_evidence_info",
    "probes_down": "ai_bottleneck_probe_up == 0",
    "targets_down": "ai_bottleneck_target_up == 0",
    "unreachable": "up == 0 and on (instance, job) "
                   "max_over_time(ai_bottleneck_build_info[1h])",
}
TIMEOUT_SECONDS = 10.0

HostKey = tuple[str, str]  # (job, instance)


class FleetError(Exception):
    """Prometheus cannot be asked or did not answer; the message is one line."""


@dataclass
class Host:
    host: str
    instance: str
    job: str
    label: str = "unknown"
    confidence: float | None = None
    since: float | None = None
    evidence: str = ""
    probes_down: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _display(url: str) -> str:
    """The URL without credentials, for messages."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return url
    return str(parsed.copy_with(username=None, password=None)) if parsed.userinfo else url


def check_url(url: str) -> str | None:
    """What is wrong with ``url`` as a Prometheus base URL, or None."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        return f"--prometheus {url!r}: {exc}"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return f"--prometheus {_display(url)!r}: expected http://HOST:PORT or https://..."
    return None


Query = Callable[[str], list[dict[str, Any]]]


def http_query(url: str, *, client: httpx.Client) -> Query:
    """One instant query against Prometheus' HTTP API at ``url``."""
    base = url.rstrip("/")
    shown = _display(base)

    def query(expr: str) -> list[dict[str, Any]]:
        try:
            response = client.get(f"{base}/api/v1/query", params={"query": expr})
        except httpx.HTTPError as exc:
            raise FleetError(f"cannot reach Prometheus at {shown}: "
                             f"{exc or type(exc).__name__}") from None
        try:
            body = response.json()
        except ValueError:
            raise FleetError(f"{shown} answered HTTP {response.status_code} without "
                             "Prometheus' JSON: is this a Prometheus server?") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", "") if isinstance(body, dict) else ""
            raise FleetError(f"Prometheus at {shown} refused the query {expr!r}: "
                             f"HTTP {response.status_code} {error}".rstrip())
        data = body.get("data") or {}
        if data.get("resultType") != "vector":
            raise FleetError(f"Prometheus at {shown}: expected a vector for {expr!r}")
        result = data.get("result") or []
        return [r for r in result if isinstance(r, dict)]
    return query


def _value(item: Mapping[str, Any]) -> float | None:
    try:
        v = float(item["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _key(metric: Mapping[str, str]) -> HostKey:
    return metric.get("job", ""), metric.get("instance", "")


def collect(query: Query) -> list[Host]:
    """Every host with its label, most severe first."""
    results = {name: query(expr) for name, expr in QUERIES.items()}
    hosts: dict[HostKey, Host] = {}

    def host(metric: Mapping[str, str]) -> Host:
        key = _key(metric)
        found = hosts.get(key)
        if found is None:
            name = metric.get("host") or metric.get("node") or metric.get("instance", "?")
            found = hosts[key] = Host(host=name, instance=key[1], job=key[0])
        return found

    for item in results["label"]:
        metric = item.get("metric", {})
        host(metric).label = metric.get("label", "unknown")
    for item in results["confidence"]:
        host(item.get("metric", {})).confidence = _value(item)
    for item in results["since"]:
        host(item.get("metric", {})).since = _value(item)
    for item in results["evidence"]:
        metric = item.get("metric", {})
        host(metric).evidence = metric.get("evidence", "")
    for item in results["probes_down"]:
        metric = item.get("metric", {})
        host(metric).probes_down.append(metric.get("probe", "?"))
    for item in results["targets_down"]:
        metric = item.get("metric", {})
        host(metric).probes_down.append(f"{metric.get('probe', '?')}:{metric.get('target', '?')}")
    for item in results["unreachable"]:
        h = host(item.get("metric", {}))
        h.label, h.confidence, h.evidence = "unreachable", None, "Prometheus cannot scrape it"
    for h in hosts.values():
        h.probes_down.sort()
    return sorted(hosts.values(), key=_severity)


def _severity(h: Host) -> tuple[int, int, float, str]:
    rank = SEVERITY.index(h.label) if h.label in SEVERITY else len(SEVERITY)
    return rank, -len(h.probes_down), -(h.confidence or 0.0), h.host


def _ago(since: float | None, now: float) -> str:
    if since is None:
        return "-"
    seconds = max(0.0, now - since)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def render_table(hosts: list[Host], now: float | None = None) -> str:
    """A plain text table, one host per line."""
    now = time.time() if now is None else now
    head = ("HOST", "LABEL", "CONF", "SINCE", "PROBES DOWN", "EVIDENCE")
    rows = [(_cut(h.host, 40), h.label,
             "-" if h.confidence is None else f"{h.confidence:.2f}",
             _ago(h.since, now), _cut(",".join(h.probes_down) or "-", 40),
             _cut(h.evidence or "-", 90)) for h in hosts]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    lines = []
    for r in [head, *rows]:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    return "\n".join(lines) + "\n"
