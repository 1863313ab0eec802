"""NIC probe: per-interface throughput, link speed, utilization, drops and
errors, and the host's TCP retransmit ratio.

Counters come from /proc/net/dev (read directly, not through psutil: psutil's
``nowrap=True`` adds a reset counter's new value onto the old one, hiding the
reset, and ``nowrap=False`` is just this file), link facts from
/sys/class/net/<nic>/, TCP counters from /proc/net/snmp. Rates need two
readings: the first ``sample()`` primes the state and reports link speeds only.

Which interfaces: physical ones (those with a ``device`` link in sysfs) and
bond masters. Loopback and virtual interfaces (veth, bridges, VLANs, tunnels,
docker0, ifb) are left out by default because their traffic is also counted
on a physical interface, or is host-internal. Bond slaves are left out because
their bond carries the same bytes: a bond is never reported beside its slaves
unless a slave is named in ``include``. Where no physical interface is visible
at all (a container's own network namespace), the interfaces carrying a
default route are reported instead, so the container's uplink is measured.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ai_bottleneck.probes.base import (
    Availability,
    Clock,
    Sample,
    clean_values,
    failed,
    option_info,
    parse_options,
)
from ai_bottleneck.probes.capacity import Links, Shapers
from ai_bottleneck.probes.procfs import (
    NetDevCounters,
    counter_delta,
    default_route_interfaces,
    parse_net_dev,
    parse_snmp,
    read_optional,
    read_text,
)
from ai_bottleneck.probes.vocabulary import HOST_TOTAL_LABELS as HOST_LABELS
from ai_bottleneck.probes.vocabulary import (
    LINK_SPEED,
    LINK_UTILIZATION_VALUES,
    TCP_OUT_SEGMENTS_TOTAL,
    TCP_RETRANSMIT_RATIO,
    TCP_RETRANSMITS,
    TCP_RETRANSMITS_TOTAL,
    nic_total,
    nic_value,
)

PROBE_NAME = "nic"

#: Values of /sys/class/net/<nic>/speed that mean "unknown": the kernel's
#: SPEED_UNKNOWN (-1) and how older drivers spelled it (0xFFFF, 0xFFFFFFFF).
_UNKNOWN_SPEEDS = {65535, 4294967295}

#: How long a choice of interfaces is reused while the set of interface names
#: stays the same: classifying costs a few sysfs lookups per interface (tens of
#: them on a container host). A new or vanished name is seen at once; a NIC
#: enslaved to a bond in place is seen within this time.
RECLASSIFY_SECONDS = 10.0

#: A wrapped byte counter is believed only if the increase it implies fits the
#: link with this much headroom (timing jitter between counter and clock reads).
_WRAP_HEADROOM = 2.0


def _names_or_patterns(names: tuple[str, ...], key: str) -> None:
    for n in names:
        if not n.strip() or "/" in n:
            raise ValueError(f"{key}: {n!r} is not an interface name or pattern")


@dataclass(frozen=True)
class Options:
    include: tuple[str, ...] = field(default=(), metadata=option_info(
        doc="interface names or shell patterns (eth*, ens*) reported even when virtual, "
            "loopback or a bond slave"))
    exclude: tuple[str, ...] = field(default=(), metadata=option_info(
        doc="interface names or shell patterns never reported; wins over include"))
    include_virtual: bool = field(default=False, metadata=option_info(
        doc="also report every virtual interface (veth, bridge, VLAN, tunnel, loopback); "
            "bond slaves still need naming"))
    links: Links = field(default_factory=Links, metadata=option_info(
        doc="declared rates (the config's [links] table, given here by the agent)"))
    read_shapers: bool = field(default=True, metadata=option_info(
        doc="report the rate of a tc shaper (root tbf, htb root class) on each interface"))

    def __post_init__(self) -> None:
        _names_or_patterns(self.include, "include")
        _names_or_patterns(self.exclude, "exclude")


class Kind(enum.Enum):
    """What an interface is, as far as choosing it goes."""

    PHYSICAL = "physical"
    BOND = "bond"
    BOND_SLAVE = "bond slave"
    BRIDGE = "bridge"
    LOOPBACK = "loopback"
    VIRTUAL = "virtual"


def classify(sys_net: str, name: str) -> Kind:
    """Kind of interface ``name`` from its sysfs directory (a few stat calls)."""
    d = f"{sys_net}/{name}"
    if os.path.isdir(f"{d}/bonding"):
        return Kind.BOND
    if os.path.isdir(f"{d}/master/bonding"):  # `master` links to the bond's directory
        return Kind.BOND_SLAVE
    if os.path.isdir(f"{d}/bridge"):
        return Kind.BRIDGE
    if os.path.exists(f"{d}/device"):  # only real hardware (PCI, virtio, USB) has one
        return Kind.PHYSICAL
    return Kind.LOOPBACK if name == "lo" else Kind.VIRTUAL


def link_speed_bits_per_second(text: str | None) -> float | None:
    """/sys/class/net/<nic>/speed (Mbit/s) in bits per second; None when unknown
    (unreadable: EINVAL while the link is down or for drivers that do not say;
    -1, 0 or an old driver's "unknown" marker)."""
    if text is None:
        return None
    try:
        mbit = int(text.strip())
    except ValueError:
        return None
    if mbit <= 0 or mbit in _UNKNOWN_SPEEDS:
        return None
    return mbit * 1e6


def tightest(values: Mapping[str, float | None], direction: str) -> float | None:
    """The smallest of the link speed, the declared rate and the shaper's rate (tx only)
    for ``direction``, from a nic sample's values; None when none is known."""
    known = [v for k in ("link_speed_bits_per_second", f"declared_{direction}_bits_per_second",
                         f"shaped_{direction}_bits_per_second")
             if (v := values.get(k)) is not None and v > 0]
    return min(known) if known else None


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


@dataclass(frozen=True, slots=True)
class _NicReading:
    ifindex: str | None  # a new index under the same name is a new device: counters restart
    counters: NetDevCounters
    at: float


@dataclass(frozen=True, slots=True)
class _Choice:
    names: frozenset[str]
    chosen: tuple[str, ...]
    at: float
    public: frozenset[str] = frozenset()  # carry the default route (declared public rate)


@dataclass(frozen=True, slots=True)
class _TcpReading:
    retransmits: int
    out_segments: int
    at: float


def create(options: Mapping[str, Any]) -> NicProbe:
    """Entry point ``ai_bottleneck.probes: nic``."""
    return NicProbe(parse_options(Options, options))


class NicProbe:
    """Samples of probe ``nic``: one per chosen interface (label ``nic``) and one
    for host-wide TCP (label ``scope: host``); see docs/probes.md."""

    name = PROBE_NAME
    active = False
    interval_seconds: float | None = None
    timeout_seconds = 2.0

    def __init__(self, options: Options | None = None, *, proc_root: str | Path = "/proc",
                 sys_root: str | Path = "/sys", clock: Clock = time.monotonic,
                 wall_clock: Clock = time.time, shapers: Shapers | None = None) -> None:
        self.options = options or Options()
        proc = str(Path(proc_root))  # plain strings: pathlib costs more than the reads
        self._net_dev, self._snmp = f"{proc}/net/dev", f"{proc}/net/snmp"
        self._routes = (f"{proc}/net/route", f"{proc}/net/ipv6_route")
        self._sys_net = f"{Path(sys_root)}/class/net"
        self._clock = clock
        self._wall_clock = wall_clock
        self._nic_before: dict[str, _NicReading] = {}
        self._tcp_before: _TcpReading | None = None
        self._choice: _Choice | None = None
        self._shapers = shapers if shapers is not None else (
            Shapers() if self.options.read_shapers else None)

    # --- choosing interfaces ----------------------------------------------------

    def choose(self, names: Iterable[str]) -> tuple[list[str], dict[str, str]]:
        """(interfaces to report, {left-out interface: why}) for the names the kernel lists."""
        opts = self.options
        kinds = {n: classify(self._sys_net, n) for n in names}
        uplinks = {Kind.PHYSICAL, Kind.BOND, Kind.BOND_SLAVE}
        fallback: set[str] = set()
        if not any(k in uplinks for k in kinds.values()):
            fallback = default_route_interfaces(*(read_optional(p) for p in self._routes))
        chosen: list[str] = []
        left_out: dict[str, str] = {}
        for name, kind in kinds.items():
            if _matches(name, opts.exclude):
                left_out[name] = "excluded"
            elif (_matches(name, opts.include) or kind in (Kind.PHYSICAL, Kind.BOND)
                  or name in fallback
                  or (opts.include_virtual and kind is not Kind.BOND_SLAVE)):
                chosen.append(name)
            else:
                left_out[name] = kind.value
        return chosen, left_out

    # --- the probe protocol -----------------------------------------------------

    def check(self) -> Availability:
        path = self._net_dev
        try:
            names = list(parse_net_dev(read_text(path)))
        except OSError as exc:
            return Availability.no(f"cannot read {path}: {exc.strerror or exc}")
        except ValueError as exc:
            return Availability.no(f"{path}: {exc}")
        chosen, left_out = self.choose(names)
        parts = [f"interfaces: {', '.join(chosen) or 'none'}"]
        if left_out:
            parts.append("left out: " + ", ".join(f"{n} ({why})" for n, why in left_out.items())
                         + " (name them in include to report them)")
        missing = [p for p in self.options.include if not any(fnmatchcase(n, p) for n in names)]
        if missing:
            parts.append(f"include names no present interface: {', '.join(missing)}")
        if self._shapers is not None:
            shaped = {n: r for n, r in self._shapers.rates().items() if n in chosen}
            if shaped:
                parts.append("shaped: " + ", ".join(f"{n} tx {r / 1e6:g} Mbit/s"
                                                    for n, r in shaped.items()))
        return Availability.yes("; ".join(parts))

    def sample(self) -> Sequence[Sample]:
        t = self._wall_clock()
        path = self._net_dev
        try:
            counters = parse_net_dev(read_text(path))
        except OSError as exc:
            return [failed(PROBE_NAME, f"cannot read {path}: {exc.strerror or exc}", t=t)]
        except ValueError as exc:
            return [failed(PROBE_NAME, f"{path}: {exc}", t=t)]
        now = self._clock()
        chosen = self._chosen(counters, now)
        for gone in set(self._nic_before) - set(chosen):
            del self._nic_before[gone]
        samples: list[Sample | None] = [
            self._nic_sample(t, now, name, counters[name]) for name in chosen]
        samples.append(self._tcp_sample(t))
        # Every interface sample carries its raw counters; the filter drops a TCP
        # sample that is None (no IPv4 stack) or empty.
        return [s for s in samples if s is not None and (s.values or s.error)]

    def link_utilization(self, samples: Sequence[Sample]) -> float | None:
        """The busiest direction of any NIC in ``samples`` as a share of its link speed
        (LinkLoadSource: the traffic budget holds active probes back while it is high);
        None when no NIC reports a link speed."""
        ratios = [v for s in samples if s.ok for k, v in s.values.items()
                  if k in LINK_UTILIZATION_VALUES]
        return max(ratios) if ratios else None

    def close(self) -> None:
        self._nic_before.clear()
        self._tcp_before = None
        self._choice = None

    def _chosen(self, names: Iterable[str], now: float) -> tuple[str, ...]:
        listed = list(names)  # kernel order, so samples come in a stable order
        key = frozenset(listed)
        c = self._choice
        if c is None or c.names != key or not 0 <= now - c.at < RECLASSIFY_SECONDS:
            public: frozenset[str] = frozenset()
            if self.options.links.public_bits_per_second is not None:
                public = frozenset(default_route_interfaces(
                    *(read_optional(p) for p in self._routes)))
            c = self._choice = _Choice(key, tuple(self.choose(listed)[0]), now, public)
        return c.chosen

    # --- values -------------------------------------------------------------------

    def _nic_sample(self, t: float, now: float, name: str, cur: NetDevCounters) -> Sample:
        ifindex = read_optional(f"{self._sys_net}/{name}/ifindex")
        speed = link_speed_bits_per_second(read_optional(f"{self._sys_net}/{name}/speed"))
        before = self._nic_before.get(name)
        self._nic_before[name] = _NicReading(ifindex, cur, now)
        values: dict[str, float | None] = {LINK_SPEED: speed}
        values.update(self._capacities(name))
        # The kernel's own counters too, as read: Prometheus rebuilds exact totals and
        # rates from them whatever its scrape interval (the rates above cover one pass).
        values.update(_raw_totals(cur))
        if before is not None and before.ifindex == ifindex and now > before.at:
            elapsed = now - before.at
            most_bytes = speed / 8 * elapsed * _WRAP_HEADROOM if speed else None
            prev = before.counters
            for direction, b0, b1 in (("rx", prev.rx_bytes, cur.rx_bytes),
                                      ("tx", prev.tx_bytes, cur.tx_bytes)):
                grown = counter_delta(b0, b1, most_bytes)
                if grown is not None:
                    bps = grown * 8 / elapsed
                    values[nic_value(direction, "bits_per_second")] = bps
                    # Against the tightest rate known: a shaper or a bought rate far
                    # under the link speed is what fills up. Unknown: no ratio.
                    capacity = tightest(values, direction)
                    if capacity:
                        values[nic_value(direction, "utilization_ratio")] = bps / capacity
            for key, c0, c1 in (("rx_drops", prev.rx_drops, cur.rx_drops),
                                ("tx_drops", prev.tx_drops, cur.tx_drops),
                                ("rx_errors", prev.rx_errors, cur.rx_errors),
                                ("tx_errors", prev.tx_errors, cur.tx_errors)):
                grown = counter_delta(c0, c1)
                values[f"{key}_per_second"] = None if grown is None else grown / elapsed
        return Sample(t=t, probe=PROBE_NAME, labels={"nic": name}, values=clean_values(values))

    def _capacities(self, name: str) -> dict[str, float | None]:
        """Rates besides the link speed: declared in [links], and a shaper on this host."""
        links = self.options.links
        out: dict[str, float | None] = {}
        if not links.empty:
            public = self._choice is not None and name in self._choice.public
            for direction in ("rx", "tx"):
                out[f"declared_{direction}_bits_per_second"] = links.declared(
                    name, direction, public)
        if self._shapers is not None:
            out["shaped_tx_bits_per_second"] = self._shapers.rate(name)
        return out

    def _tcp_sample(self, t: float) -> Sample | None:
        path = self._snmp
        text = read_optional(path)
        if text is None:  # no IPv4 stack in this namespace: nothing to say
            self._tcp_before = None
            return None
        now = self._clock()
        try:
            tcp = parse_snmp(text, "Tcp")
            cur = _TcpReading(tcp["RetransSegs"], tcp["OutSegs"], now)
        except KeyError as exc:
            self._tcp_before = None
            return failed(PROBE_NAME, f"{path}: no Tcp counter {exc}", HOST_LABELS, t=t)
        except ValueError as exc:
            self._tcp_before = None
            return failed(PROBE_NAME, f"{path}: {exc}", HOST_LABELS, t=t)
        before, self._tcp_before = self._tcp_before, cur
        totals: dict[str, float | None] = {TCP_RETRANSMITS_TOTAL: cur.retransmits,
                                           TCP_OUT_SEGMENTS_TOTAL: cur.out_segments}
        if before is None or now <= before.at:
            return Sample(t=t, probe=PROBE_NAME, labels=dict(HOST_LABELS),
                          values=clean_values(totals))
        elapsed = now - before.at
        retransmits = counter_delta(before.retransmits, cur.retransmits)
        out_segments = counter_delta(before.out_segments, cur.out_segments)
        values: dict[str, float | None] = {
            TCP_RETRANSMITS: None if retransmits is None else retransmits / elapsed,
            "tcp_out_segments_per_second": (
                None if out_segments is None else out_segments / elapsed),
            # nothing sent: no ratio to speak of (absent, not zero and not a division by zero)
            TCP_RETRANSMIT_RATIO: (retransmits / out_segments
                                     if retransmits is not None and out_segments else None),
            **totals,
        }
        return Sample(t=t, probe=PROBE_NAME, labels=dict(HOST_LABELS),
                      values=clean_values(values))


def _raw_totals(c: NetDevCounters) -> dict[str, float | None]:
    """The interface's raw /proc/net/dev counters (they restart with the device)."""
    return {nic_total("rx", "bytes"): c.rx_bytes, nic_total("tx", "bytes"): c.tx_bytes,
            nic_total("rx", "packets"): c.rx_packets, nic_total("tx", "packets"): c.tx_packets,
            nic_total("rx", "drops"): c.rx_drops, nic_total("tx", "drops"): c.tx_drops,
            nic_total("rx", "errors"): c.rx_errors, nic_total("tx", "errors"): c.tx_errors}
