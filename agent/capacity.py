"""What one NIC direction could carry in a window, and where that figure came from.

Pure functions of a window's nic series (see ai_bottleneck.probes.capacity for the
rates the nic probe reports). The tightest of the known rates is the one a
link fills up against:

- the link speed (``link_speed_bits_per_second``),
- a rate the user declared in ``[links]`` (``declared_rx/tx_bits_per_second``),
- a tc shaper on this host's egress (``shaped_tx_bits_per_second``).

A limit beyond this host (a shaped hop, a provider's cap on what arrives) shows
no rate at all; two other sources stand in for it, judged by the classifier's
facts because they need context:

- a *plateau*: the direction's throughput held flat near its peak for the whole
  window (``Plateau``), which is a ceiling when congestion shows beside it;
- a recent iperf3/download result: traffic at or above what a test could get
  means the path is full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from ai_bottleneck.series import SeriesWindow, Stats

#: Where a capacity came from, in the words the evidence uses.
LINK_SPEED = "link speed"
DECLARED = "rate declared in [links]"
SHAPED = "tc shaper on this host"
#: The basis of a capacity read from a plateau (a measured one's basis is its probe's name).
PLATEAU = "plateau"


class Measured(NamedTuple):
    """A recent throughput test, as a capacity candidate."""

    direction: str          # "rx" or "tx"
    bits_per_second: float
    what: str               # the test in words: probe, target and age
    probe: str              # "iperf3" or "download"


@dataclass(frozen=True, slots=True)
class Capacity:
    bits_per_second: float
    source: str


@dataclass(frozen=True, slots=True)
class Plateau:
    """Throughput held flat near its peak for a whole window: every reading at
    least ``flatness`` of the peak. A ceiling when congestion shows beside it."""

    peak_bits_per_second: float
    mean_bits_per_second: float
    flatness: float   # the lowest reading / the peak
    samples: int


class NicLike(Protocol):
    """What saturations() reads of a NIC's window (ai_bottleneck.readings.NicReading)."""

    @property
    def name(self) -> str: ...

    def capacity(self, direction: str) -> Capacity | None: ...

    def stats(self, direction: str) -> Stats | None: ...


def tightest_capacity(sw: SeriesWindow, direction: str) -> Capacity | None:
    """The smallest known rate of one NIC direction in the window, with its source (the
    first in _RATES' order of equal ones)."""
    tightest: tuple[float, str] | None = None
    for name, source in _RATES.get(direction) or _rates(direction):
        v = sw.last(name)
        if v is not None and v > 0 and (tightest is None or v < tightest[0]):
            tightest = (v, source)
    return Capacity(*tightest) if tightest is not None else None


def _rates(direction: str) -> tuple[tuple[str, str], ...]:
    """The value names of one direction's known rates, each with its source."""
    return (("link_speed_bits_per_second", LINK_SPEED),
            (f"declared_{direction}_bits_per_second", DECLARED),
            (f"shaped_{direction}_bits_per_second", SHAPED))


_RATES = {direction: _rates(direction) for direction in ("rx", "tx")}


def plateau(st: Stats | None, *, min_samples: int, floor_bits_per_second: float,
            flat_ratio: float) -> Plateau | None:
    """A direction's plateau in the window from its throughput ``st``, if it was flat:
    at least ``min_samples`` readings, a mean above ``floor_bits_per_second`` (an idle
    link is flat too) and every reading within ``flat_ratio`` of the peak."""
    if st is None or st.count < min_samples or st.max <= 0:
        return None
    if st.mean < floor_bits_per_second:
        return None
    flatness = st.min / st.max
    if flatness < flat_ratio:
        return None
    return Plateau(st.max, st.mean, flatness, st.count)


@dataclass(frozen=True, slots=True)
class Saturation:
    """One NIC direction at or near what its path carries."""

    nic: str
    direction: str
    utilization: float        # mean throughput / capacity (may pass 1 against a test)
    capacity_bits_per_second: float
    source: str               # where the capacity came from, in words
    #: Its kind in a word, for tables and charts: LINK_SPEED, DECLARED, SHAPED, PLATEAU
    #: or the probe that measured it ("iperf3", "download").
    basis: str


def saturations(nics: Sequence[NicLike], *, saturation_ratio: float, plateau_min_samples: int,
                idle_bits_per_second: float, plateau_flat_ratio: float,
                congestion: str | None, measured: Sequence[Measured]) -> list[Saturation]:
    """Every NIC direction that is full against the tightest capacity known for it.

    ``congestion`` names a sign that the path is congested (retransmits, requests
    waiting on the network), or is None: a flat throughput is a ceiling only beside
    such a sign, since a steady workload is flat too. ``measured``: recent
    iperf3/download results (direction, bits per second, words); traffic at or
    past what a test got in that direction means the path is full.
    """
    out: list[Saturation] = []
    for n in nics:
        for direction in ("rx", "tx"):
            found = _saturation(n, direction, saturation_ratio, plateau_min_samples,
                                idle_bits_per_second, plateau_flat_ratio, congestion, measured)
            if found is not None:
                out.append(found)
    return out


def _saturation(n: NicLike, direction: str, ratio: float, min_samples: int, idle: float,
                flat_ratio: float, congestion: str | None,
                measured: Sequence[Measured]) -> Saturation | None:
    st = n.stats(direction)
    traffic = st.mean if st is not None else None
    cap = n.capacity(direction)
    if traffic is not None and cap is not None and traffic / cap.bits_per_second >= ratio:
        return Saturation(n.name, direction, traffic / cap.bits_per_second,
                          cap.bits_per_second, cap.source, cap.source)
    if traffic is None or traffic < idle:
        return None
    if congestion is not None:
        flat = plateau(st, min_samples=min_samples, floor_bits_per_second=idle,
                       flat_ratio=flat_ratio)
        if flat is not None:
            return Saturation(n.name, direction, flat.mean_bits_per_second
                              / flat.peak_bits_per_second, flat.peak_bits_per_second,
                              f"the plateau it held (every reading within "
                              f"{1 - flat.flatness:.0%} of its peak) while {congestion}",
                              PLATEAU)
    for m in measured:
        if m.direction == direction and m.bits_per_second > 0 \
                and traffic / m.bits_per_second >= ratio:
            return Saturation(n.name, direction, traffic / m.bits_per_second, m.bits_per_second,
                              f"what {m.what} measured", m.probe)
    return None
