"""Discovery through the entry-point group: built-ins and plugins, one broken plugin
never stops the rest."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_bottleneck.discovery import GROUP, discover
from ai_bottleneck.probes.options import OptionError


@pytest.fixture
def plugin_dist(tmp_path: Path) -> Iterator[Path]:
    """A real installed-distribution layout on sys.path declaring test plugins."""
    info = tmp_path / "abtest_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: abtest-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{GROUP}]\n"
        "counter = tests.plugin_probes:create_counter\n"
        "missing_module = tests.no_such_module:create\n"
        "raises = tests.plugin_probes:create_raises\n"
        "unusable = tests.plugin_probes:create_unusable\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))


def test_broken_plugins_are_reported_and_the_rest_go_on(plugin_dist: Path) -> None:
    found = {d.name: d for d in discover(
        only=["counter", "missing_module", "raises", "unusable", "host"])}
    assert found["counter"].usable and found["counter"].probe is not None
    assert not found["missing_module"].usable
    reason = found["missing_module"].availability.reason
    assert "failed to load tests.no_such_module:create" in reason
    assert found["raises"].availability.reason == "failed to start: cannot open the widget"
    assert found["unusable"].availability.reason == "no widget on this host"
    assert found["unusable"].probe is None
    assert "host" in found  # built-ins come through the same group
    for d in found.values():
        if d.probe is not None:
            d.probe.close()


def test_bad_options_name_the_probe_key(plugin_dist: Path) -> None:
    with pytest.raises(OptionError) as info:
        discover({"counter": {"stepp": 2}}, only=["counter"])
    assert str(info.value).startswith("probes.counter.stepp: unknown key")
    lenient = discover({"counter": {"stepp": 2}}, only=["counter"], strict_options=False)
    assert not lenient[0].usable and "bad options" in lenient[0].availability.reason


def test_every_builtin_is_declared() -> None:
    names = {d.name for d in discover(strict_options=False)}
    assert {"gpu", "host", "nic", "http", "download", "iperf3", "oom"} <= names
