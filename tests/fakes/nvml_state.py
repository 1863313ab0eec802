"""Scripted GPU readings for the fake NVML, and the state file that carries them.

A process whose GPU probe is built with
``AI_BOTTLENECK_NVML_BACKEND="tests.fakes.fake_nvml:from_env"`` reads its
GPUs from the JSON file named by ``AI_BOTTLENECK_FAKE_NVML`` and re-reads it
whenever it changes (one stat per NVML call), so a test or the scenario lab
changes readings live. Write it with ``write_state`` / ``update_gpu`` (atomic
replace; one writer at a time). Schema::

    {
      "library_missing": false,          # true: nvmlInit raises LibraryNotFound
      "init_error": null,                # or an NVML error code nvmlInit raises
      "missing_symbols": [],             # C functions this "driver" lacks
      "gpus": [
        {
          "name": "NVIDIA H100 80GB HBM3",
          "uuid": "GPU-...", "pci_bus_id": "00000000:18:00.0",
          "utilization_percent": 95, "memory_utilization_percent": 40,
          "memory_used_bytes": 70000000000, "memory_total_bytes": 85899345920,
          "memory_reserved_bytes": 536870912,
          "power_milliwatts": 650000, "power_limit_milliwatts": 700000,
          "temperature_celsius": 60, "sm_clock_mhz": 1980, "sm_clock_max_mhz": 1980,
          "clocks_event_reasons": 0,
          "pcie_rx_kilobytes_per_second": 1024, "pcie_tx_kilobytes_per_second": 512,
          "gpm": {"sm_util": 80, "sm_occupancy": 40, "tensor_util": 60,
                  "dram_bw_util": 30},   # or null: GPM unsupported (pre-Hopper)
          "lost": false, "lose_after_calls": null,
          "unsupported": ["nvmlDeviceGetPowerUsage"],   # these raise NotSupported
          "sample_period_seconds": 0.1667,              # or null: no samples
          "processes": [{"pid": 1234, "name": "python3",
                         "used_memory_bytes": 60000000000}],
          "xid_events": [79],                           # XIDs the driver reports, in order
          "ecc": {"corrected_volatile": 0, "uncorrected_volatile": 0,
                  "corrected_aggregate": 0, "uncorrected_aggregate": 0},  # or null: ECC off
          "remapped_rows": {"correctable": 0, "uncorrectable": 0, "pending": 0,
                            "failure": 0},              # or null: before Ampere
          "retired_pages": null,  # or {"single_bit": 0, "double_bit": 0, "pending": 0}
          "mig": null   # MIG mode off; or a list of instances: {"gpu_instance_id": 1,
                        # "name": "... MIG 3g.40gb", "uuid": "MIG-...",
                        # "memory_used_bytes": ..., "memory_total_bytes": ..., "gpm": {...}}
        }
      ]
    }

Every key is optional (defaults as in ``FakeGpu``). Keys the fake does not
know are kept in ``FakeGpu.extra`` and otherwise ignored, so a scenario can
carry its own data (an OOM counter, say) in the same file. An out-of-memory
condition, as NVML shows it, is ``memory_used_bytes`` at the total.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

STATE_ENV = "AI_BOTTLENECK_FAKE_NVML"


@dataclass
class FakeProcess:
    pid: int
    name: str = "python3"
    used_memory_bytes: int | None = None
    gpu_instance_id: int | None = None  # the MIG instance it runs in (GPU in MIG mode)


def _default_gpm() -> dict[str, float]:
    return {"sm_util": 0.0, "sm_occupancy": 0.0, "tensor_util": 0.0, "dram_bw_util": 0.0}


@dataclass
class FakeMigInstance:
    """One MIG GPU instance (with one compute instance) of a GPU in MIG mode."""

    gpu_instance_id: int
    compute_instance_id: int = 0
    name: str = "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    uuid: str = "MIG-00000000-0000-0000-0000-000000000000"
    memory_used_bytes: int = 0
    memory_total_bytes: int = 10 * 2**30
    gpm: dict[str, float] | None = field(default_factory=_default_gpm)


def _default_ecc() -> dict[str, int]:
    return {"corrected_volatile": 0, "uncorrected_volatile": 0, "corrected_aggregate": 0,
            "uncorrected_aggregate": 0}


def _default_remapped_rows() -> dict[str, int]:
    return {"correctable": 0, "uncorrectable": 0, "pending": 0, "failure": 0}


@dataclass
class FakeGpu:
    """Scripted readings of one GPU (field names are the JSON keys)."""

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    pci_bus_id: str = "00000000:18:00.0"
    utilization_percent: float = 0.0
    memory_utilization_percent: float = 0.0
    memory_used_bytes: int = 0
    memory_total_bytes: int = 80 * 2**30
    memory_reserved_bytes: int = 512 * 2**20
    power_milliwatts: int = 70_000
    power_limit_milliwatts: int = 700_000
    temperature_celsius: int = 35
    sm_clock_mhz: int = 1980
    sm_clock_max_mhz: int = 1980
    clocks_event_reasons: int = 0
    pcie_rx_kilobytes_per_second: int = 0
    pcie_tx_kilobytes_per_second: int = 0
    gpm: dict[str, float] | None = field(default_factory=_default_gpm)
    lost: bool = False
    lose_after_calls: int | None = None
    unsupported: list[str] = field(default_factory=list)
    sample_period_seconds: float | None = 1 / 6
    processes: list[FakeProcess] = field(default_factory=list)
    xid_events: list[int] = field(default_factory=list)
    ecc: dict[str, int] | None = field(default_factory=_default_ecc)
    remapped_rows: dict[str, int] | None = field(default_factory=_default_remapped_rows)
    retired_pages: dict[str, int] | None = None
    mig: list[FakeMigInstance] | None = None  # None: MIG mode off
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        obj = asdict(self)
        extra = obj.pop("extra")
        obj.update(extra)
        return obj

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> FakeGpu:
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in obj.items() if k in known}
        if "processes" in kwargs:
            kwargs["processes"] = [FakeProcess(**p) for p in kwargs["processes"]]
        if kwargs.get("gpm") is not None:
            kwargs["gpm"] = dict(kwargs["gpm"])
        kwargs["unsupported"] = list(kwargs.get("unsupported", []))
        kwargs["xid_events"] = list(kwargs.get("xid_events", []))
        if kwargs.get("mig") is not None:
            kwargs["mig"] = [FakeMigInstance(**m) for m in kwargs["mig"]]
        return cls(**kwargs, extra={k: v for k, v in obj.items() if k not in known})


def make_gpus(count: int, **overrides: Any) -> list[FakeGpu]:
    """``count`` GPUs with distinct uuids and PCI bus ids, the same readings."""
    gpus = []
    for i in range(count):
        values: dict[str, Any] = {"uuid": f"GPU-fa4e0000-0000-4000-8000-{i:012x}",
                  "pci_bus_id": f"00000000:{0x18 + 0x10 * i:02X}:00.0"}
        values.update(overrides)
        gpus.append(FakeGpu(**values))
    return gpus


def write_state(path: str | os.PathLike[str], gpus: Sequence[FakeGpu], *,
                library_missing: bool = False, init_error: int | None = None,
                missing_symbols: Iterable[str] = ()) -> None:
    """Write the state file atomically (readers never see half a file)."""
    state = {"library_missing": library_missing, "init_error": init_error,
             "missing_symbols": sorted(missing_symbols),
             "gpus": [g.to_json() for g in gpus]}
    _write_json(Path(path), state)


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text(encoding="utf-8")))


def update_gpu(path: str | os.PathLike[str], index: int, **readings: Any) -> None:
    """Change some readings of GPU ``index`` in the state file (one writer at a time)."""
    state = read_state(path)
    gpu = FakeGpu.from_json(state["gpus"][index])
    known = {f.name for f in fields(FakeGpu)} - {"extra"}
    for key, value in readings.items():
        if key in known:
            if key == "processes":
                setattr(gpu, key, [p if isinstance(p, FakeProcess) else FakeProcess(**p)
                                   for p in value])
            else:
                setattr(gpu, key, value)
        else:
            gpu.extra[key] = value
    state["gpus"][index] = gpu.to_json()
    _write_json(Path(path), state)


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".fake-nvml-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
