"""Headless Chromium (Debian's `chromium`) for the HTML tests: render a page, dump
its DOM after scripts ran, take a screenshot, and collect console messages.

Every run gets a fresh profile directory and no background traffic (no sync,
component updates or first-run pages). Console messages come from
``--enable-logging=stderr`` as ``...:CONSOLE:N] "text", source: URL (line)``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--enable-logging=stderr", "--v=0", "--hide-scrollbars"]
CONSOLE = re.compile(r":CONSOLE(?:\(\d+\)|:\d+)\] (.*)$", re.MULTILINE)
#: Where screenshots are kept after the run (CI can collect the folder).
ARTIFACTS = Path(os.environ.get("AI_BOTTLENECK_TEST_ARTIFACTS",
                                Path(__file__).resolve().parent.parent / "build"
                                / "test-artifacts"))


def binary() -> str:
    """The chromium program; skips the test where it is missing, fails it in CI
    (.ci/run installs it)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs the Debian package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


@dataclass
class Rendered:
    dom: str
    console: list[str]
    stderr: str


def _run(url: str, extra: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([binary(), *FLAGS, f"--user-data-dir={profile}", *extra, url],
                              capture_output=True, text=True, timeout=timeout, check=False)


def render(url: str, *, wait_ms: int = 0, timeout: float = 90) -> Rendered:
    """The DOM after load (and ``wait_ms`` of virtual time for timers)."""
    extra = ["--dump-dom"]
    if wait_ms:
        extra.append(f"--virtual-time-budget={wait_ms}")
    proc = _run(url, extra, timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return Rendered(proc.stdout, CONSOLE.findall(proc.stderr), proc.stderr)


def screenshot(url: str, name: str, *, size: tuple[int, int] = (820, 2400),
               timeout: float = 90) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    proc = _run(url, [f"--window-size={size[0]},{size[1]}", f"--screenshot={path}"], timeout)
    assert proc.returncode == 0 and path.exists(), proc.stderr[-2000:]
    return path
