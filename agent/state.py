"""What the agent knows right now, shared by the sampling loop and the scrapes.

One writer side (the daemon's loop: ``register_probe``, ``record_samples``,
``record_failure``, ``record_window``) and any number of readers
(``snapshot``). Every write builds a new immutable ``Snapshot`` and swaps one
reference, so a scrape only reads that reference: it never takes the writer's
lock and never waits for a probe.

Only the latest value of each series is kept. A series is one probe's
samples with one label set (one GPU, one NIC, one HTTP target). It leaves the
snapshot when its probe has not reported it for ``stale_after_intervals`` of
that probe's intervals, so a GPU that vanished or a target removed from the
config does not linger in /metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import threading
import time
from collections.abc import Iterable, Mapping
from importlib import resources
from types import MappingProxyType
from typing import Any

from ai_bottleneck import __version__
from ai_bottleneck.labels import LABEL_NAMES
from ai_bottleneck.probes.base import Clock
from ai_bottleneck.probes.sample import Sample, is_skipped, one_line, skip_kind
from ai_bottleneck.snapshot import (
    ERROR_REASONS,
    FailureReason,
    ProbeHealth,
    RecordingStatus,
    Series,
    SeriesKey,
    Snapshot,
    WindowSummary,
    series_key,
)

__all__ = [
    "ERROR_REASONS",
    "TOP_EVIDENCE_CHARS",
    "AgentState",
    "FailureReason",
    "ProbeHealth",
    "RecordingStatus",
    "Series",
    "SeriesKey",
    "Snapshot",
    "WindowSummary",
    "build_revision",
    "default_build_info",
    "series_key",
]

log = logging.getLogger("ai_bottleneck.agent")

#: The longest top-evidence line /metrics carries (a label value: bounded in size).
TOP_EVIDENCE_CHARS = 160
def default_build_info() -> dict[str, str]:
    return {"version": __version__, "revision": build_revision(),
            "python_version": platform.python_version()}


def build_revision() -> str:
    """The source revision this copy was built from: $AI_BOTTLENECK_REVISION (set by
    an image build), else the REVISION file the wheel build writes (hatch_build.py),
    else "unknown"."""
    env = os.environ.get("AI_BOTTLENECK_REVISION", "").strip()
    if env:
        return one_line(env)[:64]
    try:
        text = (resources.files("ai_bottleneck") / "REVISION").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return "unknown"
    return one_line(text.strip())[:64] or "unknown"


class AgentState:
    """The shared state. Writers serialise on a lock; readers take ``snapshot()``."""

    def __init__(self, *, interval_seconds: float = 1.0, window_seconds: float = 10.0,
                 stale_after_intervals: int = 3, clock: Clock = time.time,
                 build_info: Mapping[str, str] | None = None):
        if not (interval_seconds > 0 and window_seconds > 0 and stale_after_intervals >= 1):
            raise ValueError("intervals must be positive and stale_after_intervals >= 1")
        self._clock = clock
        self._interval = float(interval_seconds)
        self._stale_after = int(stale_after_intervals)
        self._lock = threading.Lock()
        self._snapshot = Snapshot(
            series=MappingProxyType({}),
            probes=MappingProxyType({}),
            window=None,
            windows_total=MappingProxyType(dict.fromkeys(LABEL_NAMES, 0)),
            build_info=MappingProxyType(dict(build_info or default_build_info())),
            start_time=clock(),
            interval_seconds=float(interval_seconds),
            window_seconds=float(window_seconds),
        )

    @classmethod
    def from_config(cls, agent: Any, *, clock: Clock = time.time,
                    build_info: Mapping[str, str] | None = None) -> AgentState:
        """From ai_bottleneck.config.AgentOptions (the ``[agent]`` table)."""
        return cls(interval_seconds=agent.interval_seconds, window_seconds=agent.window_seconds,
                   stale_after_intervals=agent.stale_after_intervals, clock=clock,
                   build_info=build_info)

    @property
    def clock(self) -> Clock:
        return self._clock

    def apply_config(self, agent: Any) -> None:
        """New ``[agent]`` settings after a reload (ai_bottleneck.config.AgentOptions).

        /metrics shows the interval and window length the agent now runs
        with, and series written from now on expire on the new interval.
        Counters, health and the latest window are kept: the endpoint and its
        series go on across a reload.
        """
        interval = float(agent.interval_seconds)
        window = float(agent.window_seconds)
        stale_after = int(agent.stale_after_intervals)
        if not (interval > 0 and window > 0 and stale_after >= 1):
            raise ValueError("intervals must be positive and stale_after_intervals >= 1")
        with self._lock:
            self._interval, self._stale_after = interval, stale_after
            self._publish(self._snapshot, interval_seconds=interval, window_seconds=window)

    def snapshot(self) -> Snapshot:
        """The latest state: one reference read, no lock, never blocks."""
        return self._snapshot

    # -- writers --------------------------------------------------------------------

    def register_probe(self, name: str, *, usable: bool = True, reason: str = "",
                       interval_seconds: float | None = None, active: bool = False) -> None:
        """Declare a probe at start: usable or not (and why), how often it samples
        (None = every agent interval), whether it makes traffic of its own."""
        interval = self._interval if interval_seconds is None else max(
            float(interval_seconds), self._interval)
        with self._lock:
            snap = self._snapshot
            old = snap.probes.get(name)
            base = old if old is not None else ProbeHealth(name=name)
            health = dataclasses.replace(base, usable=usable, reason=one_line(reason),
                                         interval_seconds=interval, active=active)
            self._publish(snap, probes=self._with(snap.probes, name, health))

    def record_samples(self, probe: str, samples: Iterable[Sample], *,
                       duration_seconds: float | None = None) -> None:
        """One finished round of ``probe``: what its ``sample()`` returned.

        Failed samples count as errors (reason "error"); skip records of
        active probes count as skips and leave the series alone. The probe is
        up when the round produced at least one good sample, or nothing at all
        to report; a round of only skips leaves ``up`` as it was.
        """
        now = self._clock()
        samples = list(samples)
        with self._lock:
            snap = self._snapshot
            health = snap.probes.get(probe) or ProbeHealth(name=probe,
                                                           interval_seconds=self._interval)
            expires_at = now + self._stale_after * health.interval_seconds
            series = dict(snap.series)
            skips = dict(health.skips_total)
            measured = ok = failed = skipped = 0
            last_error = health.last_error
            for sample in samples:
                if is_skipped(sample):
                    skipped += 1
                    cls = skip_kind(sample).value
                    skips[cls] = skips.get(cls, 0) + 1
                    continue
                measured += 1
                labels = dict(sample.labels)
                key = series_key(probe, labels)
                if sample.ok:
                    ok += 1
                else:
                    failed += 1
                    last_error = sample.error
                    _drop_covered(series, probe, labels, keep=key)
                values = dict(sample.values)
                means = snap.window_means.get(key)
                if means:
                    values.update((k, v) for k, v in means.items() if k in values)
                series[key] = Series(probe=probe, labels=MappingProxyType(labels),
                                     values=MappingProxyType(values),
                                     error=sample.error, t=sample.t, expires_at=expires_at)
            _drop_expired(series, now)
            if measured == 0 and skipped > 0:
                up, answered = health.up, False  # skipped: neither a measurement nor a failure
            else:
                up = answered = ok > 0 or measured == 0
            errors = dict(health.errors_total)
            errors["error"] = errors.get("error", 0) + failed
            _warn_if_new(probe, health.last_error, last_error)
            new_health = dataclasses.replace(
                health, up=up, samples_total=health.samples_total + measured,
                errors_total=MappingProxyType(errors), skips_total=MappingProxyType(skips),
                last_success=now if answered else health.last_success,
                last_duration_seconds=_duration(duration_seconds, health.last_duration_seconds),
                last_error=last_error)
            self._publish(snap, series=MappingProxyType(series),
                          probes=self._with(snap.probes, probe, new_health), last_round=now)

    def record_failure(self, probe: str, reason: FailureReason, message: str = "", *,
                       duration_seconds: float | None = None) -> None:
        """A round of ``probe`` that returned nothing: it timed out, or raised."""
        if reason not in ("timeout", "crash"):
            raise ValueError(f"reason must be 'timeout' or 'crash', not {reason!r}")
        now = self._clock()
        with self._lock:
            snap = self._snapshot
            health = snap.probes.get(probe) or ProbeHealth(name=probe,
                                                           interval_seconds=self._interval)
            errors = dict(health.errors_total)
            errors[reason] = errors.get(reason, 0) + 1
            last_error = one_line(message or reason)  # the sampler logs these itself
            new_health = dataclasses.replace(
                health, up=False, errors_total=MappingProxyType(errors),
                last_duration_seconds=_duration(duration_seconds, health.last_duration_seconds),
                last_error=last_error)
            series = dict(snap.series)
            _drop_expired(series, now)
            self._publish(snap, series=MappingProxyType(series),
                          probes=self._with(snap.probes, probe, new_health), last_round=now)

    def watch_recording(self, recording: RecordingStatus | None) -> None:
        """The recording the sampling loop now writes (None: none); its write errors
        and pauses show in /metrics and /healthz. Errors of the one it replaces are
        kept, so the counter only grows across reloads."""
        with self._lock:
            snap = self._snapshot
            if recording is snap.recording:
                return
            self._publish(snap, recording=recording,
                          record_errors_before=snap.record_errors_total())

    def record_window(self, label: object, confidence: float, start: float, end: float,
                      evidence_items: int = 0, *, top_evidence: str = "",
                      means: Mapping[SeriesKey, Mapping[str, float]] | None = None,
                      path_uses: Iterable[tuple[str, str, float, float | None, str]] = ()
                      ) -> None:
        """A labelled window. ``label`` is one of LABEL_NAMES (a str or a str-valued Enum).

        ``means`` (series -> value -> mean over this window) replace those values of
        the live series, now and in their samples until the next window closes.
        ``path_uses``: its NIC directions' use (ai_bottleneck.path_use.metric_uses); one
        whose ratio is not a number is left out.
        """
        name = str(getattr(label, "value", label))
        if name not in LABEL_NAMES:
            raise ValueError(f"unknown window label {name!r}; expected one of "
                             f"{', '.join(LABEL_NAMES)}")
        if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
            raise ValueError(f"confidence must be within 0..1, got {confidence!r}")
        if not (math.isfinite(start) and math.isfinite(end) and start <= end):
            raise ValueError(f"window start {start!r} must be <= end {end!r}")
        top = one_line(top_evidence, TOP_EVIDENCE_CHARS)
        with self._lock:
            snap = self._snapshot
            previous = snap.window
            since = (previous.label_since if previous is not None and previous.label == name
                     else float(start))
            window = WindowSummary(label=name, confidence=float(confidence), start=float(start),
                                   end=float(end), evidence_items=int(evidence_items),
                                   top_evidence=top, label_since=since,
                                   path_uses=tuple(u for u in path_uses
                                                   if math.isfinite(u[2])))
            totals = dict(snap.windows_total)
            totals[name] += 1
            changes: dict[str, Any] = {"window": window,
                                       "windows_total": MappingProxyType(totals)}
            if means is not None:
                frozen = MappingProxyType({k: MappingProxyType(dict(v)) for k, v in means.items()})
                changes["window_means"] = frozen
                changes["series"] = MappingProxyType(_with_means(snap.series, frozen))
            self._publish(snap, **changes)

    def set_gpu_pci_devices(self, count: int | None) -> None:
        """How many NVIDIA GPUs the PCI bus shows (None: unknown)."""
        with self._lock:
            self._publish(self._snapshot, gpu_pci_devices=count)

    # -- helpers --------------------------------------------------------------------

    def _publish(self, snap: Snapshot, **changes: Any) -> None:
        # One reference assignment: readers see the old snapshot or the new one.
        self._snapshot = dataclasses.replace(snap, **changes)

    @staticmethod
    def _with(probes: Mapping[str, ProbeHealth], name: str,
              health: ProbeHealth) -> Mapping[str, ProbeHealth]:
        updated = dict(probes)
        updated[name] = health
        return MappingProxyType(updated)


#: The most of a probe's error text the log line about it carries.
ERROR_TEXT_LIMIT = 300


def _warn_if_new(probe: str, old: str | None, new: str | None) -> None:
    """A probe's error text reaches the log at WARNING once per change, not once per
    failed round: a target down for a day is one line, not 2,880."""
    if new is not None and new != old:
        log.warning("probe %s: %s", probe, one_line(new, limit=ERROR_TEXT_LIMIT))


def _duration(new: float | None, old: float | None) -> float | None:
    if new is None or not math.isfinite(new) or new < 0:
        return old
    return float(new)


def _with_means(series: Mapping[SeriesKey, Series],
                means: Mapping[SeriesKey, Mapping[str, float]]) -> dict[SeriesKey, Series]:
    out = dict(series)
    for key, values in means.items():
        s = out.get(key)
        if s is None or s.error is not None:
            continue
        merged = dict(s.values)
        merged.update((k, v) for k, v in values.items() if k in merged)
        out[key] = dataclasses.replace(s, values=MappingProxyType(merged))
    return out


def _drop_expired(series: dict[SeriesKey, Series], now: float) -> None:
    for key in [k for k, s in series.items() if s.expires_at < now]:
        del series[key]


def _drop_covered(series: dict[SeriesKey, Series], probe: str, labels: Mapping[str, str],
                  keep: SeriesKey) -> None:
    """A failed sample for {gpu=0} ends the good series {gpu=0, name=...} of that GPU at
    once: its last values no longer describe anything that answers."""
    wanted = set(labels.items())
    for key in [k for k in series if k[0] == probe and k != keep and wanted <= set(k[1])]:
        del series[key]
