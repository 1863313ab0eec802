"""A stand-in for nvidia-smi in the validation dry run: the GPUs of the fake NVML state file.

The dry run of tests/gpu/validate.py puts an ``nvidia-smi`` that runs this module
first on PATH. It reads the same state file as the fake NVML backend
(AI_BOTTLENECK_FAKE_NVML) and prints the shapes the real program prints for the
calls the validation makes: ``--help-query-gpu``; ``--query-gpu=...
--format=csv[,noheader][,nounits] [-l N]``; ``--query-compute-apps=...``;
``dmon -c N -s t`` and ``dmon -c N --gpm-metrics IDS``. An unknown field is
refused for the whole query, as nvidia-smi does. It stands in for the program's
output formats only; the values are whatever the fake state says.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from tests.fakes.nvml_state import STATE_ENV, FakeGpu, read_state

MIB = 2**20
CALLS_ENV = "AI_BOTTLENECK_STANDIN_SMI_CALLS"
_FLAG_BITS = {"gpu_idle": 0x1, "applications_clocks_setting": 0x2, "sw_power_cap": 0x4,
              "hw_slowdown": 0x8, "sync_boost": 0x10, "sw_thermal_slowdown": 0x20,
              "hw_thermal_slowdown": 0x40, "hw_power_brake_slowdown": 0x80,
              "display_clock_setting": 0x100}
_GPM_KEYS = {2: "sm_util", 3: "sm_occupancy", 5: "tensor_util", 10: "dram_bw_util"}

Field = tuple[str, Callable[[FakeGpu], str]]  # unit, value as printed with nounits


def _flag(bit: int) -> Callable[[FakeGpu], str]:
    return lambda g: "Active" if g.clocks_event_reasons & bit else "Not Active"


FIELDS: dict[str, Field] = {
    "timestamp": ("", lambda g: datetime.now().strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]),
    "name": ("", lambda g: g.name),
    "uuid": ("", lambda g: g.uuid),
    "pci.bus_id": ("", lambda g: g.pci_bus_id),
    "driver_version": ("", lambda g: "000.00.00"),
    "vbios_version": ("", lambda g: "00.00.00.00.00"),
    "compute_cap": ("", lambda g: "9.0"),
    "pstate": ("", lambda g: "P0"),
    "persistence_mode": ("", lambda g: "Enabled"),
    "compute_mode": ("", lambda g: "Default"),
    "mig.mode.current": ("", lambda g: "[N/A]"),
    "utilization.gpu": ("%", lambda g: f"{round(g.utilization_percent)}"),
    "memory.used": ("MiB", lambda g: f"{g.memory_used_bytes // MIB}"),
    "memory.total": ("MiB", lambda g: f"{g.memory_total_bytes // MIB}"),
    "memory.reserved": ("MiB", lambda g: f"{g.memory_reserved_bytes // MIB}"),
    "power.draw": ("W", lambda g: f"{g.power_milliwatts / 1000:.2f}"),
    "power.draw.instant": ("W", lambda g: f"{g.power_milliwatts / 1000:.2f}"),
    "power.draw.average": ("W", lambda g: f"{g.power_milliwatts / 1000:.2f}"),
    "power.limit": ("W", lambda g: f"{g.power_limit_milliwatts / 1000:.2f}"),
    "enforced.power.limit": ("W", lambda g: f"{g.power_limit_milliwatts / 1000:.2f}"),
    "temperature.gpu": ("", lambda g: f"{g.temperature_celsius}"),
    "clocks.sm": ("MHz", lambda g: f"{g.sm_clock_mhz}"),
    "clocks.max.sm": ("MHz", lambda g: f"{g.sm_clock_max_mhz}"),
    "clocks_event_reasons.active": ("", lambda g: f"0x{g.clocks_event_reasons:016X}"),
    **{f"clocks_event_reasons.{name}": ("", _flag(bit)) for name, bit in _FLAG_BITS.items()},
}


def _gpus() -> list[FakeGpu]:
    import os

    state = read_state(os.environ[STATE_ENV])
    return [FakeGpu.from_json(g) for g in state.get("gpus", [])]


def _help() -> None:
    for name in FIELDS:
        print(f'"{name}"\n{name} of the GPU (stand-in)\n')


def _query(fields: list[str], fmt: set[str], loop: float | None) -> int:
    unknown = [f for f in fields if f not in FIELDS]
    if unknown:
        print(f'Field "{unknown[0]}" is not a valid field to query.\n', file=sys.stderr)
        return 2
    nounits = "nounits" in fmt
    while True:
        if "noheader" not in fmt:
            print(", ".join(f"{f} [{FIELDS[f][0]}]" if FIELDS[f][0] else f for f in fields))
        for gpu in _gpus():
            cells = []
            for f in fields:
                unit, value = FIELDS[f]
                text = value(gpu)
                cells.append(text if nounits or not unit else f"{text} {unit}")
            print(", ".join(cells), flush=True)
        if loop is None:
            return 0
        fmt = fmt | {"noheader"}  # -l prints the header once
        time.sleep(loop)


def _apps(fields: list[str], fmt: set[str]) -> int:
    if "noheader" not in fmt:
        print(", ".join({"used_memory": "used_gpu_memory [MiB]"}.get(f, f) for f in fields))
    for gpu in _gpus():
        for p in gpu.processes:
            values: dict[str, Any] = {"pid": p.pid, "process_name": p.name, "used_memory": (
                "[N/A]" if p.used_memory_bytes is None else p.used_memory_bytes // MIB),
                "gpu_uuid": gpu.uuid}
            print(", ".join(str(values.get(f, "[N/A]")) for f in fields))
    return 0


def _gpm_cells(ids: list[int], gpu: FakeGpu) -> str:
    gpm = gpu.gpm
    if gpm is None:
        return " ".join("      -" for _ in ids)
    return " ".join(f"{gpm.get(_GPM_KEYS.get(m, ''), 0):7.0f}" for m in ids)


def _pcie_cells(gpu: FakeGpu) -> str:
    # NVML's KB/s are KiB/s; dmon prints MB/s
    return (f"{gpu.pcie_rx_kilobytes_per_second * 1024 // 10**6:7d} "
            f"{gpu.pcie_tx_kilobytes_per_second * 1024 // 10**6:7d}")


def _dmon(args: list[str]) -> int:
    count = int(args[args.index("-c") + 1]) if "-c" in args else 1
    ids: list[int] = []
    if "--gpm-metrics" in args:
        ids = [int(x) for x in args[args.index("--gpm-metrics") + 1].split(",")]
        print("# gpu " + " ".join(f"gpm:{i:<3}" for i in ids))
        print("# Idx " + " ".join("      %" for _ in ids))
    else:
        print("# gpu   rxpci   txpci")
        print("# Idx    MB/s    MB/s")
    for _ in range(count):
        time.sleep(0.2)  # the real one samples for a second; the stand-in need not
        for i, gpu in enumerate(_gpus()):
            cells = _gpm_cells(ids, gpu) if ids else _pcie_cells(gpu)
            print(f"{i:>5} {cells}", flush=True)
    return 0


def _note_call(argv: list[str]) -> None:
    """Every call goes into CALLS_ENV's file, so the dry run can show that the validation
    only ever asks nvidia-smi to read."""
    import json
    import os

    path = os.environ.get(CALLS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(argv) + "\n")


def main(argv: list[str]) -> int:
    _note_call(argv)
    if argv and argv[0] == "dmon":
        return _dmon(argv[1:])
    if "--help-query-gpu" in argv:
        _help()
        return 0
    fmt: set[str] = set()
    loop = None
    query: list[str] = []
    apps: list[str] = []
    for i, arg in enumerate(argv):
        if arg.startswith("--format="):
            fmt = set(arg.split("=", 1)[1].split(","))
        elif arg.startswith("--query-gpu="):
            query = arg.split("=", 1)[1].split(",")
        elif arg.startswith("--query-compute-apps="):
            apps = arg.split("=", 1)[1].split(",")
        elif arg in ("-l", "--loop"):
            loop = float(argv[i + 1])
    if "csv" not in fmt:
        print("stand-in nvidia-smi: only --format=csv is implemented", file=sys.stderr)
        return 2
    if apps:
        return _apps(apps, fmt)
    return _query(query, fmt, loop)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
