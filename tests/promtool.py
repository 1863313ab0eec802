"""Find promtool (Debian package `prometheus`) for tests; CI installs it: no skip there."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing: CI must install the `prometheus` package")
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    return path


def run_promtool(args: Sequence[str], *, stdin: bytes | None = None,
                 cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, timeout=120, cwd=cwd, check=False)
