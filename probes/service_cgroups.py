"""Where the service under diagnosis lives in the cgroup-v2 tree: the hierarchy's mount,
a systemd unit's or a container's directory, a process's cgroup, and which cgroups of
the processes holding GPU memory are the service's own.

Pure file reading, no state; the service probe (probes/service.py) calls it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from ai_bottleneck.probes.cgroup_ids import parse_path

#: How deep units and containers sit below the root: Kubernetes puts a container five
#: levels down (kubepods.slice/kubepods-burstable.slice/<pod>.slice/<container>.scope).
_MAX_DEPTH = 6
#: The cgroups of GPU processes named in the service label, beyond which "+N more".
MAX_NAMED_CGROUPS = 4


def read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(65536)
    except OSError:
        return None


def hierarchy(root: str) -> str | None:
    """The cgroup-v2 mount at ``root``, or under ``root/unified`` (systemd's hybrid
    layout, cgroup v1 controllers beside one v2 tree); None when neither is there."""
    root = root.rstrip("/") or "/"
    for candidate in (root, f"{root}/unified"):
        if os.path.exists(f"{candidate}/cgroup.procs"):
            return candidate
    return None


def _search(root: str, match: Callable[[str], bool]) -> str | None:
    """The first directory under ``root`` (breadth first, bounded depth) whose name
    ``match`` accepts."""
    level = [root]
    for _ in range(_MAX_DEPTH):
        below: list[str] = []
        for path in level:
            try:
                names = sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
            except OSError:
                continue
            for name in names:
                if match(name):
                    return f"{path}/{name}"
            below += [f"{path}/{n}" for n in names]
        level = below
    return None


def find_unit(root: str, unit: str) -> str | None:
    """The directory of a systemd unit (``vllm.service``, ``run-r1.scope``)."""
    return _search(root, lambda name: name == unit)


def find_container(root: str, container: str) -> str | None:
    """The directory of the container whose ID starts with ``container`` (12 to 64 hex
    digits: Docker, containerd, CRI-O and Podman paths alike, probes/cgroup_ids.py); the
    monitors beside containers (``crio-conmon-``) are not containers."""
    wanted = container.lower()

    def match(name: str) -> bool:
        found = parse_path(name).container_id
        return bool(found) and found.startswith(wanted) and not name.startswith(
            ("crio-conmon-", "libpod-conmon-"))
    return _search(root, match)


def process_cgroup(proc_root: str, pid: int | str) -> str | None:
    """A process's cgroup-v2 path (``/system.slice/x.service``; ``/`` is the root), from
    the ``0::`` line of /proc/PID/cgroup; None when the process is gone, has none, or
    sits outside the reader's cgroup namespace (a path with ``..``: no directory of the
    tree mounted here)."""
    for line in (read(f"{proc_root}/{pid}/cgroup") or "").splitlines():
        if line.startswith("0::"):
            path = "/" + line[3:].strip().strip("/")
            return None if "/.." in path else path
    return None


def own_cgroups(proc_root: str, pids: Iterable[int], agent_cgroup: str) -> list[str]:
    """The cgroups of ``pids`` that are their own: not the root (that is the whole host),
    not the agent's own cgroup nor one holding it (the agent's CPU would count as the
    service's), and none nested in another one chosen (it would count twice)."""
    found: set[str] = set()
    for pid in pids:
        path = process_cgroup(proc_root, pid)
        if path is None or path == "/":
            continue
        if agent_cgroup == path or agent_cgroup.startswith(path + "/"):
            continue
        found.add(path)
    return sorted(p for p in found
                  if not any(p.startswith(q + "/") for q in found if q != p))


def describe(cgroups: list[str]) -> str:
    """The cgroups for the service label (recorded, so a replay names the same ones)."""
    named = ", ".join(cgroups[:MAX_NAMED_CGROUPS])
    more = len(cgroups) - MAX_NAMED_CGROUPS
    return named + (f" +{more} more" if more > 0 else "")
