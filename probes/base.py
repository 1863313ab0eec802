"""The probe plugin contract: everything a probe author imports, from one module.

A probe is a source of Samples. The agent discovers probe factories through
the entry-point group ``ai_bottleneck.probes`` (built-ins included), builds
each with its options table, asks ``check()`` whether it can run here, and
then calls ``sample()`` on its schedule, each call under a time limit, from
a worker thread. A probe never raises out of ``sample()`` for a failure of
what it measures: it returns a Sample with ``error`` set (``failed``). An
exception out of ``sample()`` is treated as a probe bug: recorded as a failed
sample and counted, and the loop goes on.

Built-in probes import only from this module and from their own helper
modules in ``ai_bottleneck.probes`` (tests/test_layering.py holds them to it);
a third-party probe needs nothing else::

    from ai_bottleneck.probes.base import Availability, Sample, parse_options

Optional capabilities are declared Protocols the agent checks for with
``isinstance``: ``TrafficEstimate`` (an active probe says how much traffic its
next run makes), ``PeerServerHost`` (the probe runs a server that peers test
against), ``LinkLoadSource`` (its samples say how busy the network link is,
which holds active probes back), ``InFlight`` (it says what its calls still
running have taken so far) and ``SampleFollower`` (it reads the other probes'
samples after every round: the service probe follows the GPU processes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ai_bottleneck.probes.options import (
    OptionError,
    option_info,
    parse_bytes,
    parse_duration,
    parse_options,
    parse_rate,
)
from ai_bottleneck.probes.sample import (
    Sample,
    Skip,
    SkipKind,
    clean_values,
    failed,
    is_skipped,
    one_line,
    skip_kind,
    skipped_sample,
)
from ai_bottleneck.probes.vocabulary import IN_FLIGHT_LABELS

__all__ = [
    "IN_FLIGHT_LABELS", "Availability", "Clock", "InFlight", "LinkLoadSource", "OptionError",
    "PeerServer", "PeerServerHost",
    "Probe", "ProbeFactory", "Sample", "SampleFollower", "Skip", "SkipKind", "TrafficEstimate",
    "clean_values",
    "failed", "is_skipped", "one_line", "option_info", "parse_bytes", "parse_duration",
    "parse_options", "parse_rate", "skip_kind", "skipped_sample",
]

#: A source of seconds (``time.time``, ``time.monotonic``, ``time.perf_counter``),
#: injected so that tests can drive time.
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
#: Probe. It raises OptionError for bad options (``parse_options`` does).
ProbeFactory = Callable[[Mapping[str, Any]], Probe]


# -- optional capabilities -----------------------------------------------------------

@runtime_checkable
class TrafficEstimate(Protocol):
    """An active probe that can say how many bytes its next run will move; the traffic
    budget skips the run when that does not fit. A run reports what it moved as the
    ``bytes`` value of its samples."""

    def expected_bytes(self) -> float: ...


class PeerServer(Protocol):
    """A server a probe runs for its peers (iperf3's ``server`` table). The agent starts
    it with the run, calls ``ensure_running`` every sampling round and stops it at the
    end of the run (and on reload)."""

    def start(self) -> str | None:
        """Start serving; None on success, else why not (one line, logged)."""
        ...

    def ensure_running(self) -> str | None:
        """Restart it if it exited; None when it runs, else why not."""
        ...

    def stop(self) -> None: ...


@runtime_checkable
class PeerServerHost(Protocol):
    """A probe that may run a server for peers: ``make_server`` returns it (not yet
    started) when the probe's options ask for one, else None."""

    def make_server(self) -> PeerServer | None: ...


@runtime_checkable
class LinkLoadSource(Protocol):
    """A probe whose samples tell how busy the host's network link is (the nic probe).

    After each of its rounds the sampler asks ``link_utilization`` for the busier
    direction as a share of link speed (None: not known), and the traffic budget
    holds active probes back while it is at or above ``busy_nic_ratio``.
    """

    def link_utilization(self, samples: Sequence[Sample]) -> float | None: ...


@runtime_checkable
class InFlight(Protocol):
    """A probe whose calls can outlast a window says what is still running.

    The sampler asks ``in_flight()`` on its own thread while a call of the probe
    has run past the probe's interval; the samples (labelled ``IN_FLIGHT_LABELS``,
    see ai_bottleneck.probes.vocabulary) join the stream like any other, so a window
    in which a 14 s download is still under way sees it, and a replay sees it too.
    """

    def in_flight(self) -> Sequence[Sample]: ...


@runtime_checkable
class SampleFollower(Protocol):
    """A probe whose next sample depends on what other probes saw (the service probe
    measures the cgroups of the processes the gpu probe found holding GPU memory).

    The agent hands it every round's samples, all probes', on the sampling thread, after
    the round is labelled; ``follow`` keeps what it needs (quickly, no I/O) for the
    probe's next ``sample()``, which runs on a worker thread. Probes never import each
    other: the coupling goes through the agent, and what the probe then measured is in
    its own samples, so a replay needs no follower. ``follows`` names the probe whose
    samples it needs (None: it needs none now); where that probe does not run, the
    agent does not run the follower either and says why.
    """

    @property
    def follows(self) -> str | None: ...

    def follow(self, samples: Sequence[Sample]) -> None: ...
