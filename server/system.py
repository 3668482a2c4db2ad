"""System statistics (devices, memory, caches, versions) and freeing memory.

Torch-side facts are read only when torch is already imported (the node library imports it); the model manager,
when the node library provides one, is found by duck typing on the services object (``services.models`` /
``services.model_manager`` / ``services.extras["models"]``) and asked for ``stats()`` and ``unload_all()``.
"""
from __future__ import annotations

import gc
import os
import platform
import sys
from typing import Any

from graph.cache import ResultCache

try:
    from importlib.metadata import version as _dist_version

    CHISEL_VERSION = _dist_version("chisel")
except Exception:  # not installed as a distribution
    CHISEL_VERSION = "0.0.0"


def _meminfo() -> tuple[int, int]:
    total = free = 0
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                kb = int(rest.split()[0]) * 1024
                if key == "MemTotal":
                    total = kb
                elif key == "MemAvailable":
                    free = kb
    except (OSError, ValueError, IndexError):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            pass
    return total, free


def model_manager(services: Any) -> Any:
    if services is None:
        return None
    for name in ("models", "model_manager"):
        found = getattr(services, name, None)
        if found is not None:
            return found
    extras = getattr(services, "extras", None)
    return extras.get("models") if isinstance(extras, dict) else None


def _call(obj: Any, *names: str) -> Any:
    for name in names:
        fn = getattr(obj, name, None)
        if callable(fn):
            return fn()
    return None


def devices(services: Any) -> list[dict[str, Any]]:
    ram_total, ram_free = _meminfo()
    torch = sys.modules.get("torch")
    device = getattr(services, "device", None)
    out: list[dict[str, Any]] = []
    if torch is not None and getattr(device, "type", None) == "cuda" and torch.cuda.is_available():
        indices = [device.index] if device.index is not None else range(torch.cuda.device_count())
        for i in indices:
            free, total = torch.cuda.mem_get_info(i)
            reserved = torch.cuda.memory_reserved(i)
            allocated = torch.cuda.memory_allocated(i)
            out.append({"name": f"cuda:{i} {torch.cuda.get_device_name(i)}", "type": "cuda", "index": i,
                        "vram_total": total, "vram_free": free, "torch_vram_total": reserved,
                        "torch_vram_free": reserved - allocated})
    else:
        out.append({"name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total, "vram_free": ram_free,
                    "torch_vram_total": ram_total, "torch_vram_free": ram_free})
    return out


def system_info(engine: Any, services: Any, queue_counts: dict[str, int]) -> dict[str, Any]:
    import aiohttp

    ram_total, ram_free = _meminfo()
    torch = sys.modules.get("torch")
    manager = model_manager(services)
    models = None
    if manager is not None:
        try:
            models = _call(manager, "stats", "memory_stats", "info")
            models = models.to_dict() if hasattr(models, "to_dict") else models
        except Exception as exc:
            models = {"error": f"{type(exc).__name__}: {exc}"}
    device = getattr(services, "device", None)
    return {
        "versions": {"chisel": CHISEL_VERSION, "python": platform.python_version(), "aiohttp": aiohttp.__version__,
                     "torch": getattr(torch, "__version__", None)},
        "os": sys.platform,
        "memory": {"ram_total": ram_total, "ram_free": ram_free},
        "device": str(device) if device is not None else None,
        "dtype": str(getattr(services, "dtype", None)) if getattr(services, "dtype", None) is not None else None,
        "devices": devices(services),
        "cache": engine.cache.stats().to_dict() if isinstance(getattr(engine, "cache", None), ResultCache) else None,
        "models": models,
        "queue": queue_counts,
    }


def comfy_system_stats(services: Any) -> dict[str, Any]:
    ram_total, ram_free = _meminfo()
    torch = sys.modules.get("torch")
    return {"system": {"os": os.name, "ram_total": ram_total, "ram_free": ram_free,
                       "comfyui_version": f"chisel-{CHISEL_VERSION}", "python_version": sys.version,
                       "pytorch_version": getattr(torch, "__version__", ""), "embedded_python": False,
                       "argv": ["chisel", "serve"]},
            "devices": devices(services)}


def free(engine: Any, services: Any, unload_models: bool, free_memory: bool) -> None:
    """Runs on the worker thread between prompts. ``free_memory`` drops the result cache (which holds loaded
    models as node outputs too) and returns cached device memory; ``unload_models`` asks the model manager to
    unload everything (and drops the result cache when there is no manager)."""
    manager = model_manager(services)
    if unload_models or free_memory:
        if manager is not None:
            _call(manager, "unload_all", "free", "clear")
        if free_memory or manager is None:
            engine.cache.clear()
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and free_memory and torch.cuda.is_available():
        torch.cuda.empty_cache()
