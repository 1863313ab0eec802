"""Whose process is it: container ID, Kubernetes pod UID and systemd unit from the text
of ``/proc/PID/cgroup``.

Pure parsing, no I/O. The path shapes it knows (cgroup v2 ``0::<path>`` lines and
cgroup v1 ``N:controller:<path>`` lines alike):

- Docker, systemd cgroup driver: ``/system.slice/docker-<64 hex>.scope``;
  cgroupfs driver: ``/docker/<64 hex>``
- Kubernetes, systemd driver: ``/kubepods.slice/kubepods-burstable.slice/
  kubepods-burstable-pod<uid with _>.slice/<runtime>-<64 hex>.scope`` with
  ``cri-containerd-`` (containerd), ``crio-`` (CRI-O), ``docker-`` (dockershim);
  Guaranteed pods lack the QoS level (``kubepods-pod<uid>.slice``)
- Kubernetes, cgroupfs driver: ``/kubepods/besteffort/pod<uid>/<64 hex>`` and
  ``.../pod<uid>/crio-<64 hex>``
- containerd without Kubernetes: ``/<namespace>/<64 hex>`` (e.g. ``/default/...``)
- Podman: ``.../libpod-<64 hex>.scope``
- a systemd service: ``/system.slice/<name>.service``

Seen from inside a container's own cgroup namespace, another cgroup's path starts
with ``/..`` components; only the names matter, so those parse the same. The
monitors that sit beside containers (``crio-conmon-``, ``libpod-conmon-``) are
not containers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ID = r"[0-9a-f]{64}"
#: A path component that is a container: (runtime prefix, id), prefix "" for a bare id.
_CONTAINER = re.compile(
    rf"^(?:(docker|cri-containerd|crio|libpod|containerd)-)?({_ID})(?:\.scope)?$")
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
                  r"(?:\.slice)?$")
_RUNTIMES = {"docker": "docker", "cri-containerd": "containerd", "containerd": "containerd",
             "crio": "cri-o", "libpod": "podman"}


@dataclass(frozen=True, slots=True)
class Workload:
    """Where a process runs; "" for what its cgroup does not say."""

    container_id: str = ""
    runtime: str = ""        # docker, containerd, cri-o, podman; "" when the path is bare
    pod_uid: str = ""        # Kubernetes pod UID, with dashes
    unit: str = ""           # systemd service outside any container

    def __bool__(self) -> bool:
        return bool(self.container_id or self.pod_uid or self.unit)


def _paths(text: str) -> list[str]:
    """The cgroup paths of the file, the unified (v2) one first."""
    unified: list[str] = []
    legacy: list[str] = []
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        _controllers, sep, path = rest.partition(":")
        if not sep:
            continue
        (unified if hierarchy == "0" else legacy).append(path.strip())
    return unified + legacy


def parse_path(path: str) -> Workload:
    """What one cgroup path says about its processes."""
    container_id = runtime = pod_uid = unit = ""
    parts = [p for p in path.split("/") if p and p != ".."]
    for i, part in enumerate(parts):
        pod = _POD.search(part)
        if pod and "kubepods" in path:
            pod_uid = pod.group(1).replace("_", "-")
            continue
        m = _CONTAINER.match(part)
        if m:
            container_id = m.group(2)
            prefix = m.group(1) or ""
            runtime = _RUNTIMES.get(prefix, "")
            if not prefix and i > 0 and parts[i - 1] == "docker":
                runtime = "docker"
    if not container_id and parts and parts[-1].endswith(".service"):
        unit = parts[-1]
    return Workload(container_id, runtime, pod_uid, unit)


def parse_cgroup(text: str) -> Workload:
    """What ``/proc/PID/cgroup`` says: the first path that names a container or pod,
    else the first that names a service, else nothing."""
    best = Workload()
    for path in _paths(text):
        found = parse_path(path)
        if found.container_id or found.pod_uid:
            return found
        if found.unit and not best:
            best = found
    return best
