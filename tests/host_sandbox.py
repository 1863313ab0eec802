"""A throwaway copy of this host's system folders, for running install steps literally.

``HostSandbox`` holds a private mount namespace (``unshare --mount``) in which
/etc, /opt, /usr/local and /var are overlays on the real folders with their
upper layers in a temporary folder: ``groupadd``, ``install -d /etc/...``, a
venv in /opt or a symlink in /usr/local/bin take effect inside and vanish
with it; the host's own files are never written. Commands run inside through
``nsenter``. Mounts below those folders (a container's bind-mounted
/etc/hosts or /etc/resolv.conf) are carried over onto the overlays. Root only.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

OVERLAID = ("/etc", "/opt", "/usr/local", "/var")


def submounts(pid: int, folder: str) -> list[str]:
    """Mount points strictly below FOLDER in process PID's namespace, outermost first."""
    points = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(folder + "/"):
            points.append(point)
    return sorted(set(points), key=len)


class HostSandbox:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        # The namespace lives as long as this process (bounded: it ends by itself).
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                        "sleep", "1200"], stdin=subprocess.DEVNULL)
        try:
            self._wait_for_namespace()
            for n, target in enumerate(OVERLAID):
                self._overlay(n, target)
        except BaseException:
            self.close()
            raise

    def _wait_for_namespace(self) -> None:
        mine = Path("/proc/self/ns/mnt").resolve()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if Path(f"/proc/{self.holder.pid}/ns/mnt").resolve() != mine and \
                        Path(f"/proc/{self.holder.pid}/cmdline").read_bytes().startswith(b"sleep"):
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        raise RuntimeError("unshare --mount did not start")

    @property
    def prefix(self) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--"]

    def _mount(self, *args: str) -> None:
        done = subprocess.run([*self.prefix, "mount", *args], capture_output=True, text=True,
                              timeout=30, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"mount {' '.join(args)}: {done.stderr.strip()}")

    def _overlay(self, n: int, target: str) -> None:
        layer = self.folder / f"layer{n}"
        upper, work, stash = layer / "upper", layer / "work", layer / "stash"
        for d in (upper, work, stash):
            d.mkdir(parents=True)
        kept = submounts(self.holder.pid, target)
        moved = []
        for i, point in enumerate(kept):  # park them, then put them back on top
            spot = stash / str(i)
            if Path(point).is_dir():
                spot.mkdir()
            else:
                spot.touch()
            self._mount("--bind", point, str(spot))
            moved.append((spot, point))
        self._mount("-t", "overlay", "overlay", "-o",
                    f"lowerdir={target},upperdir={upper},workdir={work}", target)
        for spot, point in moved:
            self._mount("--move", str(spot), point)

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, "bash", "-c", command], capture_output=True,
                              text=True, timeout=timeout, check=False)

    def read(self, path: str) -> str:
        done = self.run(f"cat {path}")
        assert done.returncode == 0, done.stderr
        return done.stdout

    def write(self, path: str, text: str) -> None:
        done = subprocess.run([*self.prefix, "tee", path], input=text, capture_output=True,
                              text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr

    def start(self, argv: Sequence[str], log: Path,
              env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A long-running program inside (nsenter execs it: the Popen is the program)."""
        with open(log, "wb") as out:
            proc = subprocess.Popen([*self.prefix, *argv], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    env=None if env is None else dict(env))
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        if self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait(10)
        # The namespace and its mounts are gone with their last process.
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> HostSandbox:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
