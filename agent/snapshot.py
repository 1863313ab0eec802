"""The immutable values the agent state publishes (ai_bottleneck.state): series,
probe health, the latest window, the recording's status, and the ``Snapshot``
a scrape reads, with the reasons /healthz gives when the agent is not healthy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol

#: Why a probe round failed: a failed sample it returned, a time-out waiting
#: for it, or an exception out of it (a probe bug).
ERROR_REASONS = ("error", "timeout", "crash")
FailureReason = Literal["timeout", "crash"]
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def series_key(probe: str, labels: Mapping[str, str]) -> SeriesKey:
    return probe, tuple(sorted(labels.items()))


@dataclass(frozen=True, slots=True)
class Series:
    """The latest sample of one series; ``expires_at`` is on the state's clock."""

    probe: str
    labels: Mapping[str, str]
    values: Mapping[str, float]
    error: str | None
    t: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class ProbeHealth:
    """How one probe is doing. ``up`` is None until its first round ended."""

    name: str
    usable: bool = True
    reason: str = ""
    interval_seconds: float = 1.0
    active: bool = False
    up: bool | None = None
    samples_total: int = 0
    errors_total: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType(dict.fromkeys(ERROR_REASONS, 0)))
    skips_total: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    last_success: float | None = None
    last_duration_seconds: float | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class WindowSummary:
    """The latest labelled window."""

    label: str
    confidence: float
    start: float
    end: float
    evidence_items: int
    top_evidence: str = ""  # the first evidence line, cut to TOP_EVIDENCE_CHARS
    label_since: float = 0.0  # start of the first window of this run of the label
    #: Each NIC direction's use against its path's capacity (ai_bottleneck.path_use):
    #: (nic, direction, ratio, capacity in bits per second or None, basis label).
    path_uses: tuple[tuple[str, str, float, float | None, str], ...] = ()


class RecordingStatus(Protocol):
    """How a recording is going (ai_bottleneck.record_writer.RecordWriter): read at
    each scrape, so a pause shows without the writer telling the state."""

    up: bool
    errors_total: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a scrape needs, immutable; ``AgentState.snapshot()`` returns it."""

    series: Mapping[SeriesKey, Series]
    probes: Mapping[str, ProbeHealth]
    window: WindowSummary | None
    windows_total: Mapping[str, int]
    build_info: Mapping[str, str]
    start_time: float
    interval_seconds: float
    window_seconds: float
    # Per series, the latest window's means of its rate and ratio values
    # (ai_bottleneck.window_means): they stand in for the sample's own.
    window_means: Mapping[SeriesKey, Mapping[str, float]] = field(
        default_factory=lambda: MappingProxyType({}))
    # NVIDIA GPUs the PCI bus shows (ai_bottleneck.gpu_presence); None: not looked.
    gpu_pci_devices: int | None = None
    #: When the latest probe round ended (state clock): the sampling loop's heartbeat.
    last_round: float = 0.0
    recording: RecordingStatus | None = None
    #: Write errors of the recordings before a reload swapped in ``recording``.
    record_errors_before: int = 0

    def record_errors_total(self) -> int:
        now = self.recording.errors_total if self.recording is not None else 0
        return self.record_errors_before + now

    def problems(self, now: float) -> list[str]:
        """Why the agent is not healthy, one short reason each (empty when it is):
        sampling stalled (no probe round for five of its shortest intervals, at least
        30 s) or the recording paused."""
        stalled = self.sampling_stalled(now)
        problems = [stalled] if stalled is not None else []
        if self.recording is not None and not self.recording.up:
            problems.append(f"recording paused: {self.recording.last_error or 'write failed'}")
        return problems

    def sampling_stalled(self, now: float) -> str | None:
        """Why sampling counts as stalled (no probe round for five of the shortest
        probe intervals, at least 30 s), or None while it goes on."""
        usable = [h.interval_seconds for h in self.probes.values() if h.usable]
        if usable:
            stall_after = max(30.0, 5 * min(usable))
            quiet = now - max(self.last_round, self.start_time)
            if quiet > stall_after:
                return f"sampling stalled: no probe round for {quiet:.0f} s"
        return None

    def live_series(self, now: float) -> Iterator[Series]:
        """Series not yet stale at ``now`` (also checked here: the writer may be stuck)."""
        for s in self.series.values():
            if s.expires_at >= now:
                yield s
