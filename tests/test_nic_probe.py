"""NIC probe: per-test /proc and /sys trees for the edge cases (unknown link
speed, counter wraps and resets, bonds, virtual interfaces), real traffic over
loopback, and a real veth in a test namespace."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ai_bottleneck.probes.base import Probe
from ai_bottleneck.probes.nic import (
    RECLASSIFY_SECONDS,
    NicProbe,
    Options,
    create,
    link_speed_bits_per_second,
)
from ai_bottleneck.probes.options import OptionError
from ai_bottleneck.probes.procfs import counter_delta, parse_net_dev, parse_snmp
from ai_bottleneck.probes.sample import Sample
from tests.netns import netns_link, wait_for_port

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT = Path(__file__).parent / "data" / "proc" / "linux-6-snapshot"
RATE_KEYS = {"rx_bits_per_second", "tx_bits_per_second", "rx_drops_per_second",
             "tx_drops_per_second", "rx_errors_per_second", "tx_errors_per_second"}
COUNTERS = ("rx_bytes", "rx_errors", "rx_drops", "tx_bytes", "tx_errors", "tx_drops",
            "rx_packets", "tx_packets")


class ManualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class KernelTree:
    """/proc/net/{dev,snmp,route} and /sys/class/net/<nic>/ as the probe reads them."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.sys = root / "sys"
        (self.proc / "net").mkdir(parents=True)
        (self.sys / "class" / "net").mkdir(parents=True)
        self.counters: dict[str, dict[str, int]] = {}
        self._next_index = 1
        self.write_dev()
        self.tcp(retransmits=0, out_segments=0)

    def nic_dir(self, name: str) -> Path:
        return self.sys / "class" / "net" / name

    def nic(self, name: str, *, physical: bool = True, speed: str | None = "1000",
            bond: bool = False, bridge: bool = False, master: str | None = None) -> None:
        d = self.nic_dir(name)
        d.mkdir()
        (d / "ifindex").write_text(f"{self._next_index}\n")
        self._next_index += 1
        if physical:
            (d / "device").mkdir()  # sysfs: a link to the PCI/virtio device
        if speed is not None:
            (d / "speed").write_text(speed + "\n")
        if bond:
            (d / "bonding").mkdir()
        if bridge:
            (d / "bridge").mkdir()
        if master is not None:
            (d / "master").symlink_to(Path("..") / master)
        self.counters[name] = dict.fromkeys(COUNTERS, 0)
        self.write_dev()

    def set(self, name: str, **values: int) -> None:
        self.counters[name].update(values)
        self.write_dev()

    def add(self, name: str, **values: int) -> None:
        for key, v in values.items():
            self.counters[name][key] += v
        self.write_dev()

    def remove(self, name: str) -> None:
        del self.counters[name]
        for p in sorted(self.nic_dir(name).rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        self.nic_dir(name).rmdir()
        self.write_dev()

    def write_dev(self) -> None:
        lines = ["Inter-|   Receive                                                |  Transmit",
                 " face |bytes    packets errs drop fifo frame compressed multicast|bytes    "
                 "packets errs drop fifo colls carrier compressed"]
        for name, c in self.counters.items():
            rx = [c["rx_bytes"], c["rx_packets"], c["rx_errors"], c["rx_drops"], 0, 0, 0, 0]
            tx = [c["tx_bytes"], c["tx_packets"], c["tx_errors"], c["tx_drops"], 0, 0, 0, 0]
            lines.append(f"{name:>6}: " + " ".join(str(v) for v in rx + tx))
        (self.proc / "net" / "dev").write_text("\n".join(lines) + "\n")

    def tcp(self, *, retransmits: int, out_segments: int) -> None:
        header = ("Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails "
                  "EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors")
        values = f"Tcp: 1 200 120000 -1 37 4 4 0 4 21768 {out_segments} {retransmits} 0 36 0"
        (self.proc / "net" / "snmp").write_text(
            "Ip: Forwarding DefaultTTL\nIp: 1 64\n" + header + "\n" + values + "\n"
            "Udp: InDatagrams NoPorts\nUdp: 5 6\n")

    def default_route(self, name: str) -> None:
        (self.proc / "net" / "route").write_text(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
            f"{name}\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
            f"{name}\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")

    def probe(self, clock: ManualClock, **options: object) -> NicProbe:
        from ai_bottleneck.probes.options import parse_options

        return NicProbe(parse_options(Options, options), proc_root=self.proc,
                        sys_root=self.sys, clock=clock, wall_clock=lambda: 42.0)


@pytest.fixture
def tree(tmp_path: Path) -> KernelTree:
    return KernelTree(tmp_path)


def by_nic(samples: list[Sample] | tuple[Sample, ...] | object, *,
           totals: bool = False) -> dict[str, dict[str, float]]:
    """Per interface, its values; the raw ``*_total`` counters only when ``totals``."""
    assert isinstance(samples, list | tuple)
    out: dict[str, dict[str, float]] = {}
    for s in samples:
        assert isinstance(s, Sample) and s.probe == "nic"
        assert s.ok, s.error
        if "nic" in s.labels:
            values = dict(s.values)
            assert set(RAW_TOTALS) <= set(values)  # every pass carries the kernel's counters
            out[s.labels["nic"]] = {k: v for k, v in values.items()
                                    if totals or not k.endswith("_total")}
    return out


RAW_TOTALS = ("rx_bytes_total", "tx_bytes_total", "rx_packets_total", "tx_packets_total",
              "rx_drops_total", "tx_drops_total", "rx_errors_total", "tx_errors_total")


def host_tcp(samples: object) -> Sample | None:
    assert isinstance(samples, list | tuple)
    found = [s for s in samples if dict(s.labels) == {"scope": "host"}]
    assert len(found) <= 1
    return found[0] if found else None


# --- rates from counters --------------------------------------------------------------


def test_first_sample_primes_then_rates_and_utilization(tree: KernelTree) -> None:
    tree.nic("eth0", speed="1000")
    clock = ManualClock()
    probe = tree.probe(clock)
    first = probe.sample()
    assert by_nic(first) == {"eth0": {"link_speed_bits_per_second": 1e9}}
    assert first[0].t == 42.0
    assert host_tcp(first) is None or not [k for k in host_tcp(first).values  # type: ignore[union-attr]
                                           if not k.endswith("_total")]
    clock.now += 2.0
    tree.add("eth0", rx_bytes=250_000_000, tx_bytes=25_000_000, rx_drops=10, tx_drops=4,
             rx_errors=6, tx_errors=2)
    v = by_nic(probe.sample())["eth0"]
    assert v["rx_bits_per_second"] == pytest.approx(1e9)
    assert v["tx_bits_per_second"] == pytest.approx(1e8)
    assert v["rx_utilization_ratio"] == pytest.approx(1.0)
    assert v["tx_utilization_ratio"] == pytest.approx(0.1)
    assert v["rx_drops_per_second"] == pytest.approx(5)
    assert v["tx_drops_per_second"] == pytest.approx(2)
    assert v["rx_errors_per_second"] == pytest.approx(3)
    assert v["tx_errors_per_second"] == pytest.approx(1)


@pytest.mark.parametrize("speed", ["-1", "0", "65535", "4294967295", "garbage", None,
                                   "unreadable"])
def test_unknown_link_speed_leaves_speed_and_utilization_absent(
        tree: KernelTree, speed: str | None) -> None:
    tree.nic("eth0", speed=None if speed == "unreadable" else speed)
    if speed == "unreadable":  # reading fails, as EINVAL does for a down link
        (tree.nic_dir("eth0") / "speed").mkdir()
    clock = ManualClock()
    probe = tree.probe(clock)
    assert by_nic(probe.sample()) == {"eth0": {}}  # no rate from a single reading
    clock.now += 1.0
    tree.add("eth0", rx_bytes=1000, tx_bytes=500)
    v = by_nic(probe.sample())["eth0"]
    assert v["rx_bits_per_second"] == pytest.approx(8000)
    assert v["tx_bits_per_second"] == pytest.approx(4000)
    assert not {"link_speed_bits_per_second", "rx_utilization_ratio",
                "tx_utilization_ratio"} & set(v)


def test_link_speed_parsing() -> None:
    assert link_speed_bits_per_second("25000\n") == 25e9
    assert link_speed_bits_per_second("10") == 10e6
    assert link_speed_bits_per_second("-1\n") is None
    assert link_speed_bits_per_second(None) is None


# --- wraps and resets -------------------------------------------------------------------


def test_counter_reset_skips_that_delta_only(tree: KernelTree) -> None:
    tree.nic("eth0", speed="10000")
    clock = ManualClock()
    probe = tree.probe(clock)
    tree.set("eth0", rx_bytes=5_000_000_000, tx_bytes=1_000, rx_drops=50)
    probe.sample()
    clock.now += 1.0
    tree.set("eth0", rx_bytes=4_000, tx_bytes=2_000, rx_drops=0)  # driver reloaded: rx restarts
    v = by_nic(probe.sample())["eth0"]
    assert "rx_bits_per_second" not in v and "rx_utilization_ratio" not in v
    assert "rx_drops_per_second" not in v
    assert v["tx_bits_per_second"] == pytest.approx(8_000)
    clock.now += 1.0
    tree.add("eth0", rx_bytes=1_000)
    v = by_nic(probe.sample())["eth0"]
    assert v["rx_bits_per_second"] == pytest.approx(8_000)
    assert v["rx_drops_per_second"] == 0.0


def test_reset_within_32_bits_is_not_taken_for_a_wrap(tree: KernelTree) -> None:
    tree.nic("eth0", speed=None)
    clock = ManualClock()
    probe = tree.probe(clock)
    tree.set("eth0", rx_bytes=1_000_000_000)
    probe.sample()
    clock.now += 1.0
    tree.set("eth0", rx_bytes=500)
    assert "rx_bits_per_second" not in by_nic(probe.sample())["eth0"]


@pytest.mark.parametrize("width", [32, 64])
def test_counter_wrap_is_computed_across(tree: KernelTree, width: int) -> None:
    tree.nic("eth0", speed=None)
    clock = ManualClock()
    probe = tree.probe(clock)
    tree.set("eth0", rx_bytes=2**width - 1_000, tx_errors=2**width - 1)
    probe.sample()
    clock.now += 0.5
    tree.set("eth0", rx_bytes=3_000, tx_errors=1)
    v = by_nic(probe.sample())["eth0"]
    assert v["rx_bits_per_second"] == pytest.approx(4_000 * 8 / 0.5)
    assert v["tx_errors_per_second"] == pytest.approx(2 / 0.5)


def test_wrap_faster_than_the_link_is_a_reset(tree: KernelTree) -> None:
    tree.nic("eth0", speed="10")  # 10 Mbit/s: 1.25 MB in a second, not 2 GB
    clock = ManualClock()
    probe = tree.probe(clock)
    tree.set("eth0", rx_bytes=2**32 - 2_000_000_000, tx_bytes=2**32 - 100_000)
    probe.sample()
    clock.now += 1.0
    tree.set("eth0", rx_bytes=1_000, tx_bytes=100_000)
    v = by_nic(probe.sample())["eth0"]
    assert "rx_bits_per_second" not in v
    assert v["tx_bits_per_second"] == pytest.approx(200_000 * 8)  # a wrap the link allows


def test_counter_delta_rules() -> None:
    assert counter_delta(10, 25) == 15
    assert counter_delta(2**32 - 5, 5) == 10
    assert counter_delta(2**64 - 5, 5) == 10
    assert counter_delta(2**40, 5) is None  # 64-bit counter went back: reset
    assert counter_delta(100, 5) is None  # a "wrap" of ~4 GiB: more than half the range
    assert counter_delta(2**32 - 5, 5, max_increase=9) is None


@given(before=st.integers(0, 2**64 - 1), grown=st.integers(0, 2**31),
       width=st.sampled_from([32, 64]))
def test_counter_delta_recovers_any_increase_up_to_half_a_32_bit_range(
        before: int, grown: int, width: int) -> None:
    before %= 2**width
    assert counter_delta(before, (before + grown) % 2**width) == grown


def test_recreated_interface_restarts_its_rates(tree: KernelTree) -> None:
    tree.nic("eth0")
    clock = ManualClock()
    probe = tree.probe(clock)
    tree.set("eth0", rx_bytes=1_000)
    probe.sample()
    clock.now += 1.0
    (tree.nic_dir("eth0") / "ifindex").write_text("77\n")
    tree.set("eth0", rx_bytes=900_000)  # grew, but it is a new device with the same name
    v = by_nic(probe.sample())["eth0"]
    assert not RATE_KEYS & set(v) and v["link_speed_bits_per_second"] == 1e9
    clock.now += 1.0
    tree.add("eth0", rx_bytes=100)
    assert by_nic(probe.sample())["eth0"]["rx_bits_per_second"] == pytest.approx(800)


def test_interface_that_vanishes_and_returns_is_primed_again(tree: KernelTree) -> None:
    tree.nic("eth0")
    tree.nic("eth1")
    clock = ManualClock()
    probe = tree.probe(clock)
    probe.sample()
    tree.remove("eth1")
    clock.now += 1.0
    assert set(by_nic(probe.sample())) == {"eth0"}
    tree.nic("eth1")
    tree.set("eth1", rx_bytes=10**9)
    clock.now += 1.0
    assert not RATE_KEYS & set(by_nic(probe.sample())["eth1"])


# --- which interfaces ---------------------------------------------------------------------


def host_with_everything(tree: KernelTree) -> None:
    tree.nic("lo", physical=False, speed=None)
    tree.nic("eth0", speed="25000", master="bond0")
    tree.nic("eth1", speed="25000", master="bond0")
    tree.nic("bond0", physical=False, speed="50000", bond=True)
    tree.nic("eth2", speed="1000", master="br0")  # a physical port of a bridge stays
    tree.nic("br0", physical=False, speed=None, bridge=True)
    tree.nic("docker0", physical=False, speed=None, bridge=True)
    tree.nic("veth1a2b", physical=False, speed="10000", master="docker0")
    tree.nic("eth2.100", physical=False, speed="1000")
    tree.nic("ib0", speed="200000")


def chosen(probe: NicProbe, clock: ManualClock) -> set[str]:
    probe.sample()
    clock.now += 1.0
    return set(by_nic(probe.sample()))


def test_default_reports_physical_and_bond_masters_only(tree: KernelTree) -> None:
    host_with_everything(tree)
    clock = ManualClock()
    probe = tree.probe(clock)
    assert chosen(probe, clock) == {"bond0", "eth2", "ib0"}
    reason = probe.check().reason
    for left_out in ("lo (loopback)", "eth0 (bond slave)", "br0 (bridge)",
                     "veth1a2b (virtual)", "eth2.100 (virtual)"):
        assert left_out in reason


def test_bond_speed_is_its_own_not_a_sum_with_slaves(tree: KernelTree) -> None:
    host_with_everything(tree)
    clock = ManualClock()
    probe = tree.probe(clock)
    probe.sample()
    clock.now += 1.0
    for slave in ("eth0", "eth1"):
        tree.add(slave, rx_bytes=1_000_000)
    tree.add("bond0", rx_bytes=2_000_000)
    v = by_nic(probe.sample())
    assert v["bond0"]["rx_bits_per_second"] == pytest.approx(16e6)
    assert v["bond0"]["link_speed_bits_per_second"] == 50e9
    assert "eth0" not in v and "eth1" not in v


def test_nic_enslaved_in_place_leaves_within_the_reclassify_time(tree: KernelTree) -> None:
    tree.nic("eth0")
    tree.nic("eth1")
    tree.nic("bond0", physical=False, bond=True)
    clock = ManualClock()
    probe = tree.probe(clock)
    assert chosen(probe, clock) == {"eth0", "eth1", "bond0"}
    (tree.nic_dir("eth1") / "master").symlink_to(Path("..") / "bond0")
    clock.now += 1.0
    assert "eth1" in by_nic(probe.sample())  # the choice is reused for a while
    clock.now += RECLASSIFY_SECONDS
    assert set(by_nic(probe.sample())) == {"eth0", "bond0"}


def test_include_by_name_and_pattern(tree: KernelTree) -> None:
    host_with_everything(tree)
    clock = ManualClock()
    probe = tree.probe(clock, include=["lo", "veth*", "eth0"])
    assert chosen(probe, clock) == {"bond0", "eth2", "ib0", "lo", "veth1a2b", "eth0"}


def test_exclude_wins_over_include_and_physical(tree: KernelTree) -> None:
    host_with_everything(tree)
    clock = ManualClock()
    probe = tree.probe(clock, include=["lo"], exclude=["lo", "ib*"])
    assert chosen(probe, clock) == {"bond0", "eth2"}
    assert "ib0 (excluded)" in probe.check().reason


def test_include_virtual_takes_all_but_bond_slaves(tree: KernelTree) -> None:
    host_with_everything(tree)
    clock = ManualClock()
    probe = tree.probe(clock, include_virtual=True)
    assert chosen(probe, clock) == {"lo", "bond0", "eth2", "br0", "docker0", "veth1a2b",
                                    "eth2.100", "ib0"}


def test_container_namespace_reports_its_default_route_interface(tree: KernelTree) -> None:
    tree.nic("lo", physical=False, speed=None)
    tree.nic("eth0", physical=False, speed="10000")  # a container's veth end
    tree.nic("tunl0", physical=False, speed=None)
    clock = ManualClock()
    assert chosen(tree.probe(clock), clock) == set()  # no route file: nothing to go by
    tree.default_route("eth0")
    clock = ManualClock()
    assert chosen(tree.probe(clock), clock) == {"eth0"}


def test_default_route_does_not_pull_in_virtuals_beside_a_physical_nic(
        tree: KernelTree) -> None:
    tree.nic("eth0")
    tree.nic("wg0", physical=False, speed=None)
    tree.default_route("wg0")
    clock = ManualClock()
    assert chosen(tree.probe(clock), clock) == {"eth0"}


def test_check_names_includes_that_match_nothing(tree: KernelTree) -> None:
    tree.nic("eth0")
    availability = tree.probe(ManualClock(), include=["eth9", "eth*"]).check()
    assert availability.usable
    assert "interfaces: eth0" in availability.reason
    assert "include names no present interface: eth9" in availability.reason


# --- host TCP ---------------------------------------------------------------------------


def test_tcp_retransmit_ratio_from_snmp(tree: KernelTree) -> None:
    clock = ManualClock()
    probe = tree.probe(clock)
    tree.tcp(retransmits=100, out_segments=50_000)
    primed = host_tcp(probe.sample())  # no rate yet; the kernel's counters as read
    assert primed is not None and dict(primed.values) == {"tcp_retransmits_total": 100,
                                                          "tcp_out_segments_total": 50_000}
    clock.now += 2.0
    tree.tcp(retransmits=130, out_segments=51_000)
    tcp = host_tcp(probe.sample())
    assert tcp is not None and tcp.ok and tcp.probe == "nic"
    assert dict(tcp.values) == pytest.approx({"tcp_retransmit_ratio": 0.03,
                                              "tcp_retransmits_per_second": 15.0,
                                              "tcp_out_segments_per_second": 500.0,
                                              "tcp_retransmits_total": 130,
                                              "tcp_out_segments_total": 51_000})


def test_tcp_nothing_sent_leaves_ratio_absent(tree: KernelTree) -> None:
    clock = ManualClock()
    probe = tree.probe(clock)
    probe.sample()
    clock.now += 1.0
    tcp = host_tcp(probe.sample())
    assert tcp is not None
    assert {k: v for k, v in tcp.values.items() if not k.endswith("_total")} == {
        "tcp_retransmits_per_second": 0.0, "tcp_out_segments_per_second": 0.0}


def test_tcp_missing_or_malformed_snmp(tree: KernelTree) -> None:
    (tree.proc / "net" / "snmp").unlink()
    clock = ManualClock()
    probe = tree.probe(clock)
    probe.sample()
    clock.now += 1.0
    assert host_tcp(probe.sample()) is None
    (tree.proc / "net" / "snmp").write_text("Tcp: OutSegs\nTcp: many\n")
    samples = probe.sample()
    bad = [s for s in samples if dict(s.labels) == {"scope": "host"}]
    assert len(bad) == 1 and not bad[0].ok
    assert "snmp" in (bad[0].error or "") and "\n" not in (bad[0].error or "")


# --- failures ---------------------------------------------------------------------------


def test_missing_net_dev_is_a_failed_sample_and_check_says_so(tmp_path: Path) -> None:
    probe = NicProbe(proc_root=tmp_path, sys_root=tmp_path, clock=ManualClock())
    availability = probe.check()
    assert not availability.usable and "net/dev" in availability.reason
    samples = probe.sample()
    assert len(samples) == 1 and not samples[0].ok
    assert "net/dev" in (samples[0].error or "")


def test_malformed_net_dev_is_a_failed_sample(tree: KernelTree) -> None:
    (tree.proc / "net" / "dev").write_text("h1\nh2\n  eth0: 1 2 3\n")
    samples = tree.probe(ManualClock()).sample()
    assert len(samples) == 1 and not samples[0].ok
    assert "eth0" in (samples[0].error or "")


def test_options_are_checked() -> None:
    assert create({"include": ["lo"]}).options.include == ("lo",)
    with pytest.raises(OptionError) as info:
        create({"include": "lo"})
    assert info.value.key == "include"
    with pytest.raises(OptionError, match="include"):
        create({"include": [""]})
    with pytest.raises(OptionError) as info:
        create({"interfaces": ["eth0"]})
    assert info.value.key == "interfaces"


# --- verbatim kernel files ---------------------------------------------------------------


def test_verbatim_linux_6_snapshot() -> None:
    dev = parse_net_dev((SNAPSHOT / "net" / "dev").read_text())
    assert set(dev) == {"lo", "ifb0", "ifb1", "eth0"}
    assert dev["eth0"].rx_bytes == 73375769 and dev["eth0"].tx_bytes == 181522
    assert dev["lo"].rx_bytes == dev["lo"].tx_bytes
    tcp = parse_snmp((SNAPSHOT / "net" / "snmp").read_text(), "Tcp")
    assert tcp["OutSegs"] == 258764 and tcp["RetransSegs"] == 27 and tcp["MaxConn"] == -1


# --- the real machine ---------------------------------------------------------------------


def test_real_machine_defaults_agree_with_psutil() -> None:
    probe = NicProbe()
    assert isinstance(probe, Probe)
    assert probe.check().usable
    probe.sample()
    time.sleep(0.2)
    samples = probe.sample()
    nics = by_nic(samples)
    assert "lo" not in nics
    stats = psutil.net_if_stats()
    assert set(nics) <= set(psutil.net_io_counters(pernic=True))
    for name, v in nics.items():
        assert {"rx_bits_per_second", "tx_bits_per_second"} <= set(v), name
        # psutil says 0 where the kernel does not know the speed
        if stats[name].speed > 0:
            assert v["link_speed_bits_per_second"] == stats[name].speed * 1e6
        else:
            assert "link_speed_bits_per_second" not in v and "rx_utilization_ratio" not in v
        assert all(x >= 0 for x in v.values())
    tcp = host_tcp(samples)
    assert tcp is not None and "tcp_out_segments_per_second" in tcp.values


def push_over_loopback(nbytes: int, timeout: float = 20.0) -> int:
    """Send ``nbytes`` over a TCP connection on 127.0.0.1; return what arrived."""
    received = 0
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(timeout)
        port = server.getsockname()[1]

        def sink() -> None:
            nonlocal received
            conn, _ = server.accept()
            with conn:
                conn.settimeout(timeout)
                while chunk := conn.recv(1 << 20):
                    received += len(chunk)

        reader = threading.Thread(target=sink)
        reader.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
                client.sendall(b"x" * nbytes)
        finally:
            reader.join(timeout)
    assert not reader.is_alive()
    return received


def timed_two_samples(probe: NicProbe, nbytes: int) -> tuple[list[Sample], float, float]:
    """Prime, push ``nbytes`` over loopback, sample again. Returns the second
    sample with the shortest and longest interval the probe could have measured."""
    outer_start = time.monotonic()
    probe.sample()
    inner_start = time.monotonic()
    assert push_over_loopback(nbytes) == nbytes
    inner_end = time.monotonic()
    samples = list(probe.sample())
    outer_end = time.monotonic()
    return samples, inner_end - inner_start, outer_end - outer_start


def test_real_loopback_traffic_shows_in_lo_when_included() -> None:
    nbytes = 20_000_000
    probe = NicProbe(Options(include=("lo",)))
    samples, _, longest = timed_two_samples(probe, nbytes)
    lo = by_nic(samples)["lo"]
    # other programs may use loopback too, so only the floor is certain here;
    # the namespaced test below checks the ceiling as well
    assert lo["rx_bits_per_second"] >= nbytes * 8 / longest
    assert lo["rx_bits_per_second"] == lo["tx_bits_per_second"]  # lo counts both alike
    assert "link_speed_bits_per_second" not in lo  # reading lo's speed fails with EINVAL


_IN_NAMESPACE = """
import json, sys
from ai_bottleneck.probes.nic import NicProbe, Options
from tests.test_nic_probe import by_nic, timed_two_samples
nbytes = int(sys.argv[1])
samples, shortest, longest = timed_two_samples(NicProbe(Options(include=("lo",))), nbytes)
print(json.dumps({"lo": by_nic(samples)["lo"], "shortest": shortest, "longest": longest,
                  "default": sorted(by_nic(NicProbe().sample()))}))
"""


@pytest.mark.root
def test_loopback_rate_in_a_private_namespace_is_bounded_both_ways() -> None:
    """In a namespace of its own, lo carries only this test's bytes: the rate has
    a floor (the payload) and a ceiling (payload plus TCP/IP headers and ACKs)."""
    nbytes = 20_000_000
    with netns_link() as link:
        res = subprocess.run(link.cmd([sys.executable, "-c", _IN_NAMESPACE, str(nbytes)]),
                             cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        lo = out["lo"]
        headroom = nbytes * 1.05 + 256_000  # headers of ~64 KiB segments, ACKs, handshake
        assert nbytes * 8 / out["longest"] <= lo["rx_bits_per_second"]
        assert lo["rx_bits_per_second"] <= headroom * 8 / out["shortest"]
        assert lo["tx_bits_per_second"] == lo["rx_bits_per_second"]
        assert link.ns_dev not in out["default"]  # the namespace's veth end is virtual


_SINK = """
import socket, sys
with socket.create_server((sys.argv[1], int(sys.argv[2]))) as s:
    s.settimeout(30)
    received = 0
    for _ in range(5):  # the first connection may be wait_for_port's empty one
        if received:
            break
        conn, _ = s.accept()
        with conn:
            conn.settimeout(30)
            while chunk := conn.recv(1 << 20):
                received += len(chunk)
"""


@pytest.mark.root
def test_veth_is_left_out_by_default_and_measured_when_named() -> None:
    nbytes = 5_000_000
    port = 18000 + os.getpid() % 1000
    with netns_link() as link:
        default = NicProbe()
        named = NicProbe(Options(include=(link.host_dev,)))
        assert f"{link.host_dev} (virtual)" in default.check().reason
        sink = link.popen([sys.executable, "-c", _SINK, link.ns_addr, str(port)])
        try:
            wait_for_port(link, link.ns_addr, port)
            outer_start = time.monotonic()
            for probe in (default, named):
                probe.sample()
            with socket.create_connection((link.ns_addr, port), timeout=20) as client:
                client.sendall(b"y" * nbytes)
            assert sink.wait(timeout=30) == 0
            samples_default, samples_named = default.sample(), named.sample()
            longest = time.monotonic() - outer_start
        finally:
            if sink.poll() is None:
                sink.kill()
                sink.wait(timeout=10)
        assert link.host_dev not in by_nic(samples_default)
        veth = by_nic(samples_named)[link.host_dev]
        # the counter saw at least the payload (frames add headers on top)
        assert veth["tx_bits_per_second"] >= nbytes * 8 / longest
        assert veth["rx_bits_per_second"] < veth["tx_bits_per_second"]  # only ACKs come back
        assert veth["link_speed_bits_per_second"] > 0  # veth reports a nominal speed


def test_raw_counters_come_as_the_kernel_prints_them(tree: KernelTree) -> None:
    tree.nic("eth0", speed="1000")
    tree.set("eth0", rx_bytes=2**40 + 5, tx_bytes=77, rx_packets=123_456, tx_packets=321,
             rx_drops=4, tx_drops=3, rx_errors=2, tx_errors=1)
    clock = ManualClock()
    probe = tree.probe(clock)
    for _ in range(2):  # the priming pass and the next carry them alike
        v = by_nic(probe.sample(), totals=True)["eth0"]
        assert {k: v[k] for k in RAW_TOTALS} == {
            "rx_bytes_total": 2**40 + 5, "tx_bytes_total": 77, "rx_packets_total": 123_456,
            "tx_packets_total": 321, "rx_drops_total": 4, "tx_drops_total": 3,
            "rx_errors_total": 2, "tx_errors_total": 1}
        clock.now += 1.0
