"""The registry, services and engine of one process, shared by ``chisel run``/``validate``/``nodes`` and
``chisel serve`` (one engine: every run shares its cache)."""
from __future__ import annotations

import argparse
from pathlib import Path

from graph.cache import ResultCache
from graph.engine import Engine
from graph.paths import MODEL_EXTENSIONS, ModelPaths
from graph.registry import NodeRegistry


def build_runtime(args: argparse.Namespace, allow_paths: bool = True):
    """Registry, services and engine for this process (one engine: every run shares its cache)."""
    from nodes.services import create_services

    folders = {}
    if getattr(args, "output_dir", None):
        folders["output"] = [str(Path(args.output_dir).resolve())]
    paths = ModelPaths.from_mapping(getattr(args, "root", None), folders, allow_paths=allow_paths)
    registry = NodeRegistry.discover(plugin_folders=paths.dirs("custom_nodes"))
    services = create_services(paths, device=getattr(args, "device", "auto") or "auto",
                               dtype=getattr(args, "dtype", None), low_vram=getattr(args, "low_vram", False),
                               compile=getattr(args, "compile", None) or "auto",
                               allow_pickle=False if getattr(args, "no_pickle", False) else None)
    cache = ResultCache(ram_bytes=int(getattr(args, "cache_ram_gb", 8.0) * 2**30),
                        device_bytes=int(getattr(args, "cache_device_gb", 4.0) * 2**30))
    return registry, services, Engine(registry, services=services, paths=paths, cache=cache)


MODEL_FOLDERS = ("checkpoints", "unet", "clip", "vae", "controlnet")  # what the diffusers/transformers loaders read


def has_model_files(paths: ModelPaths) -> bool:
    """Whether any folder the model loaders read holds a model file (a diffusers folder counts by its json)."""
    exts = (*MODEL_EXTENSIONS, ".json")
    return any(p.is_file() and p.suffix.lower() in exts
               for kind in MODEL_FOLDERS for base in paths.dirs(kind) if base.is_dir() for p in base.rglob("*"))


def import_model_libraries_in_background(paths: ModelPaths):
    """Start importing diffusers, transformers and accelerate on a daemon thread, so that the first checkpoint load
    does not pay for it (a loader that starts meanwhile waits for that import; :mod:`nodes.loading.libraries`). A
    root with no model file to load (a server of plain nodes) imports nothing ahead."""
    from nodes.loading.libraries import import_in_background

    return import_in_background(lambda: has_model_files(paths))
