"""Host probe: against the real machine (checked against psutil), a verbatim
snapshot of a Linux 6 /proc, and per-test /proc trees for the edge cases."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from ai_bottleneck.probes.base import Probe
from ai_bottleneck.probes.host import HostProbe, create
from ai_bottleneck.probes.options import OptionError
from ai_bottleneck.probes.procfs import parse_cpu_ticks, parse_meminfo

SNAPSHOT = Path(__file__).parent / "data" / "proc" / "linux-6-snapshot"
PSI_KEYS = {f"{r}_pressure_{k}_ratio" for r in ("cpu", "io", "memory") for k in ("some", "full")}


class ManualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def psi_text(some: tuple[float, int], full: tuple[float, int] | None) -> str:
    lines = [f"some avg10={some[0]:.2f} avg60=0.00 avg300=0.00 total={some[1]}"]
    if full is not None:
        lines.append(f"full avg10={full[0]:.2f} avg60=0.00 avg300=0.00 total={full[1]}")
    return "\n".join(lines) + "\n"


class ProcTree:
    """A /proc of the files the host probe reads, rewritten between samples.

    Core ticks: (user, nice, system, idle, iowait, irq, softirq, steal)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.cores: dict[int, list[int]] = {0: [100, 0, 50, 1000, 10, 0, 0, 0],
                                            1: [200, 0, 20, 900, 30, 0, 0, 0]}
        self.write_stat()
        self.write("meminfo", "MemTotal:       16000000 kB\nMemFree:         2000000 kB\n"
                              "MemAvailable:    4000000 kB\nBuffers:          100000 kB\n")
        self.write("loadavg", "3.00 2.00 1.00 2/345 6789\n")
        self.psi = {"cpu": psi_text((12.5, 5_000_000), (0.0, 0)),
                    "io": psi_text((4.0, 1_000_000), (2.0, 800_000)),
                    "memory": psi_text((0.0, 0), (0.0, 0))}
        self.write_psi()

    def write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def write_stat(self) -> None:
        total = [sum(c[i] for c in self.cores.values()) for i in range(8)]
        lines = ["cpu  " + " ".join(map(str, [*total, 0, 0]))]
        lines += [f"cpu{n} " + " ".join(map(str, [*c, 0, 0])) for n, c in self.cores.items()]
        lines += ["intr 12345 0 0", "ctxt 67890", "btime 1700000000", "processes 4242"]
        self.write("stat", "\n".join(lines) + "\n")

    def write_psi(self) -> None:
        for resource, text in self.psi.items():
            self.write(f"pressure/{resource}", text)

    def tick(self, core: int, *, busy: int = 0, idle: int = 0, iowait: int = 0,
             steal: int = 0) -> None:
        c = self.cores[core]
        c[0] += busy
        c[3] += idle
        c[4] += iowait
        c[7] += steal


@pytest.fixture
def tree(tmp_path: Path) -> ProcTree:
    return ProcTree(tmp_path / "proc")


def one(probe: HostProbe) -> dict[str, float]:
    samples = probe.sample()
    assert len(samples) == 1
    s = samples[0]
    assert s.ok, s.error
    assert s.probe == "host" and dict(s.labels) == {}
    return dict(s.values)


# --- the first sample primes; the second has rates ----------------------------


def test_first_sample_gives_what_one_reading_can(tree: ProcTree) -> None:
    probe = HostProbe(proc_root=tree.root, clock=ManualClock(), wall_clock=lambda: 5.0)
    samples = probe.sample()
    assert samples[0].t == 5.0
    v = dict(samples[0].values)
    assert "cpu_utilization_ratio" not in v and "cpu_busiest_core_ratio" not in v
    assert v["cpu_count"] == 2
    assert v["memory_used_ratio"] == pytest.approx((16_000_000 - 4_000_000) / 16_000_000)
    assert v["load1_per_cpu"] == pytest.approx(3.0 / 2)
    # no previous PSI total yet: the kernel's own 10-second average
    assert v["cpu_pressure_some_ratio"] == pytest.approx(0.125)
    assert v["io_pressure_some_ratio"] == pytest.approx(0.04)
    assert v["io_pressure_full_ratio"] == pytest.approx(0.02)
    assert v["cpu_pressure_full_ratio"] == 0.0  # the line is there: zero is a reading


