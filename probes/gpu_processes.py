"""The compute processes on one GPU, named and placed: process name, container,
Kubernetes pod, systemd service.

NVML lists the processes using a GPU with their host PIDs. For each new PID the
reader asks NVML for its name and reads ``<proc_root>/<pid>/cgroup`` for where
it runs (probes/cgroup_ids.py) and, on Kubernetes, the pod's and container's
names (probes/k8s_pods.py); all of it is cached by PID until the PID leaves the
GPUs. NVML's PIDs are the host's: ``proc_root`` is read only where its PIDs are
the host's too, that is where it is set to something other than ``/proc`` (a
mount of the host's /proc) or where the agent runs in the host's PID namespace;
otherwise the same number could be another process in the agent's namespace. A
PID the agent cannot see keeps its memory figure and loses only the names.

Cardinality: per GPU at most ``max_processes`` process series, the ones using the
most memory; the rest are folded into one series with ``pid="other"``. The
placement labels are properties of the PID, so they add no series of their own:
a GPU gives at most ``max_processes + 1`` process series whatever runs on it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ai_bottleneck.probes import nvml
from ai_bottleneck.probes.base import Sample
from ai_bottleneck.probes.cgroup_ids import parse_cgroup
from ai_bottleneck.probes.k8s_pods import PodDirectory
from ai_bottleneck.probes.vocabulary import (
    MIG_LABEL,
    OTHER_PROCESSES,
    PROCESS_COUNT,
    PROCESS_LABEL,
    PROCESS_MEMORY_USED,
)

OTHER = OTHER_PROCESSES
_NO_INSTANCE = 0xFFFFFFFF  # NVML's gpuInstanceId for a process on a GPU not in MIG mode


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip("\x00 ")


class ProcessReader:
    """Names and places GPU processes; shared by all GPUs of one probe."""

    def __init__(self, session: nvml.NvmlSession, *, proc_root: str = "/proc",
                 pods: PodDirectory | None = None, max_processes: int = 32) -> None:
        self._nvml = session
        self._proc_root = proc_root
        self._pods = pods
        self.max_processes = max_processes
        self._labels: dict[int, dict[str, str]] = {}
        self._host_pids = proc_root != "/proc" or in_host_pid_namespace()
        if not self._host_pids:
            session.log_once("gpu-processes-pidns", "gpu: this agent has its own PID namespace; "
                             "GPU processes are not named or placed (mount the host's /proc "
                             "and set proc_root, or run with the host's PIDs)")

    def samples(self, gpu_labels: Mapping[str, str], processes: Sequence[Any], t: float,
                probe: str) -> tuple[list[Sample], dict[str, float]]:
        """One sample per process (at most ``max_processes`` and one folded), and the
        GPU's own totals (``process_count``, ``process_memory_used_bytes``)."""
        rows = []
        instance: dict[int, str] = {}
        for proc in processes:
            used = getattr(proc, "usedGpuMemory", None)
            rows.append((int(proc.pid), float(used) if used is not None and used >= 0 else None))
            gi = getattr(proc, "gpuInstanceId", None)
            if isinstance(gi, int) and gi != _NO_INSTANCE:
                instance[int(proc.pid)] = str(gi)  # the MIG instance it runs in
        # Most memory first; unknown memory last; PID order breaks ties, so the cut is stable.
        rows.sort(key=lambda r: (r[1] is None, -(r[1] or 0.0), r[0]))
        out = []
        total = 0.0
        known = not rows  # no process at all: 0 bytes is a reading
        for pid, used in rows[:self.max_processes]:
            values = {PROCESS_MEMORY_USED: used} if used is not None else {}
            labels = {**gpu_labels, PROCESS_LABEL: str(pid), **self._describe(pid)}
            if pid in instance:
                labels[MIG_LABEL] = instance[pid]
            out.append(Sample(t=t, probe=probe, labels=labels, values=values))
        folded = rows[self.max_processes:]
        if folded:
            values = {PROCESS_COUNT: float(len(folded))}
            folded_known = [used for _, used in folded if used is not None]
            if folded_known:
                values[PROCESS_MEMORY_USED] = sum(folded_known)
            out.append(Sample(t=t, probe=probe, labels={**gpu_labels, PROCESS_LABEL: OTHER,
                                                        "process_name": OTHER}, values=values))
        for _, used in rows:
            if used is not None:
                total += used
                known = True
        totals = {PROCESS_COUNT: float(len(rows))}
        if known:
            totals[PROCESS_MEMORY_USED] = total
        return out, totals

    def forget_except(self, pids: Iterable[int]) -> None:
        """Drop what is cached about PIDs no longer on any GPU (PIDs get reused)."""
        keep = set(pids)
        for pid in self._labels.keys() - keep:
            del self._labels[pid]

    def _describe(self, pid: int) -> dict[str, str]:
        labels = self._labels.get(pid)
        if labels is None:
            labels = {"process_name": self._name(pid)}
            labels.update(self._placement(pid))
            self._labels[pid] = labels
        if self._pods is not None and ("pod_uid" in labels or "container_id" in labels):
            # Looked up each time (a dict lookup once known): a pod's names can show up
            # in the kubelet's directories after its first GPU sample.
            names = self._pods.labels(labels.get("pod_uid", ""), labels.get("container_id", ""))
            if names:
                return {**labels, **names}
        return labels

    def _name(self, pid: int) -> str:
        try:
            raw = self._nvml.call("nvmlSystemGetProcessName", pid)
        except (nvml.FunctionMissing, nvml.NVMLError):
            raw = None  # gone already, or another container's process
        if not raw and self._host_pids:  # the host's /proc may still show it
            try:
                with open(f"{self._proc_root}/{pid}/comm", encoding="utf-8",
                          errors="replace") as fh:
                    raw = fh.read(256).strip()
            except OSError:
                raw = None
        return (os.path.basename(_text(raw)) if raw else "") or "unknown"

    def _placement(self, pid: int) -> dict[str, str]:
        if not self._host_pids:
            return {}
        try:
            with open(f"{self._proc_root}/{pid}/cgroup", encoding="utf-8",
                      errors="replace") as fh:
                found = parse_cgroup(fh.read(65536))
        except OSError:  # not visible from here (PID namespace) or already gone
            return {}
        labels = {}
        if found.container_id:
            labels["container_id"] = found.container_id
        if found.pod_uid:
            labels["pod_uid"] = found.pod_uid
        if found.unit:
            labels["systemd_unit"] = found.unit
        return labels


def in_host_pid_namespace(status_path: str = "/proc/self/status") -> bool:
    """True when this process is in the initial PID namespace: its ``NSpid`` line (Linux
    4.1 and newer) lists one PID, not one per nested namespace. Unknown: False."""
    try:
        with open(status_path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("NSpid:"):
                    return len(line.split()) == 2
    except OSError:
        pass
    return False

