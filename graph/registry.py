"""The node registry: every node type Chisel knows, found by discovery.

Sources, in order: the ``chisel.nodes`` entry point group (Chisel's own ``nodes`` package registers itself
this way, third-party packages the same), then the plug-in folders (``custom_nodes/``: each ``.py`` file or
package in it). A module contributes every :class:`~graph.node.Node` subclass *defined in it* that has a
``type``; a package contributes those of all its submodules. Two nodes with one type name is an error that
names both.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from .node import Node

ENTRY_POINT_GROUP = "chisel.nodes"


class DuplicateNodeError(RuntimeError):
    pass


class NodeLoadError(RuntimeError):
    pass


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def check_run_signature(cls: type[Node]) -> None:
    """A node declares each input once: ``run(self, ctx, <declared inputs>)`` takes exactly the declared names
    (or ``**inputs``) and states no defaults of its own (they come from ``Input(default=...)``)."""
    params = list(inspect.signature(cls.run).parameters.values())[2:]  # self, ctx
    declared = [i.name for i in cls.inputs]
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    catch_all = any(p.kind is p.VAR_KEYWORD for p in params)
    problems = []
    extra = [n for n in named if n not in declared]
    if extra:
        problems.append(f"run() takes {', '.join(extra)}, which {'is' if len(extra) == 1 else 'are'} not declared")
    missing = [n for n in declared if n not in named]
    if missing and not catch_all:
        problems.append(f"run() lacks declared input{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    defaults = [p.name for p in params if p.default is not p.empty]
    if defaults:
        problems.append(f"run() gives {', '.join(defaults)} a default; declare it once, in Input(default=...)")
    if problems:
        raise TypeError(f"node {cls.type!r} ({_origin(cls)}): " + "; ".join(problems))


class NodeRegistry:
    def __init__(self, nodes: Iterable[type[Node]] = ()):
        self._nodes: dict[str, type[Node]] = {}
        for cls in nodes:
            self.register(cls)

    def register(self, cls: type[Node]) -> type[Node]:
        if not (isinstance(cls, type) and issubclass(cls, Node)) or not getattr(cls, "type", None):
            raise TypeError(f"{cls!r} is not a Node subclass with a type name")
        existing = self._nodes.get(cls.type)
        if existing is not None and existing is not cls:
            raise DuplicateNodeError(
                f"two nodes are named {cls.type!r}: {_origin(existing)} and {_origin(cls)}")
        names = [i.name for i in cls.inputs]
        if len(names) != len(set(names)):
            raise TypeError(f"node {cls.type!r} ({_origin(cls)}) declares an input twice")
        check_run_signature(cls)
        self._nodes[cls.type] = cls
        return cls

    def register_module(self, module: ModuleType) -> list[type[Node]]:
        found = [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                 if issubclass(obj, Node) and obj is not Node and obj.__module__ == module.__name__
                 and "type" in obj.__dict__]
        for cls in found:
            self.register(cls)
        return found

    def register_package(self, package: ModuleType) -> list[type[Node]]:
        found = self.register_module(package)
        for info in pkgutil.walk_packages(getattr(package, "__path__", []), package.__name__ + "."):
            found += self.register_module(importlib.import_module(info.name))
        return found

    def load_plugin_folder(self, folder: Path) -> list[type[Node]]:
        found: list[type[Node]] = []
        if not folder.is_dir():
            return found
        for path in sorted(folder.iterdir()):
            if path.name.startswith((".", "_")):
                continue
            if path.is_file() and path.suffix == ".py":
                target = path
            elif path.is_dir() and (path / "__init__.py").is_file():
                target = path / "__init__.py"
            else:
                continue
            name = f"chisel_custom_nodes.{path.stem}"
            spec = importlib.util.spec_from_file_location(
                name, target, submodule_search_locations=[str(path)] if path.is_dir() else None)
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                raise NodeLoadError(f"plug-in {path} failed to import: {exc}") from exc
            found += self.register_package(module) if path.is_dir() else self.register_module(module)
        return found

    @classmethod
    def discover(cls, plugin_folders: Iterable[Path] = (), entry_point_group: str = ENTRY_POINT_GROUP) -> "NodeRegistry":
        reg = cls()
        for ep in sorted(entry_points(group=entry_point_group), key=lambda e: e.name):
            try:
                target = ep.load()
            except Exception as exc:
                raise NodeLoadError(f"node package {ep.name!r} ({ep.value}) failed to import: {exc}") from exc
            if isinstance(target, ModuleType):
                reg.register_package(target)
            elif isinstance(target, type):
                reg.register(target)
            else:  # a callable returning node classes
                for node_cls in target():
                    reg.register(node_cls)
        for folder in plugin_folders:
            reg.load_plugin_folder(Path(folder))
        return reg

    def get(self, type_name: str) -> type[Node] | None:
        return self._nodes.get(type_name)

    def __contains__(self, type_name: str) -> bool:
        return type_name in self._nodes

    def __iter__(self):
        return iter(sorted(self._nodes))

    def __len__(self) -> int:
        return len(self._nodes)

    def schemas(self, paths: Any = None) -> dict[str, dict[str, Any]]:
        return {name: self._nodes[name].schema(paths) for name in sorted(self._nodes)}
