"""Reading and interpreting the small kernel files the host and NIC probes use.

Every function takes text or a path, never a fixed "/proc": the probes take
their roots (``proc_root``, ``sys_root``) from the constructor so tests run
them against fixture trees of the same files. Parsers raise ValueError with a
line saying what is wrong; the probes turn that into an absent value or a
failed sample.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path


def read_text(path: str | Path) -> str:
    """A small kernel file's text. OSError passes through: whether a missing or
    unreadable file is a failure or an absent value is the caller's decision."""
    # Plain descriptors rather than open(): a third less CPU per file, and a
    # probe pass is mostly these reads.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", "replace")


def read_optional(path: str | Path) -> str | None:
    """The file's text, or None where the kernel cannot give it (missing file,
    EINVAL from a down link's ``speed``, EOPNOTSUPP from disabled PSI)."""
    try:
        return read_text(path)
    except OSError:
        return None


# --- pressure stall information (/proc/pressure/{cpu,io,memory}) -------------


@dataclass(frozen=True, slots=True)
class PsiLine:
    """One line of a PSI file: the 10-second average (percent) and the running
    total of stalled time (microseconds)."""

    avg10_percent: float
    total_microseconds: int


def parse_psi(text: str) -> dict[str, PsiLine]:
    """``some avg10=.. avg60=.. avg300=.. total=..`` and ``full ...`` lines, by kind.

    A kind the kernel does not print (``full`` in the cpu file before Linux
    5.13) is missing from the result; a line of zeros is a real reading.
    """
    out: dict[str, PsiLine] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        fields = dict(item.split("=", 1) for item in rest.split() if "=" in item)
        try:
            out[kind] = PsiLine(float(fields["avg10"]), int(fields["total"]))
        except (KeyError, ValueError):
            raise ValueError(f"unexpected pressure line {line!r}") from None
    return out


# --- CPU time (/proc/stat) ----------------------------------------------------

#: user nice system idle iowait irq softirq steal. guest and guest_nice follow
#: on newer kernels but are already counted inside user and nice.
CPU_FIELDS = 8
_IDLE, _IOWAIT = 3, 4


