"""The active-probe budget: a diagnostic agent must not become the bottleneck it reports.

Active probes (iperf3, downloads) make traffic of their own. Before one runs,
the scheduler asks an ``ActiveBudget``:

- would this run push the traffic of the last hour (a sliding window) over
  ``bytes_per_hour``?
- is the NIC already busier than ``busy_nic_ratio`` of its link speed? A test
  on a busy link measures what is left over and takes it from the service.

Each "no" is a ``Skip``: its kind (budget, nic_busy) and a one-line
reason with the figures. The probe is then skipped, and the skip is recorded as
a Sample of that probe with values ``{"skipped": 1}`` and the labels
``skip_reason`` and ``skip_kind`` (see ``skipped_sample`` in the probe
contract): it is neither a measurement nor a failure. That active probes never
overlap (two at once would measure each other) is the sampler's job: it starts
one at a time.

The class is pure apart from a lock: the clock is injected, nothing sleeps,
nothing reads the network.

Use by the sampler::

    skip = budget.permit(probe.name, expected_bytes_of(probe), nic_ratio)
    if skip is not None:
        samples = [skipped_sample(probe.name, skip)]
    else:
        samples = probe.sample()
        budget.spend(probe.name, bytes_in_samples(samples))
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from ai_bottleneck.probes.base import (
    Clock,
    Sample,
    Skip,
    SkipKind,
    TrafficEstimate,
    option_info,
)
from ai_bottleneck.probes.vocabulary import BYTES_VALUE


@dataclass(frozen=True)
class BudgetOptions:
    """The ``[budget]`` table of the agent config."""

    hourly_traffic_bytes: float | None = field(default=2e9, metadata=option_info(
        min=0, doc="traffic all active probes together may make in any hour "
                   "(sliding window); none = no limit"))
    busy_nic_ratio: float | None = field(default=0.5, metadata=option_info(
        min=0, max=1, doc="skip active probes while the NIC's rx or tx is at or above "
                          "this share of its link speed; none = never skip for this"))


def expected_bytes_of(probe: object) -> float:
    """The probe's own estimate of its next run's traffic; 0 when it offers none."""
    if isinstance(probe, TrafficEstimate):
        value = float(probe.expected_bytes())
        return value if math.isfinite(value) and value > 0 else 0.0
    return 0.0


def bytes_in_samples(samples: Iterable[Sample]) -> float:
    """The traffic a run made, as its samples report it (the ``bytes`` value of each)."""
    return float(sum(s.values.get(BYTES_VALUE, 0.0) for s in samples))


def _megabytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


class ActiveBudget:
    """Traffic budget over a sliding window, and the busy-NIC guard.

    Times are in the injected clock's seconds (monotonic by default); ``at``
    arguments default to ``clock()``. Thread-safe.
    """

    def __init__(self, bytes_per_hour: float | None, busy_nic_ratio: float | None = 0.5,
                 clock: Clock = time.monotonic, window_seconds: float = 3600.0):
        if bytes_per_hour is not None and bytes_per_hour < 0:
            raise ValueError("bytes_per_hour must be >= 0")
        if busy_nic_ratio is not None and not 0 <= busy_nic_ratio <= 1:
            raise ValueError("busy_nic_ratio must be between 0 and 1")
        if window_seconds <= 0:
            raise ValueError("window_seconds must be > 0")
        self.bytes_per_hour = bytes_per_hour
        self.busy_nic_ratio = busy_nic_ratio
        self.window_seconds = window_seconds
        self._clock = clock
        self._spent: deque[tuple[float, float]] = deque()  # (at, bytes), oldest first
        self._lock = threading.Lock()

    @classmethod
    def from_options(cls, options: BudgetOptions, clock: Clock = time.monotonic) -> ActiveBudget:
        return cls(options.hourly_traffic_bytes, options.busy_nic_ratio, clock)

    # -- traffic accounting -------------------------------------------------------------

    def spend(self, probe: str, bytes_used: float, at: float | None = None) -> None:
        """Record traffic a run of ``probe`` made (call it also for failed runs that moved
        data). Non-finite or negative amounts are ignored."""
        if not math.isfinite(bytes_used) or bytes_used <= 0:
            return
        with self._lock:
            when = self._clock() if at is None else at
            self._spent.append((when, float(bytes_used)))
            self._expire(self._clock())

    def spent(self, at: float | None = None) -> float:
        """Bytes spent in the window that ends at ``at``."""
        with self._lock:
            now = self._clock() if at is None else at
            self._expire(now)
            return self._sum_in_window(now)

    def remaining(self, at: float | None = None) -> float | None:
        """Bytes still allowed in the window ending at ``at``; None when there is no limit."""
        if self.bytes_per_hour is None:
            return None
        return max(0.0, self.bytes_per_hour - self.spent(at))

    def _expire(self, now: float) -> None:
        # Entries are appended in call order; an ``at`` in the past may sit behind a newer
        # one, so only drop from the left while the head is out of the window.
        while self._spent and self._spent[0][0] <= now - self.window_seconds:
            self._spent.popleft()

    def _sum_in_window(self, now: float) -> float:
        start = now - self.window_seconds
        return sum(b for at, b in self._spent if start < at <= now)

    def _seconds_until_room(self, now: float, needed: float) -> float | None:
        """How long until enough old spending leaves the window to fit ``needed`` more."""
        assert self.bytes_per_hour is not None
        start = now - self.window_seconds
        in_window = sorted((at, b) for at, b in self._spent if start < at <= now)
        total = sum(b for _, b in in_window)
        for at, b in in_window:
            total -= b
            if self._fits(total, needed):
                return at + self.window_seconds - now
        return None

    def _fits(self, used: float, needed: float) -> bool:
        # An exhausted budget admits nothing, not even a run that gives no estimate.
        assert self.bytes_per_hour is not None
        return used < self.bytes_per_hour and used + needed <= self.bytes_per_hour

    # -- the decision -------------------------------------------------------------------

    def permit(self, probe: str, expected_bytes: float,
               nic_utilization_ratio: float | None, at: float | None = None) -> Skip | None:
        """None if ``probe`` may run now, else why it is skipped.

        ``nic_utilization_ratio`` is the busier direction (rx or tx) of the NIC the
        probe will use, as a share of link speed; None when unknown (link speed not
        reported), in which case the NIC check cannot apply and does not block.
        """
        with self._lock:
            return self._permit(probe, expected_bytes, nic_utilization_ratio,
                                self._clock() if at is None else at)

    def _permit(self, probe: str, expected_bytes: float,
                nic_utilization_ratio: float | None, now: float) -> Skip | None:
        if (self.busy_nic_ratio is not None and nic_utilization_ratio is not None
                and math.isfinite(nic_utilization_ratio)
                and nic_utilization_ratio >= self.busy_nic_ratio):
            return Skip(SkipKind.NIC_BUSY,
                        f"NIC busy: {nic_utilization_ratio:.0%} of link speed in use, at or "
                        f"above the {self.busy_nic_ratio:.0%} limit for active probes")
        if self.bytes_per_hour is None:
            return None
        needed = expected_bytes if math.isfinite(expected_bytes) and expected_bytes > 0 else 0.0
        self._expire(now)
        used = self._sum_in_window(now)
        if self._fits(used, needed):
            return None
        hour = f"{self.window_seconds / 3600:g} h" if self.window_seconds != 3600 else "hour"
        if needed > self.bytes_per_hour:
            return Skip(SkipKind.BUDGET,
                        f"traffic budget: {probe} expects ~{_megabytes(needed)}, more than "
                        f"the whole budget of {_megabytes(self.bytes_per_hour)} per {hour}")
        wait = self._seconds_until_room(now, needed)
        when = f"; room again in {math.ceil(wait)} s" if wait is not None else ""
        return Skip(SkipKind.BUDGET,
                    f"traffic budget: {_megabytes(used)} of {_megabytes(self.bytes_per_hour)} "
                    f"per {hour} used, {probe} expects ~{_megabytes(needed)}{when}")
