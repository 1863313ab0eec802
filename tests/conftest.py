"""Shared fixtures. Root-only tests (network namespaces, tc) are marked `root` and
must run in CI, which runs as root: they skip only outside CI."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":
        raise pytest.UsageError("CI must run as root: root-marked tests may not skip in CI")
    skip = pytest.mark.skip(reason="needs root (network namespaces, tc)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
