"""The Prometheus exposition: a collector over AgentState and its text rendering.

``Collector.collect()`` builds fresh metric families from the latest
snapshot at each scrape, so a label value exists only while its source
reports it. The metric table (names, help, labels, how sample values map)
is ai_bottleneck.exporter_metrics.

The HTTP server for it is ai_bottleneck.endpoint.MetricsServer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from ai_bottleneck import exporter_metrics as m
from ai_bottleneck.labels import LABEL_NAMES
from ai_bottleneck.probes.base import Clock, SkipKind
from ai_bottleneck.probes.sample import one_line
from ai_bottleneck.probes.vocabulary import is_process_sample, mig_instance
from ai_bottleneck.process_metrics import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    ProcessMetrics,
    wants_openmetrics,
)
from ai_bottleneck.state import ERROR_REASONS, AgentState, Series, Snapshot

if TYPE_CHECKING:  # the scrape path never imports prometheus_client (process_metrics.py)
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector as CollectorBase
    from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)

SKIP_KINDS = tuple(k.value for k in SkipKind)
#: The error text in ai_bottleneck_probe_error_info: enough to tell one error from
#: another; the log line (WARNING, once per change) has up to 300 characters.
ERROR_LABEL_LIMIT = 160

Plan = tuple[tuple[bool, str], ...]
# Points by metric name (a str caches its hash; the Metric dataclass hashes all its
# fields on every lookup), then label values -> (sample time, value).
_Points = dict[str, dict[tuple[str, ...], tuple[float, float]]]
# One object per distinct label plan, so the routes of one series that share a plan
# (all of a GPU's values) share its label values too (see _series_points).
_PLANS: dict[Plan, Plan] = {}


def _compile(route: m.Route) -> tuple[m.Metric, float, Plan]:
    plan = route.label_plan()
    return route.metric, route.scale, _PLANS.setdefault(plan, plan)


_ROUTES = {probe: {value: _compile(r) for value, r in table.items()}
           for probe, table in m.ROUTES.items()}
_PROCESS_ROUTES = {value: _compile(r) for value, r in m.GPU_PROCESS_ROUTES.items()}
_MIG_ROUTES = {value: _compile(r) for value, r in m.GPU_MIG_ROUTES.items()}
_UP_ROUTES = {probe: _compile(r) for probe, r in m.UP_ROUTES.items()}
_GPU_INFO = _compile(m.Route(m.GPU_INFO))
_CLOCKS_EVENT_PLAN = m.Route(m.GPU_CLOCKS_EVENT).label_plan()
# The clocks-event labels are the GPU's, with "reason" among them: split around it.
_REASON_AT = [label for _const, label in _CLOCKS_EVENT_PLAN].index("reason")
_CLOCKS_EVENT_HEAD = _CLOCKS_EVENT_PLAN[:_REASON_AT]
_CLOCKS_EVENT_TAIL = _CLOCKS_EVENT_PLAN[_REASON_AT + 1:]


def _labels(plan: Plan, labels: Any) -> tuple[str, ...]:
    return tuple(text if const else labels.get(text, "") for const, text in plan)


def _put(points: _Points, metric: m.Metric, labelvalues: tuple[str, ...], t: float,
         value: float) -> None:
    # Two series can land on one label set (a GPU's failed sample and its last good
    # one, for a moment): the newer sample wins, so the output has no duplicates.
    bucket = points.get(metric.name)
    if bucket is None:
        bucket = points[metric.name] = {}
    old = bucket.get(labelvalues)
    if old is None or old[0] <= t:
        bucket[labelvalues] = (t, value)


def _series_points(series: Iterator[Series]) -> _Points:
    points: _Points = {}
    for s in series:
        labels, t = s.labels, s.t
        by_plan: dict[int, tuple[str, ...]] = {}  # id(plan) -> this series' label values
        event_labels: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        if s.probe == "gpu" and is_process_sample(labels):
            routes = _PROCESS_ROUTES
        elif s.probe == "gpu" and mig_instance(labels) is not None:
            routes = _MIG_ROUTES
        else:
            routes = _ROUTES.get(s.probe, {})
            up = _UP_ROUTES.get(s.probe)
            if up is not None:
                _put(points, up[0], _labels(up[2], labels), t, 0.0 if s.error else 1.0)
            if s.probe == "gpu" and s.error is None:
                _put(points, _GPU_INFO[0], _labels(_GPU_INFO[2], labels), t, 1.0)
        for name, value in s.values.items():
            route = routes.get(name)
            if route is not None:
                metric, scale, plan = route
                lv = by_plan.get(id(plan))
                if lv is None:
                    lv = by_plan[id(plan)] = _labels(plan, labels)
                _put(points, metric, lv, t, value * scale)
            elif (s.probe == "gpu" and name.startswith(m.CLOCKS_EVENT_PREFIX)
                  and name.endswith(m.CLOCKS_EVENT_SUFFIX) and routes is _ROUTES["gpu"]):
                reason = name[len(m.CLOCKS_EVENT_PREFIX):-len(m.CLOCKS_EVENT_SUFFIX)]
                if event_labels is None:
                    event_labels = (_labels(_CLOCKS_EVENT_HEAD, labels),
                                    _labels(_CLOCKS_EVENT_TAIL, labels))
                head, tail = event_labels
                _put(points, m.GPU_CLOCKS_EVENT, (*head, reason, *tail), t, value)
    return points


def _agent_points(points: _Points, snap: Snapshot, now: float) -> None:
    _put(points, m.BUILD_INFO, tuple(snap.build_info.get(k, "") for k in m.BUILD_INFO.labels),
         0.0, 1.0)
    _put(points, m.START_TIME, (), 0.0, snap.start_time)
    _put(points, m.SAMPLING_INTERVAL, (), 0.0, snap.interval_seconds)
    _put(points, m.WINDOW_LENGTH, (), 0.0, snap.window_seconds)
    if snap.gpu_pci_devices is not None:
        _put(points, m.GPU_PCI_DEVICES, (), 0.0, float(snap.gpu_pci_devices))
    for label in LABEL_NAMES:
        _put(points, m.WINDOWS_TOTAL, (label,), 0.0, float(snap.windows_total.get(label, 0)))
    _put(points, m.RECORD_ERRORS, (), 0.0, float(snap.record_errors_total()))
    if snap.recording is not None:
        _put(points, m.RECORDING_UP, (), 0.0, 1.0 if snap.recording.up else 0.0)
    window = snap.window
    # Before the first window the state set already exists, saying "unknown": a fleet
    # query never sees a host without a label, and alerts on it do not start late.
    current = "unknown" if window is None else window.label
    for label in LABEL_NAMES:
        _put(points, m.WINDOW_LABEL, (label,), 0.0, 1.0 if label == current else 0.0)
    _put(points, m.WINDOW_LABEL_SINCE, (), 0.0,
         snap.start_time if window is None else window.label_since)
    if window is None:
        return
    if window.top_evidence:
        _put(points, m.WINDOW_TOP_EVIDENCE, (window.top_evidence,), 0.0, 1.0)
    for nic, direction, ratio, capacity, basis in window.path_uses:
        _put(points, m.NIC_PATH_UTILIZATION, (nic, direction), 0.0, ratio)
        if capacity is not None:
            _put(points, m.NIC_PATH_CAPACITY, (nic, direction, basis), 0.0, capacity / 8)
    for metric, value in ((m.WINDOW_CONFIDENCE, window.confidence),
                          (m.WINDOW_START, window.start), (m.WINDOW_END, window.end),
                          (m.WINDOW_EVIDENCE, float(window.evidence_items)),
                          (m.LAST_WINDOW_AGE, max(0.0, now - window.end))):
        _put(points, metric, (), 0.0, value)


def _probe_points(points: _Points, snap: Snapshot) -> None:
    for name in sorted(snap.probes):
        h = snap.probes[name]
        _put(points, m.PROBE_USABLE, (name,), 0.0, 1.0 if h.usable else 0.0)
        if not h.usable:
            continue  # not running: no health figures to give
        if h.up is not None:
            _put(points, m.PROBE_UP, (name,), 0.0, 1.0 if h.up else 0.0)
        for reason in ERROR_REASONS:
            _put(points, m.PROBE_ERRORS, (name, reason), 0.0,
                 float(h.errors_total.get(reason, 0)))
        _put(points, m.PROBE_SAMPLES, (name,), 0.0, float(h.samples_total))
        # Every kind an active probe can be skipped for exists from the start, at 0,
        # so increase() sees the first skip.
        skips = dict.fromkeys(SKIP_KINDS, 0) if h.active else {}
        skips.update(h.skips_total)
        for reason, count in sorted(skips.items()):
            _put(points, m.PROBE_SKIPS, (name, reason), 0.0, float(count))
        if h.last_error is not None:  # the label is bounded: a long text is cut
            _put(points, m.PROBE_ERROR_INFO, (name, one_line(h.last_error, ERROR_LABEL_LIMIT)),
                 0.0, 0.0 if h.up else 1.0)
        if h.last_success is not None:
            _put(points, m.PROBE_LAST_SUCCESS, (name,), 0.0, h.last_success)
        if h.last_duration_seconds is not None:
            _put(points, m.PROBE_DURATION, (name,), 0.0, h.last_duration_seconds)


Families = list[tuple[m.Metric, list[tuple[tuple[str, ...], float]]]]


# One series' sample lines: (metric name, label values, sample time, line).
_SeriesLines = tuple[tuple[str, tuple[str, ...], float, str], ...]
# Lines by metric name, then label values -> (sample time, line).
_Lines = dict[str, dict[tuple[str, ...], tuple[float, str]]]


def _line(name: str, labelvalues: tuple[str, ...], value: float) -> str:
    return _LINE_TEMPLATES[name] % (*map(_escape, labelvalues), _number(value))


def _series_lines(series: Series) -> _SeriesLines:
    points = _series_points(iter((series,)))
    return tuple((name, lv, t, _line(name, lv, v))
                 for name, bucket in points.items() for lv, (t, v) in bucket.items())


def _blocks(live: tuple[Series, ...],
            prepared: dict[int, tuple[Series, _SeriesLines]]) -> dict[str, str]:
    """The sample lines of these series, one text block per metric name, each label
    set once (the newest sample's); lines come from ``prepared`` where rendered."""
    lines: _Lines = {}
    for s in live:
        entry = prepared.get(id(s))
        for name, lv, t, line in (entry[1] if entry is not None and entry[0] is s
                                  else _series_lines(s)):
            _merge(lines, name, lv, t, line)
    return {name: "".join([line for _t, line in bucket.values()])
            for name, bucket in lines.items()}


def _merge(lines: _Lines, name: str, labelvalues: tuple[str, ...], t: float, line: str) -> None:
    # As _put: where two series give one label set, the newer sample wins.
    bucket = lines.get(name)
    if bucket is None:
        bucket = lines[name] = {}
    old = bucket.get(labelvalues)
    if old is None or old[0] <= t:
        bucket[labelvalues] = (t, line)


class Collector:
    """Builds every ai_bottleneck_* family from ``state.snapshot()`` at each scrape.

    ``collect()`` gives prometheus_client families (registries, tests,
    ``get_sample_value``; it is a prometheus_client collector by its methods, and
    imports that package only when called); ``render()`` writes the same points straight to
    the exposition formats, several times faster than the generic encoder,
    which is what keeps a scrape of an 8-GPU host cheap. ``prepare()``, called
    by the writer after it records samples, renders the series' lines and joins
    them into one block per metric ahead of the scrapes; a scrape whose live
    series are exactly those (the same objects: series are immutable, a new
    sample is a new object) takes the blocks as they are and renders only the
    agent's own figures (window, probe health), which change with time.
    """

    def __init__(self, state: AgentState, clock: Clock | None = None):
        self._state = state
        self._clock = clock or state.clock
        # id(series) -> (the series, its lines). The entry holds the series, so its id
        # cannot be reused while the entry lives; lookups check identity anyway.
        self._prepared: dict[int, tuple[Series, _SeriesLines]] = {}
        # The live series prepare() saw and their blocks (metric name -> sample lines).
        self._blocks: tuple[tuple[Series, ...], dict[str, str]] = ((), {})

    def prepare(self) -> None:
        """Render the lines of every series new since the last call and the blocks of
        the live ones, on the caller's thread. Scrapes that see other live series
        (recorded since, or gone stale) render those themselves."""
        old = self._prepared
        fresh: dict[int, tuple[Series, _SeriesLines]] = {}
        snap = self._state.snapshot()
        for s in snap.series.values():
            entry = old.get(id(s))
            fresh[id(s)] = entry if entry is not None and entry[0] is s else (s, _series_lines(s))
        live = tuple(snap.live_series(self._clock()))
        blocks = _blocks(live, fresh)
        # Reference swaps: a scrape sees the old values or these, each whole.
        self._prepared = fresh
        self._blocks = (live, blocks)

    def describe(self) -> list[Metric]:
        # Registration must not run collect(): the families vary with the state.
        return []

    def families(self) -> Families:
        """Every family with points, in the metric table's order."""
        snap = self._state.snapshot()
        now = self._clock()
        points = _series_points(snap.live_series(now))
        _agent_points(points, snap, now)
        _probe_points(points, snap)
        out: Families = []
        for metric in m.METRICS:
            bucket = points.get(metric.name)
            if bucket:
                out.append((metric, [(lv, v) for lv, (_t, v) in bucket.items()]))
        return out

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for metric, samples in self.families():
            kind = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
            family = kind(metric.name, metric.help, labels=metric.labels)
            for labelvalues, value in samples:
                family.add_metric(labelvalues, value)
            yield family

    def render(self, openmetrics: bool = False) -> str:
        """The families as Prometheus text format 0.0.4, or OpenMetrics 1.0 without
        the closing ``# EOF`` (the caller appends more families, then that)."""
        snap = self._state.snapshot()
        now = self._clock()
        live = tuple(snap.live_series(now))
        seen, blocks = self._blocks
        if len(seen) != len(live) or not all(a is b for a, b in zip(seen, live, strict=True)):
            blocks = _blocks(live, self._prepared)
        points: _Points = {}
        _agent_points(points, snap, now)
        _probe_points(points, snap)
        # Series metrics and the agent's own (window, probe health) are different
        # metrics (tests/test_exporter.py checks), so the two never share a family.
        own = {name: "".join([_line(name, lv, v) for lv, (_t, v) in bucket.items()])
               for name, bucket in points.items()}
        headers = _OM_HEADERS if openmetrics else _TEXT_HEADERS
        out: list[str] = []
        for metric in m.METRICS:
            text = blocks.get(metric.name) or own.get(metric.name)
            if text:
                out.append(headers[metric.name])
                out.append(text)
        return "".join(out)


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _number(value: float) -> str:
    if math.isfinite(value):
        return repr(value)
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def _help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


# Per metric, computed once: the HELP and TYPE lines of each format and a %-template
# of its sample line. OpenMetrics names a counter family without "_total"; its samples
# keep it.
_LINE_TEMPLATES = {
    metric.name: metric.name + ("{" + ",".join(f'{label}="%s"' for label in metric.labels)
                                + "}" if metric.labels else "") + " %s\n"
    for metric in m.METRICS}
_TEXT_HEADERS = {metric.name: f"# HELP {metric.name} {_help(metric.help, False)}\n"
                              f"# TYPE {metric.name} {metric.kind}\n" for metric in m.METRICS}
_OM_HEADERS = {
    metric.name: f"# HELP {metric.name.removesuffix('_total')} {_help(metric.help, True)}\n"
                 f"# TYPE {metric.name.removesuffix('_total')} {metric.kind}\n"
    for metric in m.METRICS}


def build_registry(state: AgentState, *, process_metrics: bool = True) -> CollectorRegistry:
    """A prometheus_client registry of its own (never the global one) with the
    agent's collector and, as every exporter has, the process_* metrics of the agent
    itself: for code that works with registries; the endpoint does not use one."""
    from prometheus_client import ProcessCollector
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    # The registry reads only describe() and collect(), which Collector has.
    registry.register(cast("CollectorBase", Collector(state)))
    if process_metrics:
        ProcessCollector(registry=registry)
    return registry


class Exposition:
    """What /metrics serves: the agent's families, rendered directly, then its
    process_* families, in the format the scraper asks for (Prometheus asks for
    OpenMetrics; text 0.0.4 otherwise)."""

    def __init__(self, state: AgentState, *, process_metrics: bool = True):
        self._state = state
        self.collector = Collector(state)
        self._process = ProcessMetrics() if process_metrics else None

    def prepare(self) -> None:
        """See Collector.prepare: call after recording samples."""
        self.collector.prepare()

    def problems(self) -> list[str]:
        """Why /healthz is not OK (see Snapshot.problems); empty when all is well."""
        return self._state.snapshot().problems(self._state.clock())

    def render(self, accept: str = "") -> tuple[bytes, str]:
        openmetrics = wants_openmetrics(accept)
        text = self.collector.render(openmetrics)
        if self._process is not None:
            text += self._process.render(openmetrics)
        if openmetrics:
            text += "# EOF\n"
        # "replace": a label read with surrogateescape (a process name in bad UTF-8)
        # must not fail the whole scrape.
        return (text.encode("utf-8", "replace"),
                OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE)
