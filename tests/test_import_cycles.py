"""The import rules of ARCHITECTURE.md, read from the source (imports inside functions included):
``server -> nodes -> graph`` one way only, and no module imports itself back through another."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("graph", "nodes", "server")
# Imports that close a cycle and are tolerated: none (the list stays so that a deliberate exception is visible).
KNOWN_BACK_EDGES: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every first-party module ``path`` imports, anywhere in the file (``if TYPE_CHECKING:`` blocks excepted: they
    never run); relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m.split(".")[0] in PACKAGES}


def _graph() -> nx.DiGraph:
    files = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    g = nx.DiGraph()
    g.add_nodes_from(files)
    for name, path in files.items():
        for target in _imports(path, name):
            while target and target not in files:  # `from pkg import function`: the module is pkg
                target = target.rpartition(".")[0]
            if target and target != name:
                g.add_edge(name, target)
    return g


def _parents_of(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_layers_import_one_way():
    g = _graph()
    allowed = {"graph": {"graph"}, "nodes": {"nodes", "graph"}, "server": {"server", "nodes", "graph"}}
    wrong = [(a, b) for a, b in g.edges if b.split(".")[0] not in allowed[a.split(".")[0]]]
    assert not wrong, wrong


def test_no_module_imports_itself_back_through_another():
    g = _graph()
    # importing a package runs its __init__: a package importing its own submodules is not a cycle back
    g.remove_edges_from([(a, b) for a, b in list(g.edges) if a in _parents_of(b)])
    assert KNOWN_BACK_EDGES <= set(g.edges), {"gone (remove from KNOWN_BACK_EDGES)": KNOWN_BACK_EDGES - set(g.edges)}
    g.remove_edges_from(KNOWN_BACK_EDGES)
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert not cycles, cycles


def test_the_check_finds_a_cycle(tmp_path):
    """The reader sees relative and function-level imports (so the rule above can fail)."""
    pkg = tmp_path / "nodes" / "x"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("def f():\n    from . import b\n")
    assert _imports(pkg / "a.py", "nodes.x.a") >= {"nodes.x", "nodes.x.b"}
    (pkg / "b.py").write_text("from ..x.a import f\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    import nodes.x.c\n")
    assert "nodes.x.a" in _imports(pkg / "b.py", "nodes.x.b")
    assert "nodes.x.c" not in _imports(pkg / "b.py", "nodes.x.b")
