"""No import cycles inside a package, counting imports inside functions too (a test keeps it so); imports only
for type checkers (``if TYPE_CHECKING:``) do not count."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

REPO = Path(__file__).resolve().parent.parent


def import_graph(package: str) -> nx.DiGraph:
    """Module -> module edges for every import between modules of ``package`` (at any depth of the code)."""
    graph = nx.DiGraph()
    root = REPO / package
    for path in root.rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        graph.add_node(module)
        base = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                parts = base.split(".")
                prefix = ".".join(parts[:len(parts) - node.level + 1]) if node.level else ""
                target = ".".join(p for p in (prefix, node.module) if p)
                targets = [target] + [f"{target}.{a.name}" for a in node.names]
            for target in targets:
                if target.split(".")[0] == package and (REPO / Path(*target.split("."))).with_suffix(".py").exists() \
                        or (REPO / Path(*target.split(".")) / "__init__.py").exists() and target != package:
                    graph.add_edge(module, target)
    return graph


def _runtime_nodes(tree: ast.AST):
    """Every node of the tree except what sits under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                stack.extend(child.orelse)
            else:
                stack.append(child)


@pytest.mark.parametrize("package", ["graph", "nodes"])
def test_no_import_cycles(package):
    graph = import_graph(package)
    assert len(graph) > 10
    assert list(nx.simple_cycles(graph)) == []
