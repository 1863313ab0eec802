"""Kubernetes pod and container names for a pod UID and container ID, from the node's
log directories.

The kubelet writes every pod's logs under ``/var/log/pods/<namespace>_<pod>_<uid>/``
and links each container's log as ``/var/log/containers/<pod>_<namespace>_<container>-
<container id>.log``. Names cannot contain ``_`` (they are DNS labels), so the
directory names are the lookup table: no API server, no token, no gRPC client for
the kubelet's pod-resources socket; a read-only hostPath mount of the two
directories is all it needs (docs/deployment.md). Where they are not mounted,
lookups give nothing and the labels stay out.

A UID or container ID not in the table makes it re-read the directories, at most
once per ``rescan_seconds``, so a new pod is named within that time and a busy
host costs one directory listing per interval, not per process.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from ai_bottleneck.probes.base import Clock

_POD_DIR = re.compile(r"^([a-z0-9][-a-z0-9]*)_([a-z0-9][-.a-z0-9]*)_([0-9a-f-]{36})$")
_CONTAINER_LOG = re.compile(
    r"^([a-z0-9][-.a-z0-9]*)_([a-z0-9][-a-z0-9]*)_([a-z0-9][-a-z0-9]*)-([0-9a-f]{64})\.log$")


class PodDirectory:
    """Pod UID -> (namespace, pod); container ID -> container name."""

    def __init__(self, pods_root: str | Path = "/var/log/pods",
                 containers_root: str | Path | None = None, *,
                 rescan_seconds: float = 30.0, monotonic: Clock = time.monotonic) -> None:
        self._pods_root = str(pods_root)
        self._containers_root = str(containers_root if containers_root is not None
                                    else Path(pods_root).parent / "containers")
        self._rescan_seconds = rescan_seconds
        self._monotonic = monotonic
        self._pods: dict[str, tuple[str, str]] = {}
        self._containers: dict[str, str] = {}
        self._scanned_at: float | None = None

    def labels(self, pod_uid: str, container_id: str) -> dict[str, str]:
        """``pod``, ``namespace`` and ``container`` where known; {} where not."""
        if not pod_uid and not container_id:
            return {}
        known = (not pod_uid or pod_uid in self._pods) and (
            not container_id or container_id in self._containers)
        if not known:
            self._rescan()
        out: dict[str, str] = {}
        pod = self._pods.get(pod_uid)
        if pod is not None:
            out["namespace"], out["pod"] = pod
        container = self._containers.get(container_id)
        if container is not None:
            out["container"] = container
        return out

    def _rescan(self) -> None:
        now = self._monotonic()
        if self._scanned_at is not None and now - self._scanned_at < self._rescan_seconds:
            return
        self._scanned_at = now
        pods: dict[str, tuple[str, str]] = {}
        for name in _listdir(self._pods_root):
            m = _POD_DIR.match(name)
            if m:
                pods[m.group(3)] = (m.group(1), m.group(2))
        containers: dict[str, str] = {}
        for name in _listdir(self._containers_root):
            m = _CONTAINER_LOG.match(name)
            if m:
                containers[m.group(4)] = m.group(3)
        self._pods, self._containers = pods, containers


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:  # not mounted here, or not Kubernetes: no names
        return []