def test_second_sample_has_cpu_and_exact_pressure_over_the_interval(tree: ProcTree) -> None:
    clock = ManualClock()
    probe = HostProbe(proc_root=tree.root, clock=clock)
    one(probe)
    tree.tick(0, busy=60, idle=40)
    tree.tick(1, busy=10, idle=90)
    tree.write_stat()
    clock.now += 2.0
    # 0.5 s of "some" CPU stall and 1.5 s of "some" IO stall in 2 s; avg10 says otherwise
    tree.psi["cpu"] = psi_text((99.0, 5_500_000), (0.0, 0))
    tree.psi["io"] = psi_text((99.0, 2_500_000), (99.0, 800_000))
    tree.write_psi()
    v = one(probe)
    assert v["cpu_utilization_ratio"] == pytest.approx(70 / 200)
    assert v["cpu_busiest_core_ratio"] == pytest.approx(0.6)
    assert v["cpu_pressure_some_ratio"] == pytest.approx(0.25)
    assert v["io_pressure_some_ratio"] == pytest.approx(0.75)
    assert v["io_pressure_full_ratio"] == 0.0
    assert v["memory_pressure_some_ratio"] == 0.0


def test_iowait_counts_idle_and_steal_counts_busy(tree: ProcTree) -> None:
    probe = HostProbe(proc_root=tree.root, clock=ManualClock())
    one(probe)
    tree.tick(0, iowait=50, idle=50)
    tree.tick(1, steal=30, idle=70)
    tree.write_stat()
    v = one(probe)
    assert v["cpu_busiest_core_ratio"] == pytest.approx(0.3)
    assert v["cpu_utilization_ratio"] == pytest.approx(30 / 200)


def test_iowait_going_backwards_never_gives_a_ratio_outside_0_1(tree: ProcTree) -> None:
    probe = HostProbe(proc_root=tree.root, clock=ManualClock())
    one(probe)
    tree.cores[0][4] -= 10  # proc(5): iowait can decrease
    tree.tick(0, busy=5, idle=5)
    tree.write_stat()
    v = one(probe)
    assert v["cpu_busiest_core_ratio"] == pytest.approx(0.5)
    assert 0.0 <= v["cpu_utilization_ratio"] <= 1.0


def test_no_tick_passed_leaves_cpu_absent(tree: ProcTree) -> None:
    probe = HostProbe(proc_root=tree.root, clock=ManualClock())
    one(probe)
    v = one(probe)
    assert "cpu_utilization_ratio" not in v and "cpu_busiest_core_ratio" not in v
    assert v["cpu_count"] == 2


def test_a_core_going_offline_is_left_out_of_the_busiest(tree: ProcTree) -> None:
    probe = HostProbe(proc_root=tree.root, clock=ManualClock())
    one(probe)
    tree.tick(0, busy=20, idle=80)
    del tree.cores[1]
    tree.write_stat()
    v = one(probe)
    assert v["cpu_count"] == 1
    assert v["cpu_busiest_core_ratio"] == pytest.approx(0.2)
    assert v["load1_per_cpu"] == pytest.approx(3.0)


# --- pressure stall information: absent is not zero ---------------------------------


def test_kernel_without_psi_leaves_pressure_absent(tree: ProcTree) -> None:
    for resource in tree.psi:
        (tree.root / "pressure" / resource).unlink()
    (tree.root / "pressure").rmdir()
    probe = HostProbe(proc_root=tree.root, clock=ManualClock())
    availability = probe.check()
    assert availability.usable and "no pressure stall information" in availability.reason
    v = one(probe)
    assert not PSI_KEYS & set(v)
    assert v["memory_used_ratio"] > 0 and v["cpu_count"] == 2


def test_cpu_full_line_missing_on_older_kernels_is_absent(tree: ProcTree) -> None:
    tree.psi["cpu"] = psi_text((3.0, 100), None)
    tree.write_psi()
    v = one(HostProbe(proc_root=tree.root, clock=ManualClock()))
    assert "cpu_pressure_full_ratio" not in v
    assert v["cpu_pressure_some_ratio"] == pytest.approx(0.03)
    assert v["memory_pressure_full_ratio"] == 0.0


