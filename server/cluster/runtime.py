"""How each cluster worker builds its own registry, services and engine (plain data: it travels to the actors)."""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RuntimeSpec:
    root: str | None = None
    device: str = "auto"
    dtype: str | None = None
    low_vram: bool = False
    cache_ram_gb: float = 8.0
    cache_device_gb: float = 4.0
    compile: str = "auto"
    no_pickle: bool = False
    output_dir: str | None = None
    threads: int | None = None  # torch's CPU threads per operation (None: torch's choice; Ray sets one per CPU asked)
    allow_paths: bool = False  # `chisel run` accepts model files given by path; the server does not
    # Without the node library (no torch): the registry is the plug-in folders (and entry point group) only and the
    # services are bare (paths and the file writer). The server tests' toy nodes run this way.
    plain: bool = False
    plugin_folders: list[str] = field(default_factory=list)
    entry_point_group: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, root: str | Path | None = None,
                  allow_paths: bool = False, threads: int | None = None) -> "RuntimeSpec":
        """The worker's runtime from the command's flags; ``root``: the command's resolved root folder."""
        root = root or getattr(args, "root", None)
        output = getattr(args, "output_dir", None)
        return cls(root=str(Path(root).resolve()) if root else None, device=getattr(args, "device", "auto") or "auto",
                   output_dir=str(Path(output).resolve()) if output else None, allow_paths=allow_paths,
                   dtype=getattr(args, "dtype", None), low_vram=bool(getattr(args, "low_vram", False)),
                   cache_ram_gb=float(getattr(args, "cache_ram_gb", 8.0)),
                   cache_device_gb=float(getattr(args, "cache_device_gb", 4.0)),
                   compile=getattr(args, "compile", None) or "auto",
                   no_pickle=bool(getattr(args, "no_pickle", False)),
                   threads=threads if threads is not None else getattr(args, "threads", None))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def build(self) -> tuple[Any, Any, Any]:
        """(registry, services, engine) for one worker process."""
        if not self.plain:
            from ..runtime import build_runtime

            return build_runtime(argparse.Namespace(**self.to_dict()), allow_paths=self.allow_paths)
        from types import SimpleNamespace

        from graph.cache import ResultCache
        from graph.engine import Engine
        from graph.paths import ModelPaths
        from graph.registry import NodeRegistry

        folders = {"output": [self.output_dir]} if self.output_dir else {}
        paths = ModelPaths.from_mapping(self.root, folders, allow_paths=self.allow_paths)
        kw = {"entry_point_group": self.entry_point_group} if self.entry_point_group else {}
        registry = NodeRegistry.discover(plugin_folders=[Path(p) for p in self.plugin_folders], **kw)
        services = SimpleNamespace(paths=paths, file_writer=None)
        cache = ResultCache(ram_bytes=int(self.cache_ram_gb * 2**30), device_bytes=int(self.cache_device_gb * 2**30))
        return registry, services, Engine(registry, services=services, paths=paths, cache=cache)
