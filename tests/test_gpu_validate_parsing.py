"""Reading nvidia-smi's output for the validation run (tests/gpu/smi.py), on text in the
shapes nvidia-smi prints: CSV with a unit suffix in the header, `[N/A]` for values a
GPU lacks, hexadecimal clock-event masks, Active / Not Active flags, `dmon` tables."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.gpu import overhead, smi

MIB = 2**20

HELP = '''List of valid properties to query for the switch "--query-gpu=":

"timestamp"
The timestamp of when the query was made in format "YYYY/MM/DD HH:MM:SS.msec".

"name" or "gpu_name"
The official product name of the GPU.

"utilization.gpu"
Percent of time over the past sample period during which one or more kernels was executing.

"memory.used"
Total memory allocated by active contexts.

"clocks_throttle_reasons.active"
Bitmask of active clock throttle reasons.

"clocks_throttle_reasons.gpu_idle"
Nothing is running on the GPU.
'''

QUERY = """timestamp, name, utilization.gpu [%], memory.used [MiB], memory.total [MiB], \
power.draw [W], power.draw.instant [W], clocks_event_reasons.active, \
clocks_event_reasons.gpu_idle, clocks_event_reasons.sw_power_cap, temperature.gpu
2026/10/28 10:15:02.345, NVIDIA H200, 97, 81234, 143771, 612.40, [N/A], 0x0000000000000004, \
Not Active, Active, 61
"""


def test_the_fields_this_nvidia_smi_knows_decide_what_is_asked() -> None:
    known = smi.known_fields(HELP)
    assert {"timestamp", "name", "gpu_name", "utilization.gpu", "memory.used",
            "clocks_throttle_reasons.active"} <= known
    chosen = smi.choose_fields(known)
    # an older driver knows only the old name: asked under it, reported under the new one
    assert chosen["clocks_event_reasons.active"] == "clocks_throttle_reasons.active"
    assert chosen["clocks_event_reasons.gpu_idle"] == "clocks_throttle_reasons.gpu_idle"
    assert "power.draw" not in chosen and "memory.total" not in chosen
    assert chosen["name"] == "name" and chosen["timestamp"] == "timestamp"


def test_query_csv_drops_the_unit_suffix_and_keeps_na_as_no_value() -> None:
    (row,) = smi.query_csv(QUERY)
    assert row["utilization.gpu"] == "97" and row["memory.total"] == "143771"
    assert row["name"] == "NVIDIA H200"
    assert smi.number(row["power.draw.instant"]) is None
    assert smi.number("[Not Supported]") is None and smi.number("95 %") == 95.0
    assert smi.hex_mask(row["clocks_event_reasons.active"]) == 4.0
    assert smi.active_flag("Not Active") == 0.0 and smi.active_flag("Active") == 1.0
    assert smi.active_flag("[N/A]") is None


def test_each_value_is_converted_to_the_probes_unit_and_compared() -> None:
    (row,) = smi.query_csv(QUERY)
    chosen = {f: f for f in row}
    ours = {"utilization_ratio": 0.95, "memory_used_bytes": 81234.0 * MIB,
            "memory_total_bytes": 143771.0 * MIB + 100 * MIB, "power_watts": 610.0,
            "clocks_event_reasons_bitmask": 4.0, "clocks_event_gpu_idle_flag": 0.0,
            "clocks_event_sw_power_cap_flag": 1.0, "temperature_celsius": 65.0}
    rows = {(r["value"], r["nvidia_smi_field"]): r for r in smi.compare(
        "idle", ours, {"name": "NVIDIA H200"}, row, chosen)}
    assert rows[("name", "name")]["agree"] is True
    assert rows[("utilization_ratio", "utilization.gpu")]["nvidia_smi"] == pytest.approx(0.97)
    assert rows[("utilization_ratio", "utilization.gpu")]["agree"] is True
    assert rows[("memory_used_bytes", "memory.used")]["agree"] is True
    assert rows[("memory_total_bytes", "memory.total")]["agree"] is False  # 100 MiB apart
    assert rows[("power_watts", "power.draw")]["agree"] is True
    assert rows[("power_watts", "power.draw.instant")]["agree"] is None  # [N/A]
    assert rows[("clocks_event_reasons_bitmask", "clocks_event_reasons.active")]["agree"]
    assert rows[("clocks_event_sw_power_cap_flag", "clocks_event_reasons.sw_power_cap")][
        "agree"] is True
    assert rows[("temperature_celsius", "temperature.gpu")]["agree"] is False  # 4 degrees
    missing = rows[("sm_clock_hertz", "clocks.sm")]
    assert missing["agree"] is None and "no such field" in str(missing["note"])


def test_dmon_tables_give_pcie_and_gpm_columns() -> None:
    pcie = "# gpu   rxpci   txpci \n# Idx    MB/s    MB/s \n    0     123      45 \n"
    columns, rows = smi.dmon(pcie)
    assert columns == ["gpu", "rxpci", "txpci"] and rows == [
        {"gpu": "0", "rxpci": "123", "txpci": "45"}]
    gpm = "# gpu  smUtil  smOcc  anyTensor  dramBw\n# Idx  %  %  %  %\n    0  97  21  88  -\n"
    assert smi.gpm_from_dmon(gpm, [2, 3, 5, 10]) == {2: 97.0, 3: 21.0, 5: 88.0, 10: None}
    assert smi.gpm_from_dmon(gpm, [2, 3]) == {}  # columns not as asked: nothing guessed
    rows_out = smi.compare("matmul", {"sm_active_ratio": 0.95, "pcie_rx_bytes_per_second":
                                      1.2e8}, {}, {}, {}, pcie=pcie, gpm=gpm)
    by_value = {r["value"]: r for r in rows_out}
    assert by_value["sm_active_ratio"]["nvidia_smi"] == pytest.approx(0.97)
    assert by_value["sm_active_ratio"]["agree"] is True
    assert by_value["pcie_rx_bytes_per_second"]["nvidia_smi"] == 123e6


def test_cpu_seconds_come_from_proc_and_stop_with_the_process() -> None:
    # The child burns 0.5 s of CPU, says so, then waits: /proc is read once it has spoken, so
    # the figure is final. /proc counts whole clock ticks for user and system apart, so up to
    # two ticks fall off each of the process's own sum.
    proc = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                             "while time.process_time() - t < 0.5: pass\n"
                             "print('done', flush=True)\ninput()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "done\n"
        figures = overhead.cpu_seconds(proc.pid)
        assert figures is not None
        assert figures["total"] == pytest.approx(figures["user"] + figures["system"])
        assert 0.5 - 2 / overhead.TICKS <= figures["total"] < 5.0
    finally:
        proc.communicate("\n", timeout=30)
    assert overhead.cpu_seconds(proc.pid) is None
    assert overhead.cpu_seconds(os.getpid()) is not None
