"""System statistics (devices, memory, caches, versions) and freeing memory.

Torch-side facts are read only when torch is already imported (the node library imports it). The model manager
is the node library's (``services.models``, created lazily by the first node that loads a model; the server never
creates it): its figures come from ``services.memory_stats()``, and ``free(unload=...)`` moves idle models off the
device or forgets them.
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
    """The model manager if one exists already (``Services.models`` creates it on first access: never from here)."""
    return getattr(services, "loaded_models", None)


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


def torch_threads() -> dict[str, int] | None:
    """torch's CPU thread counts (within and across operations); None without torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


def system_info(engine: Any, services: Any, queue_counts: dict[str, int],
                workers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The native system route; ``workers``: a cluster's workers (``chisel serve --cluster``)."""
    import aiohttp

    ram_total, ram_free = _meminfo()
    torch = sys.modules.get("torch")
    manager = model_manager(services)
    models = None
    if manager is not None:
        try:
            stats = getattr(services, "memory_stats", None)
            models = stats() if callable(stats) else manager.stats()
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
        "threads": torch_threads(),
        "devices": devices(services),
        "cache": engine.cache.stats().to_dict() if isinstance(getattr(engine, "cache", None), ResultCache) else None,
        "models": models,
        "queue": queue_counts,
        **({"workers": workers} if workers is not None else {}),
    }


def comfy_system_stats(services: Any, workers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """ComfyUI's shape; with a cluster, ``devices`` are the workers' (named after host and worker) and ``workers``
    lists them."""
    ram_total, ram_free = _meminfo()
    torch = sys.modules.get("torch")
    return {"system": {"os": os.name, "ram_total": ram_total, "ram_free": ram_free,
                       "comfyui_version": f"chisel-{CHISEL_VERSION}", "python_version": sys.version,
                       "pytorch_version": getattr(torch, "__version__", ""), "embedded_python": False,
                       "argv": ["chisel", "serve"]},
            "devices": devices(services) if workers is None else [
                {**d, "name": f"{w.get('host')} worker {w['index']}: {d['name']}"}
                for w in workers for d in w.get("devices") or ()],
            **({"workers": workers} if workers is not None else {})}


def free(engine: Any, services: Any, unload_models: bool, free_memory: bool) -> None:
    """Runs on the worker thread between prompts. Loaded models are also node outputs held by the result cache,
    so both options drop the cache; ``unload_models`` then has the model manager forget every loaded file,
    ``free_memory`` has it move idle models off the device; cached device memory goes back to the driver."""
    if not (unload_models or free_memory):
        return
    engine.cache.clear()
    gc.collect()
    manager = model_manager(services)
    if manager is not None:
        manager.free(unload=unload_models)
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
