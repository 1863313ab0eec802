"""A link's use in one window, against the capacity the classifier judged it by.

The classifier reads a NIC direction's use against the tightest rate the nic
probe knows (link speed, [links], a tc shaper: NicReading), and judges a path
full against a plateau or a throughput test too (ai_bottleneck.capacity,
``Saturation``). The reports (terminal key numbers and progress line, HTML
report, live page) take each window's figure from here, so a link the
evidence calls full at 100% of an 8.02 Mbit/s plateau never reads "0% of
10 Gbit/s" beside it: where the classifier found a saturation, its figure;
elsewhere, the reading's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ai_bottleneck.capacity import DECLARED, LINK_SPEED, PLATEAU, SHAPED, Saturation
from ai_bottleneck.readings import NicReading, Readings
from ai_bottleneck.units import bits

DIRECTIONS = ("rx", "tx")

#: Each basis of a capacity in a word or two; a measured one reads as its probe's name.
_BASIS_WORDS = {DECLARED: "declared", SHAPED: "tc shaper", PLATEAU: "plateau"}
#: Each basis as a metric label value (docs/metrics.md); a measured one is its probe's name.
_BASIS_LABELS = {LINK_SPEED: "link_speed", DECLARED: "declared", SHAPED: "shaped",
                 PLATEAU: "plateau"}

#: One NIC direction's use for /metrics: (nic, direction, ratio, capacity in bits per
#: second or None, basis label).
MetricUse = tuple[str, str, float, float | None, str]


@dataclass(frozen=True, slots=True)
class PathUse:
    """One NIC direction in one window: its throughput's share of a capacity."""

    direction: str
    ratio: float                            # capped at 1, as the evidence prints it
    capacity_bits_per_second: float | None  # None: a ratio the probe gave without its rate
    basis: str                              # capacity.LINK_SPEED, DECLARED, ... (Saturation)
    source: str                             # where the capacity came from, as the evidence says

    def of_text(self) -> str:
        """What the share is of, as the classifier's evidence words it: "20 Mbit/s (rate
        declared in [links])"."""
        if self.capacity_bits_per_second is None:
            return "its link"
        return f"{bits(self.capacity_bits_per_second)} ({self.source})"


def window_uses(nic: NicReading, saturations: Iterable[Saturation]) -> dict[str, PathUse]:
    """``nic``'s use per direction in one window: a saturation the classifier found for a
    direction replaces the reading's figure (its capacity is the tighter one)."""
    out: dict[str, PathUse] = {}
    for direction in DIRECTIONS:
        util = nic.rx_utilization if direction == "rx" else nic.tx_utilization
        if util is not None:
            cap = nic.capacity(direction)
            source = cap.source if cap is not None else LINK_SPEED
            out[direction] = PathUse(direction, min(util, 1.0),
                                     cap.bits_per_second if cap is not None else
                                     nic.link_bits_per_second, source, source)
    for s in saturations:
        if s.nic == nic.name and s.direction in DIRECTIONS:
            out[s.direction] = PathUse(s.direction, min(s.utilization, 1.0),
                                       s.capacity_bits_per_second, s.basis, s.source)
    return out


def busier(uses: Mapping[str, PathUse]) -> PathUse | None:
    """The direction nearer its capacity (rx on a tie, as NicReading.peak)."""
    return max(uses.values(), key=lambda u: u.ratio, default=None)


def basis_words(basis: str) -> str:
    return _BASIS_WORDS.get(basis, basis)


def capacity_text(capacities: Sequence[float], basis: str) -> str:
    """"10 Gbit/s link", "8.02 Mbit/s path (plateau)", "7.9-8.02 Mbit/s path (plateau)"
    for a plateau's peak that differed between windows; "the link" without a rate."""
    if not capacities:
        return "the link" if basis == LINK_SPEED else f"the path ({basis_words(basis)})"
    low, high = bits(min(capacities)), bits(max(capacities))
    if low != high:
        (nl, _, ul), (nh, _, uh) = low.partition(" "), high.partition(" ")
        rate = f"{nl}-{nh} {uh}" if ul == uh else f"{low}-{high}"
    else:
        rate = high
    return f"{rate} link" if basis == LINK_SPEED else f"{rate} path ({basis_words(basis)})"


def metric_uses(readings: Readings | None, saturations: Iterable[Saturation]) -> list[MetricUse]:
    """Every NIC direction's use in a window (loopback left out), for the exporter."""
    if readings is None:
        return []
    sats = tuple(saturations)
    return [(n.name, u.direction, u.ratio, u.capacity_bits_per_second,
             _BASIS_LABELS.get(u.basis, u.basis))
            for n in readings.nics if not n.loopback for u in window_uses(n, sats).values()]
