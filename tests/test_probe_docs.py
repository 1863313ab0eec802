"""docs/probes.md and docs/record-format.md against the code: every built-in probe
documented, and every option table naming exactly the fields of its option class
with the defaults the code has."""

from __future__ import annotations

import dataclasses
import importlib
import re
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from ai_bottleneck.probes.options import OptionError, parse_options

DOCS = Path(__file__).resolve().parent.parent / "docs"
PROBES_MD = DOCS / "probes.md"
RECORD_MD = DOCS / "record-format.md"
# An options table follows its marker: <!-- options: module.Class -->
MARKER = re.compile(r"^<!-- options: ([\w.]+)\.(\w+) -->$")
BUILT_IN = ("gpu", "host", "nic", "http", "download", "iperf3", "oom", "engine",
            "service")
#: Required keys, given so that one option at a time can be parsed.
REQUIRED = {"ai_bottleneck.probes.http.Target": {"url": "http://127.0.0.1/"},
            "ai_bottleneck.probes.engine.Target": {"url": "http://127.0.0.1/metrics"}}


def _option_tables() -> dict[str, list[list[str]]]:
    """'module.Class' -> rows of the table after its marker (cells stripped); [] when
    the marker is followed by text, as for a probe without options."""
    tables: dict[str, list[list[str]]] = {}
    lines = PROBES_MD.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        m = MARKER.match(line.strip())
        if not m:
            continue
        rows = []
        for row in lines[i + 1:]:
            if not row.startswith("|"):
                break
            rows.append([c.strip() for c in row.strip().strip("|").split("|")])
        tables[f"{m.group(1)}.{m.group(2)}"] = rows[2:]  # after header and rule
    return tables


def _class(dotted: str) -> type[Any]:
    module, name = dotted.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    assert dataclasses.is_dataclass(cls) and isinstance(cls, type)
    return cls


def _doc_default(cell: str) -> tuple[bool, Any]:
    """(True, value) for a default written as one code span, read the way a config
    file would give it; (False, None) for prose ("see above", "the URL")."""
    m = re.fullmatch(r"`([^`]*)`", cell)
    if not m:
        return False, None
    text = m.group(1)
    if text == "none":
        return True, None
    try:
        return True, tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return True, text  # a size, duration, rate or percentage, or a bare string


TABLES = _option_tables()


def test_every_option_class_has_a_table() -> None:
    expected = {f"ai_bottleneck.probes.{name}" for name in (
        "gpu.Options", "host.Options", "nic.Options", "http.Options", "http.Target",
        "download.Options", "iperf3.Options", "iperf3_server.ServerOptions", "oom.Options",
        "engine.Options", "engine.Target", "service.Options")}
    expected.add("ai_bottleneck.budget.BudgetOptions")
    assert set(TABLES) == expected


@pytest.mark.parametrize("dotted", sorted(TABLES))
def test_option_table_matches_the_code(dotted: str) -> None:
    cls = _class(dotted)
    rows = TABLES[dotted]
    documented = [re.fullmatch(r"`(\w+)`", r[0]) for r in rows]
    assert all(documented), f"{dotted}: an option name not in `code`: {rows}"
    names = [m.group(1) for m in documented if m]
    assert names == [f.name for f in dataclasses.fields(cls)], dotted
    checked = 0
    for name, row in zip(names, rows, strict=True):
        written, value = _doc_default(row[2])
        if not written:
            continue
        try:
            parsed = getattr(parse_options(cls, {**REQUIRED.get(dotted, {}), name: value}),
                             name)
        except OptionError as exc:
            pytest.fail(f"{dotted}.{name}: documented default {row[2]} does not parse: {exc}")
        actual = next(f for f in dataclasses.fields(cls) if f.name == name)
        default = (actual.default if actual.default is not dataclasses.MISSING
                   else actual.default_factory())  # type: ignore[misc]
        assert parsed == default, f"{dotted}.{name}: docs say {row[2]}, code has {default!r}"
        checked += 1
    assert checked or not rows


@pytest.mark.parametrize("probe", BUILT_IN)
def test_every_built_in_probe_is_documented(probe: str) -> None:
    assert probe in {ep.name for ep in entry_points(group="ai_bottleneck.probes")}
    assert f"\n## {probe}\n" in PROBES_MD.read_text(encoding="utf-8")
    assert f"\n### {probe}\n" in RECORD_MD.read_text(encoding="utf-8")
