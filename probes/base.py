"""The probe protocol.

A probe is a source of Samples. The agent discovers probe factories through
the entry-point group ``ai_bottleneck.probes`` (built-ins included), builds
each with its options table, asks ``check()`` whether it can run here, and
then calls ``sample()`` on its schedule, each call under a time limit, from
a worker thread. A probe never raises out of ``sample()`` for a failure of
what it measures: it returns a Sample with ``error`` set. An exception out of
``sample()`` is treated as a probe bug: recorded as a failed sample and
counted, and the loop goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ai_bottleneck.samples import Sample

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether a probe can run on this host, and if not, why (one line a person can act on)."""

    usable: bool
    reason: str = ""

    @classmethod
    def yes(cls, detail: str = "") -> Availability:
        return cls(True, detail)

    @classmethod
    def no(cls, reason: str) -> Availability:
        return cls(False, reason)


@runtime_checkable
class Probe(Protocol):
    """What every probe provides.

    ``name`` is the probe name written into samples and recordings.
    ``active`` is True for probes that generate traffic of their own
    (iperf3, downloads): the agent schedules those under a traffic budget,
    never two at once, and skips them while the NIC is already busy.
    ``interval_seconds`` is how often the probe wants to be sampled; None
    means every tick of the agent's sampling interval.
    ``timeout_seconds`` is the longest one ``sample()`` call may take before
    the agent gives up waiting for it.
    """

    name: str
    active: bool
    interval_seconds: float | None
    timeout_seconds: float

    def check(self) -> Availability: ...

    def sample(self) -> Sequence[Sample]: ...

    def close(self) -> None: ...


#: What the entry point ``ai_bottleneck.probes`` names: a callable that takes
#: the probe's options table (from the config file or CLI flags) and returns a
#: Probe. It raises ai_bottleneck.options.OptionError for bad options.
ProbeFactory = Callable[[Mapping[str, Any]], Probe]


def failed(probe: str, error: str, labels: Mapping[str, str] | None = None,
           t: float | None = None) -> Sample:
    """A failed-sample record, one line of error text."""
    from ai_bottleneck.samples import one_line

    return Sample(t=time.time() if t is None else t, probe=probe, labels=dict(labels or {}),
                  error=one_line(error))


#: Label of the samples a probe gives about calls still running (``InFlight``):
#: they describe work in progress, not a finished observation, so windows count
#: them apart (a lower bound on the call's time, not a call).
IN_FLIGHT_LABELS = {"call": "in_flight"}


@runtime_checkable
class InFlight(Protocol):
    """Optional: a probe whose calls can outlast a window says what is still running.

    The sampler asks ``in_flight()`` on its own thread while a call of the probe
    has run past the probe's interval; the samples (labelled ``IN_FLIGHT_LABELS``)
    join the stream like any other, so a window in which a 14 s download is still
    under way sees it, and a replay sees it too.
    """

    def in_flight(self) -> Sequence[Sample]: ...