def test_unreadable_pressure_file_is_absent(tree: ProcTree) -> None:
    # PSI compiled in but disabled (psi=0) fails the read; a directory fails it too
    (tree.root / "pressure" / "memory").unlink()
    (tree.root / "pressure" / "memory").mkdir()
    probe = HostProbe(proc_root=tree.root, clock=ManualClock())
    assert "memory" in probe.check().reason
    v = one(probe)
    assert "memory_pressure_some_ratio" not in v and "memory_pressure_full_ratio" not in v
    assert "cpu_pressure_some_ratio" in v


def test_pressure_total_going_backwards_falls_back_to_avg10(tree: ProcTree) -> None:
    clock = ManualClock()
    probe = HostProbe(proc_root=tree.root, clock=clock)
    one(probe)
    clock.now += 1.0
    tree.psi["cpu"] = psi_text((7.0, 10), (0.0, 0))
    tree.write_psi()
    assert one(probe)["cpu_pressure_some_ratio"] == pytest.approx(0.07)


def test_no_time_passed_falls_back_to_avg10(tree: ProcTree) -> None:
    probe = HostProbe(proc_root=tree.root, clock=ManualClock())
    one(probe)
    tree.psi["io"] = psi_text((40.0, 9_000_000), (0.0, 800_000))
    tree.write_psi()
    assert one(probe)["io_pressure_some_ratio"] == pytest.approx(0.4)


# --- bad or missing files: one line, never a traceback --------------------------


def test_missing_stat_leaves_cpu_out_and_check_says_why(tree: ProcTree) -> None:
    (tree.root / "stat").unlink()
    probe = HostProbe(proc_root=tree.root, clock=ManualClock())
    availability = probe.check()
    assert not availability.usable
    assert str(tree.root / "stat") in availability.reason and "\n" not in availability.reason
    v = one(probe)
    assert "cpu_count" not in v and "load1_per_cpu" not in v
    assert v["memory_used_ratio"] == pytest.approx(0.75)


def test_nothing_readable_is_a_failed_sample_naming_the_files(tmp_path: Path) -> None:
    probe = HostProbe(proc_root=tmp_path / "nowhere", clock=ManualClock())
    samples = probe.sample()
    assert len(samples) == 1 and not samples[0].ok
    error = samples[0].error or ""
    assert "stat" in error and "meminfo" in error and "\n" not in error
    assert samples[0].values == {}


def test_malformed_files_do_not_raise(tree: ProcTree) -> None:
    tree.write("meminfo", "MemTotal: lots kB\n")
    tree.write("pressure/io", "some avg10=x\n")
    tree.write("stat", "cpu 1 2\n")
    probe = HostProbe(proc_root=tree.root, clock=ManualClock())
    v = one(probe)
    assert "memory_used_ratio" not in v and "cpu_count" not in v
    assert "io_pressure_some_ratio" not in v
    assert v["cpu_pressure_some_ratio"] == pytest.approx(0.125)


def test_meminfo_without_memavailable_leaves_memory_absent(tree: ProcTree) -> None:
    tree.write("meminfo", "MemTotal:       16000000 kB\nMemFree:         2000000 kB\n")
    assert "memory_used_ratio" not in one(HostProbe(proc_root=tree.root, clock=ManualClock()))


# --- verbatim kernel files -----------------------------------------------------------


def test_verbatim_linux_6_snapshot() -> None:
    probe = HostProbe(proc_root=SNAPSHOT, clock=ManualClock())
    assert probe.check().usable
    v = one(probe)
    # figures from the snapshot's own files
    assert v["cpu_count"] == 2
    assert v["memory_used_ratio"] == pytest.approx((24684084 - 24316308) / 24684084)
    assert v["load1_per_cpu"] == pytest.approx(
        float((SNAPSHOT / "loadavg").read_text().split()[0]) / 2)
    assert set(v) >= PSI_KEYS
    ticks = parse_cpu_ticks((SNAPSHOT / "stat").read_text())
    assert ticks["cpu0"] == (2851, 0, 1595, 68532, 34, 0, 69, 8)
    assert parse_meminfo((SNAPSHOT / "meminfo").read_text())["MemTotal"] == 24684084 * 1024


# --- the real machine --------------------------------------------------------------


