"""The "writing a probe plugin" example of docs/architecture.md, run for real: installed
as a third-party distribution, found through the entry-point group, built with its
options, sampled by the real sampler. It imports one module of this package."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ai_bottleneck.discovery import GROUP, discover
from ai_bottleneck.probes.base import Availability, OptionError, Sample
from ai_bottleneck.sampler import Round, Sampler

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def example() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Writing a probe plugin", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None, "the plugin section has no Python example"
    return found.group(1)


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Path]:
    """The example as module ``abtest_disk.disk`` of a distribution on sys.path."""
    package = tmp_path / "abtest_disk"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "disk.py").write_text(example())
    info = tmp_path / "abtest_disk-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: abtest-disk\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\ndisk = abtest_disk.disk:create\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("abtest_disk")]:
            del sys.modules[name]


def test_the_example_needs_one_import_from_the_package() -> None:
    tree = ast.parse(example())
    own = {node.module for node in ast.walk(tree)
           if isinstance(node, ast.ImportFrom) and node.module
           and node.module.split(".")[0] == "ai_bottleneck"}
    own |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
            for a in node.names if a.name.split(".")[0] == "ai_bottleneck"}
    assert own == {"ai_bottleneck.probes.base"}


def test_the_example_runs_as_a_plugin(installed: Path) -> None:
    [found] = discover({"disk": {"path": str(installed)}}, only=["disk"])
    assert found.usable and found.probe is not None, found.availability
    assert found.availability == Availability.yes(f"free space of {installed}")
    rounds: list[Round] = []

    def consume(batch: Sequence[Round]) -> None:
        rounds.extend(batch)

    sampler = Sampler([found.probe], interval_seconds=0.5, consumer=consume)
    try:
        sampler.tick()
    finally:
        sampler.close()
    samples: list[Sample] = [s for r in rounds for s in r.samples]
    assert len(samples) == 1 and samples[0].ok
    assert samples[0].labels == {"path": str(installed)}
    assert samples[0].values["free_bytes"] > 0


def test_the_example_reports_what_it_cannot_do(installed: Path) -> None:
    [missing] = discover({"disk": {"path": str(installed / "nope")}}, only=["disk"])
    assert not missing.usable
    assert missing.availability.reason == f"{installed / 'nope'} is not a folder"
    with pytest.raises(OptionError, match=r"^probes\.disk\.pathh: unknown key"):
        discover({"disk": {"pathh": "/"}}, only=["disk"])
    with pytest.raises(OptionError, match=r"^probes\.disk\.interval_seconds: must be >= 1"):
        discover({"disk": {"interval_seconds": "500ms"}}, only=["disk"])
