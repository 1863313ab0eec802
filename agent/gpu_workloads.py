"""Whose GPU memory it is: the GPU processes of a window grouped by where they run
(Kubernetes pod, container, systemd service, else the process), for the window
summary and the report's key numbers.

Pure functions of the window's per-process GPU samples (labels from
probes/gpu_processes.py); a recording without placement labels groups by process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ai_bottleneck.probes.vocabulary import (
    OTHER_PROCESSES,
    PROCESS_LABEL,
    PROCESS_MEMORY_USED,
    is_process_sample,
    mig_instance,
)
from ai_bottleneck.windows import Window

SUMMARY_KEY = "gpu_workloads"
MAX_WORKLOADS = 8  # per window summary and per report: the largest, by memory


def workload_name(labels: Mapping[str, str]) -> str:
    """How a person would name where a GPU process runs."""
    if labels.get("pod"):
        name = f"pod {labels.get('namespace', '?')}/{labels['pod']}"
        return name + (f" container {labels['container']}" if labels.get("container") else "")
    if labels.get("pod_uid"):
        return f"pod uid {labels['pod_uid']}"
    if labels.get("container_id"):
        return f"container {labels['container_id'][:12]}"
    if labels.get("systemd_unit"):
        return f"service {labels['systemd_unit']}"
    if labels.get(PROCESS_LABEL) == OTHER_PROCESSES:
        return "other processes (beyond the series limit)"
    return f"process {labels.get('process_name', '?')} (pid {labels.get(PROCESS_LABEL, '?')})"


def summary(window: Window) -> dict[str, Any]:
    """``{"gpu_workloads": {"<workload> on GPU <n>": {"memory_used_bytes": peak}}}``, the
    largest MAX_WORKLOADS; {} when no process was seen. A workload of several
    processes gets the sum of their peaks (an upper bound of its peak)."""
    peaks: dict[str, float] = {}
    for sw in window.of("gpu"):
        if not is_process_sample(sw.labels):
            continue
        peak = sw.peak(PROCESS_MEMORY_USED)
        if peak is None:
            continue
        mig = mig_instance(sw.labels)
        where = sw.labels.get("gpu", "?") + (f" MIG instance {mig}" if mig is not None else "")
        key = f"{workload_name(sw.labels)} on GPU {where}"
        peaks[key] = peaks.get(key, 0.0) + peak
    if not peaks:
        return {}
    largest = sorted(peaks.items(), key=lambda kv: -kv[1])[:MAX_WORKLOADS]
    return {SUMMARY_KEY: {key: {"memory_used_bytes": peak} for key, peak in largest}}


def run_peaks(summaries: Sequence[Mapping[str, Any]]) -> list[tuple[str, float]]:
    """GPU memory by workload over a run: each workload's peak, largest first (at most
    MAX_WORKLOADS), from the window summaries."""
    peaks: dict[str, float] = {}
    for s in summaries:
        part = s.get(SUMMARY_KEY)
        if not isinstance(part, Mapping):
            continue
        for key, values in part.items():
            v = values.get("memory_used_bytes") if isinstance(values, Mapping) else None
            if isinstance(v, int | float):
                peaks[str(key)] = max(peaks.get(str(key), 0.0), float(v))
    return sorted(peaks.items(), key=lambda kv: -kv[1])[:MAX_WORKLOADS]