def parse_cpu_ticks(text: str) -> dict[str, tuple[int, ...]]:
    """The ``cpu`` (all CPUs) and ``cpuN`` lines of /proc/stat as tick tuples."""
    out: dict[str, tuple[int, ...]] = {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        name, *fields = line.split()
        try:
            ticks = tuple(int(v) for v in fields[:CPU_FIELDS])
        except ValueError:
            raise ValueError(f"unexpected cpu line {line!r}") from None
        if len(ticks) < 4:
            raise ValueError(f"unexpected cpu line {line!r}")
        out[name] = ticks + (0,) * (CPU_FIELDS - len(ticks))  # old kernels print fewer
    if "cpu" not in out:
        raise ValueError("no 'cpu' line")
    return out


def busy_ratio(before: tuple[int, ...], after: tuple[int, ...]) -> float | None:
    """Share of ticks not idle (nor waiting on I/O) between two readings of one CPU line.

    Steal counts as busy, as psutil counts it: the CPU was not ours to use.
    Each field's change is floored at zero because iowait can go backwards
    (proc(5) says so). None when no tick passed.
    """
    deltas = [max(0, a - b) for a, b in zip(after, before, strict=True)]
    total = sum(deltas)
    if total == 0:
        return None
    idle = deltas[_IDLE] + deltas[_IOWAIT]
    return min(1.0, (total - idle) / total)


# --- memory and load ------------------------------------------------------------


def parse_meminfo(text: str, wanted: Collection[str] | None = None) -> dict[str, int]:
    """/proc/meminfo in bytes (the kernel prints kB, meaning KiB). With ``wanted``,
    parsing stops once those keys are found (MemTotal and MemAvailable are near the top)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if wanted is not None and key not in wanted:
            continue
        parts = rest.split()
        if not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            raise ValueError(f"unexpected meminfo line {line!r}") from None
        out[key] = value * 1024 if parts[1:] == ["kB"] else value
        if wanted is not None and len(out) == len(wanted):
            break
    return out


def parse_load1(text: str) -> float:
    """The one-minute load average, first field of /proc/loadavg."""
    try:
        return float(text.split(maxsplit=1)[0])
    except (IndexError, ValueError):
        raise ValueError(f"unexpected loadavg {text.strip()!r}") from None


# --- network counters (/proc/net/dev, /proc/net/snmp, routes) -------------------


@dataclass(frozen=True, slots=True)
class NetDevCounters:
    """The counters of one /proc/net/dev line that the NIC probe turns into rates.

    ``rx_drops`` is what the kernel prints in the receive ``drop`` column:
    packets dropped by the stack plus those the NIC missed for lack of buffers.
    """

    rx_bytes: int
    rx_errors: int
    rx_drops: int
    tx_bytes: int
    tx_errors: int
    tx_drops: int
    rx_packets: int = 0
    tx_packets: int = 0


def parse_net_dev(text: str) -> dict[str, NetDevCounters]:
    """Interface name -> counters. The first two lines are headers."""
    out: dict[str, NetDevCounters] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")  # names cannot hold ':' (dev_valid_name)
        fields = rest.split()
        if not sep or len(fields) < 16:
            raise ValueError(f"unexpected /proc/net/dev line {line.strip()!r}")
        try:
            v = [int(f) for f in fields[:16]]
        except ValueError:
            raise ValueError(f"unexpected /proc/net/dev line {line.strip()!r}") from None
        # receive: bytes packets errs drop fifo frame compressed multicast; transmit: same 8
        out[name.strip()] = NetDevCounters(rx_bytes=v[0], rx_errors=v[2], rx_drops=v[3],
                                           tx_bytes=v[8], tx_errors=v[10], tx_drops=v[11],
                                           rx_packets=v[1], tx_packets=v[9])
    return out


def parse_snmp(text: str, section: str) -> dict[str, int]:
    """One section of /proc/net/snmp ("Tcp", "Udp", ...): a header line of names
    followed by a line of values, both starting with ``<section>:``."""
    prefix = section + ":"
    rows = [line.split()[1:] for line in text.splitlines() if line.startswith(prefix)]
    if len(rows) < 2 or len(rows[0]) != len(rows[1]):
        raise ValueError(f"no {section} header and value lines")
    try:
        return {k: int(v) for k, v in zip(rows[0], rows[1], strict=True)}
    except ValueError:
        raise ValueError(f"unexpected {section} values {' '.join(rows[1])!r}") from None


_RTF_UP, _RTF_REJECT = 0x0001, 0x0200


def _hex(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        return 0


def default_route_interfaces(ipv4_routes: str | None, ipv6_routes: str | None) -> set[str]:
    """Interfaces that carry a default route, from /proc/net/route and
    /proc/net/ipv6_route (either may be missing: None)."""
    names: set[str] = set()
    for line in (ipv4_routes or "").splitlines()[1:]:
        f = line.split()
        # Iface Destination Gateway Flags RefCnt Use Metric Mask ...: a default
        # route has destination and mask 0 and the RTF_UP flag
        if (len(f) >= 8 and f[1] == "00000000" and f[7] == "00000000"
                and _hex(f[3]) & _RTF_UP and not _hex(f[3]) & _RTF_REJECT):
            names.add(f[0])
    for line in (ipv6_routes or "").splitlines():
        f = line.split()
        # dest, prefix length, src, src length, next hop, metric, refcnt, use,
        # flags, device; the kernel's own "unreachable" default sits on lo with RTF_REJECT
        if (len(f) >= 10 and f[1] == "00" and set(f[0]) == {"0"}
                and _hex(f[8]) & _RTF_UP and not _hex(f[8]) & _RTF_REJECT):
            names.add(f[-1])
    return names


# --- counter arithmetic -----------------------------------------------------------


def counter_delta(before: int, after: int, max_increase: float | None = None) -> int | None:
    """How much a kernel counter grew, across a 32- or 64-bit wrap; None for a reset.

    A counter that went backwards either wrapped or was reset (driver reload,
    device re-created). It is taken as a wrap when both readings fit the
    counter width and the increase that implies is plausible: at most
    ``max_increase`` (what the link could carry in the interval, when known)
    and at most half the counter's range. Anything else is a reset, and the
    caller leaves that rate out for this sample rather than report a huge or
    negative number.
    """
    if after >= before:
        return after - before
    for width in (32, 64):
        span = 1 << width
        if before >= span or after >= span:
            continue
        wrapped = span - before + after
        limit = span // 2 if max_increase is None else min(span // 2, max_increase)
        if wrapped <= limit:
            return wrapped
    return None
