"""nvidia-smi as the reference the GPU probe's NVML readings are held against.

Which nvidia-smi field answers which of the probe's values, in which unit, and
how to read nvidia-smi's CSV and ``dmon`` output. Pure functions of text, so
the parsing is tested on captured output (tests/test_gpu_validate_parsing.py)
and the dry run's stand-in (tests/gpu/standin_smi.py) prints the same shapes.

Only ``--query-gpu`` fields that ``nvidia-smi --help-query-gpu`` lists are
asked for: one unknown field makes nvidia-smi refuse the whole query, and
field names change between drivers (``clocks_throttle_reasons`` became
``clocks_event_reasons``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

MIB = 1024.0 * 1024.0
_NOT_A_VALUE = {"", "n/a", "[n/a]", "[not supported]", "not supported", "[unknown error]",
                "[insufficient permissions]", "[gpu is lost]", "[unknown]"}

Parse = Callable[[str], float | None]


def number(text: str) -> float | None:
    """A plain number as nvidia-smi prints it with ``nounits``; None for N/A and friends."""
    text = text.strip()
    if text.lower() in _NOT_A_VALUE:
        return None
    match = re.match(r"^[-+]?\d+(?:\.\d+)?", text)  # tolerate a unit left on ("95 %")
    return float(match.group(0)) if match else None


def scaled(factor: float) -> Parse:
    def parse(text: str) -> float | None:
        value = number(text)
        return None if value is None else value * factor
    return parse


def hex_mask(text: str) -> float | None:
    text = text.strip()
    if text.lower() in _NOT_A_VALUE:
        return None
    try:
        return float(int(text, 16))
    except ValueError:
        return None


def active_flag(text: str) -> float | None:
    """``Active`` / ``Not Active`` as 1 / 0."""
    text = text.strip().lower()
    if text == "active":
        return 1.0
    if text == "not active":
        return 0.0
    return None


@dataclass(frozen=True)
class Pair:
    """One of our values and the nvidia-smi ``--query-gpu`` field that should agree."""

    ours: str
    fields: tuple[str, ...]  # the first that this nvidia-smi knows is asked
    unit: str
    parse: Parse
    tolerance: float  # absolute, in ``unit`` of ours: readings over a second drift
    note: str = ""


_FLAGS = ("gpu_idle", "applications_clocks_setting", "sw_power_cap", "hw_slowdown",
          "sync_boost", "sw_thermal_slowdown", "hw_thermal_slowdown",
          "hw_power_brake_slowdown", "display_clock_setting")

PAIRS: tuple[Pair, ...] = (
    Pair("utilization_ratio", ("utilization.gpu",), "ratio", scaled(0.01), 0.15,
         "ours averages the driver's samples since the previous pass; nvidia-smi its last"),
    Pair("memory_used_bytes", ("memory.used",), "bytes", scaled(MIB), 4 * MIB),
    Pair("memory_total_bytes", ("memory.total",), "bytes", scaled(MIB), 1 * MIB),
    Pair("memory_reserved_bytes", ("memory.reserved",), "bytes", scaled(MIB), 1 * MIB),
    Pair("power_watts", ("power.draw",), "watts", number, 25.0),
    Pair("power_watts", ("power.draw.instant",), "watts", number, 25.0,
         "which of nvidia-smi's power readings NVML's PowerUsage matches"),
    Pair("power_watts", ("power.draw.average",), "watts", number, 25.0),
    Pair("power_limit_watts", ("enforced.power.limit",), "watts", number, 0.5),
    Pair("power_limit_watts", ("power.limit",), "watts", number, 0.5),
    Pair("temperature_celsius", ("temperature.gpu",), "celsius", number, 2.0),
    Pair("sm_clock_hertz", ("clocks.sm",), "hertz", scaled(1e6), 100e6),
    Pair("sm_clock_max_hertz", ("clocks.max.sm",), "hertz", scaled(1e6), 1e6),
    Pair("clocks_event_reasons_bitmask",
         ("clocks_event_reasons.active", "clocks_throttle_reasons.active"), "bitmask",
         hex_mask, 0.0),
    *(Pair(f"clocks_event_{flag}_flag", (f"clocks_event_reasons.{flag}",
                                         f"clocks_throttle_reasons.{flag}"),
           "flag", active_flag, 0.0) for flag in _FLAGS),
)

#: Text facts about the card, for the record (and labels compared as text).
CARD_FIELDS = ("timestamp", "name", "uuid", "pci.bus_id", "driver_version", "vbios_version",
               "compute_cap", "memory.total", "power.limit", "clocks.max.sm", "pstate",
               "persistence_mode", "compute_mode", "mig.mode.current")
LABEL_PAIRS = (("name", "name"), ("uuid", "uuid"), ("pci_bus_id", "pci.bus_id"))

#: GPM metric ids (NVML numbering, as ``nvidia-smi dmon --gpm-metrics`` takes them).
GPM_METRICS = (("sm_active_ratio", 2), ("sm_occupancy_ratio", 3), ("tensor_active_ratio", 5),
               ("dram_active_ratio", 10))
#: ``dmon -s t``: PCIe columns, MB/s.
PCIE_COLUMNS = (("pcie_rx_bytes_per_second", "rxpci"), ("pcie_tx_bytes_per_second", "txpci"))


def known_fields(help_text: str) -> set[str]:
    """Every field name ``nvidia-smi --help-query-gpu`` lists (quoted, aliases included)."""
    return set(re.findall(r'"([A-Za-z0-9_.]+)"', help_text))


def choose_fields(known: set[str]) -> dict[str, str]:
    """For each pair and card field: the first field name this nvidia-smi knows."""
    chosen: dict[str, str] = {}
    for pair in PAIRS:
        for name in pair.fields:
            if name in known:
                chosen[pair.fields[0]] = name
                break
    for name in CARD_FIELDS:
        if name in known:
            chosen[name] = name
    return chosen


def query_csv(text: str) -> list[dict[str, str]]:
    """``--query-gpu=... --format=csv[,nounits]`` output: one dict per GPU, keyed by the
    field names as asked (the header's ``[unit]`` suffix dropped)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = [re.sub(r"\s*\[[^\]]*\]\s*$", "", h.strip()) for h in lines[0].split(",")]
    rows = []
    for line in lines[1:]:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(header):
            continue  # a repeated header (-l) or a message line
        if cells == header:
            continue
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def dmon(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """``nvidia-smi dmon`` output: the column names of its first ``#`` line and one dict
    per data line (the first column, ``gpu``, is the GPU index)."""
    columns: list[str] = []
    rows = []
    for line in text.splitlines():
        if line.startswith("#"):
            if not columns:
                columns = line.lstrip("#").split()
            continue
        cells = line.split()
        if columns and len(cells) == len(columns):
            rows.append(dict(zip(columns, cells, strict=True)))
    return columns, rows


def gpm_from_dmon(text: str, metric_ids: Sequence[int]) -> dict[int, float | None]:
    """GPM metric id -> percent, from ``dmon --gpm-metrics IDS -c 1``: the cells after the
    GPU index on the first data line, in the order asked, when their count matches (the
    header's column names are not relied on); else nothing."""
    for line in text.splitlines():
        cells = line.split()
        if not cells or line.startswith("#") or not cells[0].isdigit():
            continue
        if len(cells) - 1 != len(metric_ids):
            return {}
        return {mid: number(cell) for mid, cell in zip(metric_ids, cells[1:], strict=True)}
    return {}


def compare_row(context: str, value: str, ours: float | None, smi_field: str,
                smi_text: str | None, smi: float | None, unit: str, tolerance: float | None,
                note: str = "") -> dict[str, object]:
    """One row of the NVML-against-nvidia-smi table."""
    if ours is None or smi is None or tolerance is None:
        agree: bool | None = None
    else:
        agree = abs(ours - smi) <= tolerance + 1e-9
    return {"context": context, "value": value, "ours": ours, "nvidia_smi_field": smi_field,
            "nvidia_smi_text": smi_text, "nvidia_smi": smi, "unit": unit,
            "tolerance": tolerance, "agree": agree, "note": note}


def _per_process(context: str, apps: list[Mapping[str, str]],
                 processes: Iterable[tuple[Mapping[str, str], Mapping[str, float]]],
                 ) -> list[dict[str, object]]:
    """Each process our probe lists beside nvidia-smi's row for the same pid."""
    by_pid = {a.get("pid", "").strip(): a for a in apps}
    rows: list[dict[str, object]] = []
    for labels, values in processes:
        pid = labels.get("pid", "")
        app = by_pid.get(pid)
        text = app.get("used_gpu_memory", app.get("used_memory")) if app else None
        smi_bytes = number(text) if text is not None else None
        rows.append(compare_row(
            context, f"process {pid} process_memory_used_bytes",
            values.get("process_memory_used_bytes"), "--query-compute-apps used_gpu_memory",
            text, None if smi_bytes is None else smi_bytes * MIB, "bytes", 4 * MIB,
            "" if app else "nvidia-smi does not list this pid"))
        name = app.get("process_name") if app else None
        rows.append({**compare_row(context, f"process {pid} process_name", None,
                                   "--query-compute-apps process_name", name, None, "text",
                                   None), "ours": labels.get("process_name"),
                     "nvidia_smi": name, "agree": None if name is None else (
                         name.rsplit("/", 1)[-1] == labels.get("process_name"))})
    return rows


def compare(context: str, ours: Mapping[str, float], labels: Mapping[str, str],
            query: Mapping[str, str], chosen: Mapping[str, str], *,
            apps: Iterable[Mapping[str, str]] | None = None, pcie: str | None = None,
            gpm: str | None = None,
            processes: Iterable[tuple[Mapping[str, str], Mapping[str, float]]] = (),
            ) -> list[dict[str, object]]:
    """Rows for one GPU: each of our values beside nvidia-smi's answer for it."""
    rows: list[dict[str, object]] = []
    for label, field in LABEL_PAIRS:
        text = query.get(field)
        rows.append({**compare_row(context, label, None, field, text, None, "text", None),
                     "ours": labels.get(label), "nvidia_smi": text, "agree": (
                         None if text is None or label not in labels
                         else text.strip() == labels[label])})
    for pair in PAIRS:
        asked = chosen.get(pair.fields[0])
        text = query.get(asked) if asked else None
        smi = pair.parse(text) if text is not None else None
        rows.append(compare_row(context, pair.ours, ours.get(pair.ours),
                                asked or pair.fields[0], text, smi, pair.unit, pair.tolerance,
                                pair.note if asked else "this nvidia-smi has no such field"))
    if apps is not None:
        listed = list(apps)
        used = [number(a.get("used_gpu_memory", a.get("used_memory", ""))) for a in listed]
        rows.append(compare_row(context, "process_count", ours.get("process_count"),
                                "--query-compute-apps", str(len(listed)), float(len(listed)),
                                "count", 0.0))
        total = None if any(u is None for u in used) else sum(u or 0.0 for u in used) * MIB
        rows.append(compare_row(context, "process_memory_used_bytes",
                                ours.get("process_memory_used_bytes"), "--query-compute-apps",
                                None, total, "bytes", 4 * MIB))
        rows.extend(_per_process(context, listed, processes))
    if pcie is not None:
        _, dmon_rows = dmon(pcie)
        first = dmon_rows[0] if dmon_rows else {}
        for value, column in PCIE_COLUMNS:
            text = first.get(column)
            smi = number(text) if text is not None else None
            rows.append(compare_row(context, value, ours.get(value), f"dmon -s t {column}",
                                    text, None if smi is None else smi * 1e6, "bytes/s",
                                    None, "NVML and dmon measure PCIe over different moments"))
    if gpm is not None:
        ids = [mid for _, mid in GPM_METRICS]
        parsed = gpm_from_dmon(gpm, ids)
        for value, mid in GPM_METRICS:
            smi = parsed.get(mid)
            rows.append(compare_row(context, value, ours.get(value), f"dmon --gpm-metrics {mid}",
                                    None if smi is None else f"{smi:g}",
                                    None if smi is None else smi / 100.0, "ratio", 0.15,
                                    "each over its own second" if parsed else
                                    "dmon output not understood; raw output kept"))
    for value in ("gpm_available", "utilization_samples"):
        if value in ours:
            rows.append(compare_row(context, value, ours[value], "", None, None, "", None,
                                    "no nvidia-smi counterpart"))
    return rows
