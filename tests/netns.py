"""Real test hosts: a network namespace joined to this one by a veth pair, with
real rate limits (tc tbf) on each direction.

Addresses come from 198.18.0.0/15, the range RFC 2544 reserves for network
benchmark tests, so they can never be anybody's real host. Everything made
here is removed on exit, also when the test fails: the namespace (which takes
its veth end with it), the host-side veth, and every process left in the
namespace.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

_counter = itertools.count(1)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=10)


def _tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True, text=True, timeout=10)


def tbf_args(rate_bits_per_second: float) -> list[str]:
    """tbf parameters for a rate: a burst of ~10 ms at that rate (at least 3 MTUs) and a
    queue of 0.5 s; short bursts keep the measured rate close to the configured one."""
    rate_bytes = rate_bits_per_second / 8
    burst = max(int(rate_bytes / 100), 3 * 1514)
    return ["rate", f"{int(rate_bits_per_second)}bit", "burst", str(burst),
            "latency", "500ms"]


@dataclass
class Link:
    """A namespace ``ns`` at ``ns_addr``, reachable from here through ``host_dev``
    (address ``host_addr``). ``rate_in``: limit from here into the namespace
    (uploads to a server in it); ``rate_out``: from the namespace to here (downloads)."""

    ns: str
    host_dev: str
    ns_dev: str
    host_addr: str
    ns_addr: str
    rate_in_bits_per_second: float | None
    rate_out_bits_per_second: float | None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: Limit on traffic into the namespace applied inside it (an ifb device the
    #: namespace's ingress is redirected to): a hop beyond this host, which this
    #: namespace's tc cannot see. None: no such hop.
    hop_rate_in_bits_per_second: float | None = None

    def cmd(self, argv: Sequence[str]) -> list[str]:
        """argv run inside the namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start argv in the namespace; it is killed and reaped when the link is removed
        (also if it had not yet entered the namespace when cleanup ran)."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            self.cmd(argv), **kwargs)
        self.procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(argv), capture_output=True, text=True, timeout=timeout,
                              check=False)

    def set_rate(self, rate_in: float | None = None, rate_out: float | None = None) -> None:
        """Change the limits while running (None leaves a direction as it is)."""
        if rate_in is not None:
            _tc("qdisc", "replace", "dev", self.host_dev, "root", "tbf", *tbf_args(rate_in))
            self.rate_in_bits_per_second = rate_in
        if rate_out is not None:
            _tc("-n", self.ns, "qdisc", "replace", "dev", self.ns_dev, "root", "tbf",
                *tbf_args(rate_out))
            self.rate_out_bits_per_second = rate_out


    def set_hop_rate(self, rate_in: float | None) -> None:
        """Shape traffic into the namespace one hop away from this host: its ingress is
        redirected to an ifb device inside the namespace whose tbf sets the rate. Seen
        from here the veth shows no shaper, as a provider's cap or a full switch port
        upstream shows none. None removes the hop's limit."""
        ifb = "abi" + self.ns[3:]
        if rate_in is None:
            if self.hop_rate_in_bits_per_second is not None:
                _tc("-n", self.ns, "qdisc", "del", "dev", self.ns_dev, "ingress")
                self.hop_rate_in_bits_per_second = None
            return
        if self.hop_rate_in_bits_per_second is None:
            _ip("-n", self.ns, "link", "add", ifb, "type", "ifb")
            _ip("-n", self.ns, "link", "set", ifb, "up")
            _tc("-n", self.ns, "qdisc", "replace", "dev", self.ns_dev, "handle", "ffff:",
                "ingress")
            _tc("-n", self.ns, "filter", "replace", "dev", self.ns_dev, "parent", "ffff:",
                "protocol", "all", "u32", "match", "u32", "0", "0", "action", "mirred",
                "egress", "redirect", "dev", ifb)
        _tc("-n", self.ns, "qdisc", "replace", "dev", ifb, "root", "tbf", *tbf_args(rate_in))
        self.hop_rate_in_bits_per_second = rate_in


def _kill_namespace_processes(ns: str) -> None:
    res = _ip("netns", "pids", ns, check=False)
    pids = [int(p) for p in res.stdout.split() if p.strip().isdigit()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
            time.sleep(0.05)
        if not pids:
            return


def _free_subnet(first: int) -> int:
    """The first 198.18.N.0/30 from ``first`` on that no address here is in: a veth left
    over by another process, or one the kernel has not torn down yet, would take the route."""
    shown = _ip("-o", "-4", "addr", "show", check=False).stdout
    taken = {int(word.split(".")[2]) for word in shown.split() if word.startswith("198.18.")}
    for k in range(250):
        subnet = (first - 1 + k) % 250 + 1
        if subnet not in taken:
            return subnet
    raise RuntimeError("every 198.18.N.0/30 test subnet is in use on this host")


@contextmanager
def netns_link(rate_in_bits_per_second: float | None = None,
               rate_out_bits_per_second: float | None = None) -> Iterator[Link]:
    """Make a namespace + veth pair with optional tbf limits; remove all of it on exit."""
    n = next(_counter)
    tag = f"{os.getpid() % 100000}x{n}"
    ns = f"abt{tag}"
    host_dev, ns_dev = f"abh{tag}", f"abn{tag}"
    subnet = _free_subnet((os.getpid() + n) % 250 + 1)
    host_addr, ns_addr = f"198.18.{subnet}.1", f"198.18.{subnet}.2"
    link = Link(ns, host_dev, ns_dev, host_addr, ns_addr, None, None)
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", host_dev, "type", "veth", "peer", "name", ns_dev)
        _ip("link", "set", ns_dev, "netns", ns)
        _ip("addr", "add", f"{host_addr}/30", "dev", host_dev)
        _ip("link", "set", host_dev, "up")
        _ip("-n", ns, "addr", "add", f"{ns_addr}/30", "dev", ns_dev)
        _ip("-n", ns, "link", "set", ns_dev, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        link.set_rate(rate_in_bits_per_second, rate_out_bits_per_second)
        yield link
    finally:
        for proc in link.procs:
            if proc.poll() is None:
                proc.kill()
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        _kill_namespace_processes(ns)
        _ip("netns", "del", ns, check=False)
        _ip("link", "del", host_dev, check=False)  # gone with the namespace, normally


def wait_for_port(link: Link | None, host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until a TCP server answers at host:port (inside ``link``'s namespace's view
    if the server runs there, tested from here)."""
    import socket

    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s: {last}")
