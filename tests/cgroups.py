"""Real cgroups for tests: a cgroup-v2 hierarchy (the system's, its hybrid-layout
``unified`` tree, or one mounted for the test), a test-made slice of child cgroups,
processes moved into them, and a CPU limit on one (``cpu.max`` where the v2 tree has
the cpu controller, else the cgroup-v1 cpu controller's quota on a twin cgroup).
Everything is removed afterwards, also on failure; processes still in a cgroup are
moved back to where the test found them first.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

V1_CPU = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000


@contextlib.contextmanager
def cgroup2_root() -> Iterator[Path]:
    """The cgroup-v2 hierarchy's mount point (needs root)."""
    system = Path("/sys/fs/cgroup")
    for candidate in (system, system / "unified"):
        if (candidate / "cgroup.controllers").exists():
            yield candidate
            return
    mount = Path(tempfile.mkdtemp(prefix="aib-cg2-"))
    try:
        subprocess.run(["mount", "-t", "cgroup2", "none", str(mount)], check=True,
                       capture_output=True)
        try:
            yield mount
        finally:
            subprocess.run(["umount", str(mount)], check=False)
    finally:
        mount.rmdir()


def _rmdir(path: Path) -> None:
    for _ in range(100):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)  # the kernel frees a cgroup a moment after its last task leaves


class Slice:
    """``<root>/<name>`` with child cgroups made on demand; ``move`` puts processes in
    one, ``limit_cpu`` caps one at some cores."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.top = root / name
        self.children: dict[str, Path] = {}
        self.v1: dict[str, Path] = {}
        self.top.mkdir()

    def cgroup(self, child: str) -> Path:
        if child not in self.children:
            path = self.top / child
            path.mkdir()
            self.children[child] = path
        return self.children[child]

    def path_of(self, child: str) -> str:
        """The child's cgroup path as /proc/PID/cgroup writes it."""
        return "/" + str(self.cgroup(child).relative_to(self.root))

    def move(self, child: str, pids: Iterable[int]) -> None:
        target = self.cgroup(child) / "cgroup.procs"
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                target.write_text(str(pid))
            if child in self.v1:
                with contextlib.suppress(ProcessLookupError):
                    (self.v1[child] / "cgroup.procs").write_text(str(pid))

    def limit_cpu(self, child: str, cores: float) -> str:
        """Cap ``child`` at ``cores`` CPUs; returns how ("cpu.max" or "v1 cfs quota")."""
        quota = max(int(cores * PERIOD_US), 1000)
        controllers = (self.root / "cgroup.controllers")
        if controllers.exists() and "cpu" in controllers.read_text().split():
            for parent in (self.root, self.top):
                with contextlib.suppress(OSError):
                    (parent / "cgroup.subtree_control").write_text("+cpu")
            max_file = self.cgroup(child) / "cpu.max"
            if max_file.exists():
                max_file.write_text(f"{quota} {PERIOD_US}")
                return "cpu.max"
        if not (V1_CPU / "cgroup.procs").exists():
            raise RuntimeError("no cpu controller to limit a cgroup with (v2 cpu.max or v1 cpu)")
        twin = V1_CPU / f"{self.top.name}-{child}"
        twin.mkdir()
        self.v1[child] = twin
        (twin / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (twin / "cpu.cfs_quota_us").write_text(str(quota))
        for pid in (self.cgroup(child) / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                (twin / "cgroup.procs").write_text(pid)
        return "v1 cfs quota"

    def close(self) -> None:
        """Move what is left back to the root cgroups and remove every cgroup made."""
        for child, path in [*self.children.items()]:
            for pid in _read_pids(path):
                with contextlib.suppress(OSError):
                    (self.root / "cgroup.procs").write_text(str(pid))
            twin = self.v1.get(child)
            if twin is not None:
                for pid in _read_pids(twin):
                    with contextlib.suppress(OSError):
                        (V1_CPU / "cgroup.procs").write_text(str(pid))
                _rmdir(twin)
            _rmdir(path)
        _rmdir(self.top)


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return []


@contextlib.contextmanager
def made_slice(root: Path, prefix: str = "aibtest") -> Iterator[Slice]:
    """A slice ``<prefix>-<pid>.slice`` under ``root``, removed afterwards."""
    made = Slice(root, f"{prefix}-{os.getpid()}.slice")
    try:
        yield made
    finally:
        made.close()
