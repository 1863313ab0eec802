"""Shared fixtures. Root-only tests (network namespaces, tc) are marked `root` and
must run in CI, which runs as root: they skip only outside CI.

The tests import the installed package ``ai_bottleneck`` (the folders agent/ and
probes/ become it only when installed), so a stale install would test old code:
the session refuses to start when the installed files differ from the tree.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _digest(folders: dict[str, Path]) -> dict[str, str]:
    out: dict[str, str] = {}
    for prefix, folder in folders.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).as_posix()
            out[prefix + rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def pytest_sessionstart(session: pytest.Session) -> None:
    try:
        import ai_bottleneck
    except ImportError:
        raise pytest.UsageError(
            "ai_bottleneck is not installed: run `python -m pip install '.[test]'` "
            "(README: Run the tests)") from None
    installed = Path(ai_bottleneck.__file__).resolve().parent
    if installed == ROOT / "agent":
        return
    source = _digest({"": ROOT / "agent", "probes/": ROOT / "probes"})
    if source != _digest({"": installed}):
        raise pytest.UsageError(
            f"the installed ai_bottleneck ({installed}) differs from agent/ and probes/: "
            "run `python -m pip install --no-deps .` first")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":
        raise pytest.UsageError("CI must run as root: root-marked tests may not skip in CI")
    skip = pytest.mark.skip(reason="needs root (network namespaces, tc)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
