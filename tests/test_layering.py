"""probes/ never imports the CLI, the exporter or prometheus_client (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BANNED = ("ai_bottleneck.cli", "ai_bottleneck.exporter", "ai_bottleneck.endpoint",
          "prometheus_client")


def test_probes_do_not_import_upper_layers() -> None:
    offenders = []
    for path in sorted((ROOT / "probes").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if any(name == b or name.startswith(b + ".") for b in BANNED):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert offenders == []
    assert len(list((ROOT / "probes").rglob("*.py"))) >= 2  # the check looked at something
