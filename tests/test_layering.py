"""The package's layers, read from its import graph (ast over agent/ and probes/).

- No import cycle anywhere in the package, lazy (function-level) imports included.
- A probe module imports, from this package, only the plugin contract
  (``ai_bottleneck.probes.base``) and other modules of ``ai_bottleneck.probes``;
  never an agent module (so never the CLI, exporter, endpoint or config).
- probes/ never imports prometheus_client (STYLE.md).
- No module is over 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "ai_bottleneck"
PROBES = f"{PACKAGE}.probes"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    base = [PACKAGE] if parts[0] == "agent" else [PACKAGE, "probes"]
    rest = parts[1:]
    if rest and rest[-1] == "__init__":
        rest = rest[:-1]
    return ".".join(base + rest)


def _sources() -> dict[str, Path]:
    paths = sorted((ROOT / "agent").rglob("*.py")) + sorted((ROOT / "probes").rglob("*.py"))
    return {_module_name(p): p for p in paths}


def _imports(module: str, path: Path, known: set[str]) -> dict[str, int]:
    """The package modules ``module`` imports (module -> first line), and the third-party
    roots it imports (under their own name)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # ``from ai_bottleneck.probes import nvml`` imports the module nvml.
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known
                     else node.module for a in node.names]
        for name in names:
            found.setdefault(name, node.lineno)
    return found


def _graph() -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    sources = _sources()
    known = set(sources)
    graph = {m: _imports(m, p, known) for m, p in sources.items()}
    return graph, sources


def test_the_graph_covers_the_package() -> None:
    graph, _ = _graph()
    assert f"{PROBES}.base" in graph and f"{PACKAGE}.pipeline" in graph
    assert len([m for m in graph if m.startswith(PROBES + ".")]) >= 10
    # The parser sees lazy imports too: the CLI imports its commands inside functions.
    assert f"{PACKAGE}.daemon" in graph[f"{PACKAGE}.cli"]


def test_no_import_cycle() -> None:
    graph, _ = _graph()
    inner = {m: [n for n in deps if n in graph and n != m] for m, deps in graph.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in inner[m]:
            if state.get(n) == 1:
                cycles.append([*path[path.index(n):], n])
            elif n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(inner):
        if m not in state:
            visit(m)
    assert cycles == []


def test_probes_import_only_the_contract_and_their_helpers() -> None:
    graph, sources = _graph()
    offenders = []
    for module, deps in graph.items():
        if not (module == PROBES or module.startswith(PROBES + ".")):
            continue
        for name, line in deps.items():
            own = name == PACKAGE or name.startswith(PACKAGE + ".")
            # The root package gives only __version__ (the HTTP probes' User-Agent).
            allowed = name in (PACKAGE, PROBES) or name.startswith(PROBES + ".")
            if own and not allowed:
                offenders.append(f"{sources[module].relative_to(ROOT)}:{line} imports {name}")
            if name == "prometheus_client" or name.startswith("prometheus_client."):
                offenders.append(f"{sources[module].relative_to(ROOT)}:{line} imports {name}")
    assert offenders == []


def test_built_in_probes_reach_the_agent_only_through_the_contract() -> None:
    """A probe module names the contract module for Probe, Sample, options and so on,
    never the contract's own helper modules (sample, options), so the contract is one
    import for built-in and third-party probes alike."""
    graph, sources = _graph()
    helpers = {f"{PROBES}.sample", f"{PROBES}.options"}
    offenders = [f"{sources[m].relative_to(ROOT)}:{line} imports {name}"
                 for m, deps in graph.items()
                 if m.startswith(PROBES + ".") and m != f"{PROBES}.base" and m not in helpers
                 for name, line in deps.items() if name in helpers]
    assert offenders == []


def test_no_module_over_400_lines() -> None:
    _, sources = _graph()
    long = {str(p.relative_to(ROOT)): n for p in sources.values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
