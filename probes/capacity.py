"""What a link can carry besides its link speed: a rate the user declares (the
bandwidth a cloud plan sells, a known internal rate) and a shaper on this host.

A VM's NIC reports 10-25 Gbit/s while the plan behind it sells 5 Mbit/s, and a
``tc`` shaper caps an interface far under its link speed: judging NIC use
against the link speed alone then reads a full pipe as nearly empty. The nic
probe reports these rates beside the link speed; the classifier judges NIC use
against the tightest one known and names where it came from.

Shapers are read from ``tc``'s own output (iproute2): the root ``tbf`` qdisc's
rate, or the tightest ceiling of an ``htb`` root class. Only egress (``tx``)
can be shaped this way; a limit on what arrives is declared, measured (iperf3,
downloads) or seen as a plateau by the classifier.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ai_bottleneck.probes.base import option_info, parse_rate

#: How long one reading of the shapers is reused: a shaper is configured, not
#: changed per second, and ``tc`` is a process start.
SHAPER_REFRESH_SECONDS = 30.0
_TC_TIMEOUT_SECONDS = 2.0
_HTB_ROOT_CLASS = re.compile(r"^class htb \S+ root .*?\bceil (\S+)", re.MULTILINE)


@dataclass(frozen=True)
class NicCapacity:
    """A declared rate for one interface: both directions, or each on its own."""

    bits_per_second: float | None = field(default=None, metadata=option_info(
        min=1, doc="the rate in both directions"))
    rx_bits_per_second: float | None = field(default=None, metadata=option_info(
        min=1, doc="the rate towards this host (wins over bits_per_second)"))
    tx_bits_per_second: float | None = field(default=None, metadata=option_info(
        min=1, doc="the rate away from this host (wins over bits_per_second)"))

    def rate(self, direction: str) -> float | None:
        own = self.rx_bits_per_second if direction == "rx" else self.tx_bits_per_second
        return own if own is not None else self.bits_per_second


@dataclass(frozen=True)
class Links:
    """The ``[links]`` table: rates the user knows that the NIC cannot tell."""

    public_bits_per_second: float | None = field(default=None, metadata=option_info(
        min=1, doc="the public bandwidth bought for this host, in both directions; applies "
                   "to the interfaces carrying the default route"))
    nics: Mapping[str, NicCapacity] = field(default_factory=dict, metadata=option_info(
        doc="per interface: { bits_per_second = ... } or rx_/tx_bits_per_second"))

    def declared(self, nic: str, direction: str, public: bool) -> float | None:
        """The declared rate of ``nic`` in ``direction``; ``public`` says whether the
        interface carries the default route. The tighter of the two when both apply."""
        rates = []
        own = self.nics.get(nic)
        if own is not None and (r := own.rate(direction)) is not None:
            rates.append(r)
        if public and self.public_bits_per_second is not None:
            rates.append(self.public_bits_per_second)
        return min(rates) if rates else None

    @property
    def empty(self) -> bool:
        return self.public_bits_per_second is None and not self.nics


def parse_tc_qdiscs(text: str) -> dict[str, float]:
    """``tc -j qdisc show`` -> {interface: root tbf rate in bits per second}."""
    try:
        rows = json.loads(text or "[]")
    except ValueError:
        return {}
    out: dict[str, float] = {}
    if not isinstance(rows, list):
        return out
    for row in rows:
        if not isinstance(row, Mapping) or row.get("kind") != "tbf" or not row.get("root"):
            continue
        dev = row.get("dev")
        options = row.get("options")
        rate = options.get("rate") if isinstance(options, Mapping) else None
        if isinstance(dev, str) and isinstance(rate, int | float) and rate > 0:
            out[dev] = float(rate) * 8  # tc's JSON gives tbf rates in bytes per second
    return out


def parse_htb_classes(text: str) -> float | None:
    """``tc class show dev X`` (text: iproute2 prints htb classes in no JSON form) ->
    the tightest ceiling of a root htb class in bits per second, or None."""
    ceilings = []
    for m in _HTB_ROOT_CLASS.finditer(text or ""):
        try:
            ceilings.append(parse_rate(m.group(1)))
        except ValueError:
            continue
    return min(ceilings) if ceilings else None


Runner = Callable[[list[str]], str | None]


def _run_tc(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_TC_TIMEOUT_SECONDS,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


class Shapers:
    """The egress shaper rate of each interface, read with ``tc`` now and then.

    ``rate(nic)`` is None where no shaper sits (or ``tc`` is missing): absent,
    never the link speed. The reading is reused for ``SHAPER_REFRESH_SECONDS``.
    """

    def __init__(self, run: Runner | None = None, clock: Callable[[], float] = time.monotonic,
                 program: str | None = "tc") -> None:
        """``program``: the tc program, by name on PATH or by path; None: read no shaper."""
        self._tc = shutil.which(program) if program else None
        self._run = run or _run_tc
        self._clock = clock
        self._rates: dict[str, float] = {}
        self._htb: set[str] = set()
        self._at: float | None = None

    @property
    def available(self) -> bool:
        return self._tc is not None

    def rates(self) -> dict[str, float]:
        now = self._clock()
        if self._tc is None:
            return {}
        if self._at is not None and 0 <= now - self._at < SHAPER_REFRESH_SECONDS:
            return self._rates
        self._at = now
        text = self._run([self._tc, "-j", "qdisc", "show"])
        rates = parse_tc_qdiscs(text or "")
        for dev in self._htb_roots(text or ""):
            ceil = parse_htb_classes(self._run([self._tc, "class", "show", "dev", dev]) or "")
            if ceil is not None:
                rates[dev] = min(ceil, rates.get(dev, ceil))
        self._rates = rates
        return rates

    @staticmethod
    def _htb_roots(text: str) -> list[str]:
        try:
            rows = json.loads(text or "[]")
        except ValueError:
            return []
        return [str(r["dev"]) for r in rows if isinstance(r, Mapping) and r.get("kind") == "htb"
                and r.get("root") and isinstance(r.get("dev"), str)] if isinstance(rows, list) \
            else []

    def rate(self, nic: str) -> float | None:
        return self.rates().get(nic)