def test_real_machine_agrees_with_psutil() -> None:
    probe = HostProbe()
    assert isinstance(probe, Probe)
    assert probe.check().usable
    v = one(probe)
    assert v["cpu_count"] == psutil.cpu_count(logical=True)
    assert v["memory_used_ratio"] == pytest.approx(psutil.virtual_memory().percent / 100,
                                                   abs=0.05)
    assert v["load1_per_cpu"] == pytest.approx(os.getloadavg()[0] / v["cpu_count"], abs=0.5)
    try:
        has_psi = bool(Path("/proc/pressure/cpu").read_text())
    except OSError:
        has_psi = False
    assert ("cpu_pressure_some_ratio" in v) == has_psi
    for value in v.values():
        assert value >= 0


def test_real_cpu_work_shows_in_utilization() -> None:
    """Spin this process for a bounded 0.5 s between two samples: the machine's
    busy share over the interval is at least this process's own share."""
    probe = HostProbe()
    outer_start = time.monotonic()
    one(probe)
    cpu_start = time.process_time()
    spin_until = time.monotonic() + 0.5
    n = 0
    while time.monotonic() < spin_until:
        n += 1
    own_cpu_seconds = time.process_time() - cpu_start
    v = one(probe)
    interval = time.monotonic() - outer_start
    ncpu = v["cpu_count"]
    own_share = own_cpu_seconds / (interval * ncpu)
    # /proc/stat counts in 10 ms ticks: allow a few of them each way
    assert v["cpu_utilization_ratio"] >= own_share - 0.05
    assert v["cpu_busiest_core_ratio"] >= v["cpu_utilization_ratio"] - 0.02
    assert 0 <= v["cpu_utilization_ratio"] <= 1 and v["cpu_busiest_core_ratio"] <= 1
    assert n > 0


# --- options and entry point ------------------------------------------------------


def test_create_takes_no_options_and_names_an_unknown_key() -> None:
    probe = create({})
    assert probe.name == "host" and probe.active is False
    assert probe.interval_seconds is None and probe.timeout_seconds > 0
    with pytest.raises(OptionError, match="interval") as info:
        create({"interval": "5s"})
    assert info.value.key == "interval"


# --- raw counters: CPU time per mode and PSI stall time, as the kernel counts them ------


def test_raw_cpu_seconds_and_stall_seconds_on_every_sample(tree: ProcTree) -> None:
    import os

    hz = os.sysconf("SC_CLK_TCK")
    clock = ManualClock()
    probe = HostProbe(proc_root=tree.root, clock=clock)
    first = one(probe)  # the priming pass carries them too
    # all CPUs: user 100+200, system 50+20, idle 1000+900, iowait 10+30 ticks
    assert first["cpu_user_seconds_total"] == pytest.approx(300 / hz)
    assert first["cpu_system_seconds_total"] == pytest.approx(70 / hz)
    assert first["cpu_idle_seconds_total"] == pytest.approx(1900 / hz)
    assert first["cpu_iowait_seconds_total"] == pytest.approx(40 / hz)
    assert first["cpu_steal_seconds_total"] == 0.0
    assert first["cpu_pressure_some_seconds_total"] == pytest.approx(5.0)
    assert first["io_pressure_full_seconds_total"] == pytest.approx(0.8)
    assert first["memory_pressure_some_seconds_total"] == 0.0
    tree.tick(0, busy=60, idle=40)
    tree.write_stat()
    tree.psi["cpu"] = psi_text((99.0, 5_500_000), (0.0, 0))
    tree.write_psi()
    clock.now += 1.0
    second = one(probe)
    assert second["cpu_user_seconds_total"] == pytest.approx(360 / hz)
    assert second["cpu_idle_seconds_total"] == pytest.approx(1940 / hz)
    assert second["cpu_pressure_some_seconds_total"] == pytest.approx(5.5)


def test_raw_cpu_seconds_match_the_real_proc_stat() -> None:
    import os

    probe = HostProbe()
    values = one(probe)
    with open("/proc/stat", encoding="ascii") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    # read after the probe: every mode can only have grown, by well under a minute
    for mode, after in zip(("user", "nice", "system", "idle", "iowait", "irq", "softirq",
                            "steal"), ticks, strict=True):
        got = values[f"cpu_{mode}_seconds_total"]
        assert got <= after / hz + 1e-9
        assert after / hz - got < 60 * (os.cpu_count() or 1)
