"""A real small tmpfs, for tests of a full disk: mounted in a temporary directory,
filled to the last byte on demand, unmounted afterwards (also when the test fails)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


class Disk:
    """A mounted tmpfs; ``fill()`` takes every free byte, ``free()`` gives them back."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._filler = root / ".filler"

    def fill(self) -> None:
        chunk = b"\0" * 4096
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        break
                    chunk = chunk[: len(chunk) // 2]
        finally:
            os.close(fd)
        with pytest.raises(OSError):  # really full: not a byte more
            (self.root / ".probe").write_bytes(b"x" * 1)

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)
        (self.root / ".probe").unlink(missing_ok=True)


@contextlib.contextmanager
def mounted_tmpfs(parent: Path, size: str = "256k") -> Iterator[Disk]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    root = parent / "disk"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(root)],
                   check=True, capture_output=True, timeout=10)
    try:
        yield Disk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False, capture_output=True,
                       timeout=10)
        root.rmdir()
