"""The model manager: loads each model file once, owns where its modules live, and reports memory.

- Loaded files are keyed by identity (resolved path, size, mtime) and compute dtype: loading the same file again
  returns the same modules (never loaded twice).
- Modules rest on the CPU in their compute dtype and move to the device when a node uses them
  (:meth:`ModelManager.use`). When the device budget is short, least-recently-used modules that are not in use move
  back to the CPU first.
- Low-VRAM mode keeps peak device memory small: a module goes back to the CPU as soon as its node is done with it
  (so while the UNet samples, the text encoders and VAE are off the device), and a module that alone exceeds the
  budget runs with per-submodule offloading (accelerate's ``cpu_offload``: weights stream in as each layer runs).
- :meth:`ModelManager.stats` gives the figures for the server's system stats; model memory is accounted here, not
  in the result cache (handles report ``__chisel_nbytes__() == {}``).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from nodes.memory.compile import PARTS, CompiledModule, prepare_for_compile, resolve_mode
from nodes.memory.handles import LoadedBundle, make_bundle, make_vae_handle

log = logging.getLogger(__name__)

GiB = 1024 ** 3


def module_nbytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def file_key(path: Path) -> tuple:
    p = Path(path).resolve()
    if p.is_dir():
        stamps = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.rglob("*")) if f.is_file()]
        return (str(p), tuple(stamps))
    st = p.stat()
    return (str(p), st.st_size, st.st_mtime_ns)


class ManagedModule:
    """One torch module under the manager's control (a UNet, a text encoder, a VAE)."""

    def __init__(self, manager: "ModelManager", name: str, module: torch.nn.Module, source: str, dtype: torch.dtype):
        self.manager = manager
        self.name = name
        self.module = module
        self.source = source
        self.dtype = dtype
        self.nbytes = module_nbytes(module)
        self.on_device = False
        self.sequential = False
        self.pins = 0
        self.hooked = 0  # module patches attached now (nodes.patches): compiled graphs would not see their hooks
        self.storage_dtype: torch.dtype | None = None  # fp8 weight storage (nodes.memory.weight_storage): eager only
        self.last_used = 0.0
        self._compiled: CompiledModule | None = None
        self._parts: dict[str, torch.nn.Module] = {}  # callable pieces of the module (runner(part))
        self._compiled_parts: dict[str, CompiledModule] = {}

    def runner(self, part: str | None = None):
        """What to call for a forward pass: the module, or its compiled form (on the device, compile on, weights
        not streamed, no forward hooks attached by a module patch: torch.compile does not guard on hooks; weights
        not kept in another dtype than they compute in: their casting hooks change parameters mid-forward).
        ``part`` calls a piece of the module instead of its forward (:data:`nodes.memory.compile.PARTS`, e.g.
        ``"vae_decode"``: latents -> decoded image tensor), eager or compiled by the same rules."""
        eager = self.module if part is None else self.part(part)
        mode = self.manager.compile_mode
        if mode == "off" or self.sequential or not self.on_device or self.hooked or self.storage_dtype is not None:
            return eager
        compiled = self._compiled if part is None else self._compiled_parts.get(part)
        if compiled is None or compiled.mode != mode:
            if self.manager.device.type == "cuda":
                prepare_for_compile(self.module)
            compiled = CompiledModule(eager, mode, backend=self.manager.compile_backend)
            if part is None:
                self._compiled = compiled
            else:
                self._compiled_parts[part] = compiled
        return compiled

    def part(self, part: str) -> torch.nn.Module:
        module = self._parts.get(part)
        if module is None:
            module = self._parts[part] = PARTS[part](self.module)
        return module

    @property
    def device(self) -> torch.device:
        return self.manager.device if self.on_device else torch.device("cpu")

    def __repr__(self) -> str:
        return f"ManagedModule({self.name}, {self.nbytes / 2**20:.1f} MiB, {self.device}, {self.dtype})"


class ModelManager:
    def __init__(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None, low_vram: bool = False,
                 device_budget: int | None = None, reserve: int | None = None, allow_pickle: bool | None = None,
                 compile: str = "auto", compile_backend: str = "inductor"):
        self.device = torch.device(device)
        # "off" | "on" | "max" (nodes.memory.compile); another backend than inductor is for tests on the CPU
        self.compile_mode = resolve_mode(compile, self.device) if compile_backend == "inductor" else compile
        self.compile_backend = compile_backend
        self.dtype_override = dtype
        self.low_vram = low_vram
        self.allow_pickle = allow_pickle
        self._budget = device_budget
        self._reserve = reserve
        self._lock = threading.RLock()
        self._modules: "OrderedDict[int, ManagedModule]" = OrderedDict()  # LRU order: oldest first
        self._files: dict[tuple, Any] = {}
        self._file_locks: dict[tuple, threading.Lock] = {}
        self.loads = 0  # files actually read (for tests and stats)

    # -- dtypes ---------------------------------------------------------------------------------------------
    def compute_dtype(self, kind: str = "unet", force_upcast: bool = False) -> torch.dtype:
        """fp32 on the CPU; fp16 on CUDA (bf16 where fp16 would overflow: an SDXL VAE), unless overridden."""
        if self.dtype_override is not None and not (kind == "vae" and force_upcast and
                                                    self.dtype_override == torch.float16):
            return self.dtype_override
        if self.device.type == "cpu":
            return torch.float32
        if self.device.type == "cuda":
            if kind == "vae" and force_upcast:
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
            return torch.float16
        if self.device.type == "mps":
            return torch.float16
        return torch.float32

    # -- budget -----------------------------------------------------------------------------------------------
    def device_budget(self) -> int:
        """Bytes of model weights allowed on the device at once."""
        if self._budget is not None:
            return self._budget
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            reserve = self._reserve if self._reserve is not None else max(2 * GiB, total // 5)
            return max(0, total - reserve)
        return 1 << 62  # the CPU "device" is the host: no budget to enforce

    def resident_bytes(self) -> int:
        return sum(m.nbytes for m in self._modules.values() if m.on_device and not m.sequential)

    # -- registration -----------------------------------------------------------------------------------------
    def register(self, name: str, module: torch.nn.Module, source: str, dtype: torch.dtype) -> ManagedModule:
        if any(p.dtype != dtype for p in module.parameters() if p.is_floating_point()):
            # torch's own .to: diffusers' override warns about fp32-pinned modules, which SD models do not have
            torch.nn.Module.to(module, dtype=dtype)
        mm = ManagedModule(self, name, module, source, dtype)
        with self._lock:
            self._modules[id(mm)] = mm
        return mm

    def modules(self) -> list[ManagedModule]:
        return list(self._modules.values())

    # -- placement --------------------------------------------------------------------------------------------
    def _touch(self, mm: ManagedModule) -> None:
        mm.last_used = time.monotonic()
        self._modules.move_to_end(id(mm))

    def _offload(self, mm: ManagedModule) -> None:
        if mm.sequential:
            from accelerate.hooks import remove_hook_from_module

            remove_hook_from_module(mm.module, recurse=True)
            mm.sequential = False
        if mm.on_device:
            self._move(mm, torch.device("cpu"))
            mm.on_device = False

    def _make_room(self, need: int, keep: set[int]) -> bool:
        budget = self.device_budget()
        for key, other in list(self._modules.items()):  # oldest first
            if self.resident_bytes() + need <= budget:
                break
            if key in keep or other.pins or not other.on_device:
                continue
            log.info("offloading %s to make room for %.0f MiB", other.name, need / 2**20)
            self._offload(other)
        return self.resident_bytes() + need <= budget

    def load_to_device(self, mm: ManagedModule, keep: set[int] | None = None) -> None:
        with self._lock:
            self._touch(mm)
            if mm.on_device or self.device.type == "cpu":
                mm.on_device = mm.on_device or self.device.type == "cpu"
                return
            fits = self._make_room(mm.nbytes, (keep or set()) | {id(mm)})
            if not fits and self.low_vram:
                from accelerate import cpu_offload

                log.info("%s (%.0f MiB) exceeds the device budget: streaming its layers", mm.name, mm.nbytes / 2**20)
                cpu_offload(mm.module, execution_device=self.device)
                mm.sequential = True
                mm.on_device = True
                return
            self._move(mm, self.device)
            mm.on_device = True

    def _move(self, mm: ManagedModule, device: torch.device) -> None:
        """The one place weights physically move (tests replace it to exercise placement without a GPU)."""
        torch.nn.Module.to(mm.module, device)

    @contextmanager
    def use(self, *mms: ManagedModule):
        """Have these modules on the device for the duration of the block (pinned against eviction)."""
        keep = {id(m) for m in mms}
        with self._lock:
            for mm in mms:
                self.load_to_device(mm, keep)
                mm.pins += 1
        try:
            yield
        finally:
            with self._lock:
                for mm in mms:
                    mm.pins -= 1
                    if self.low_vram and mm.pins == 0 and self.device.type != "cpu":
                        self._offload(mm)

    def free(self, unload: bool = False) -> None:
        """Move every idle module off the device; with ``unload`` also forget loaded files (handles still held by
        the result cache keep their modules alive until dropped)."""
        with self._lock:
            for mm in list(self._modules.values()):
                if not mm.pins:
                    self._offload(mm)
            if unload:
                self._files.clear()
                self._modules = OrderedDict((k, m) for k, m in self._modules.items() if m.pins)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- loading ----------------------------------------------------------------------------------------------
    def _once(self, key: tuple, factory):
        with self._lock:
            if key in self._files:
                return self._files[key]
            lock = self._file_locks.setdefault(key, threading.Lock())
        with lock:  # one load per file even when two runs ask at once
            with self._lock:
                if key in self._files:
                    return self._files[key]
            value = factory()
            with self._lock:
                self._files[key] = value
                self.loads += 1
            return value

    def load_once(self, kind: Any, path: str | Path, factory):
        """``factory()``, run once per (kind, file identity, compute dtype): for loaders of single components
        (``kind`` may carry the identity of further files the value depends on)."""
        return self._once((kind, file_key(Path(path)), str(self.compute_dtype())), factory)

    def load_checkpoint(self, path: str | Path, progress=None) -> LoadedBundle:
        """MODEL, CLIP and VAE handles of a checkpoint file or diffusers folder (loaded once per file identity).
        ``progress`` (the node's ``ctx.progress``) hears the load's stages; an interrupt raised from it leaves
        nothing loaded or registered (the modules are registered only once every stage is through)."""
        from nodes.loading.checkpoint import load_checkpoint  # diffusers and transformers: imported when used

        path = Path(path)
        key = ("checkpoint", file_key(path), str(self.compute_dtype()))
        allow = self.allow_pickle

        def factory():
            loaded = load_checkpoint(path, allow_pickle=allow, progress=progress)
            return make_bundle(self, loaded)

        return self._once(key, factory)

    def load_vae(self, path: str | Path, progress=None):
        """A VAE handle from a standalone VAE file (LDM or diffusers key layout); ``progress`` as for checkpoints."""
        from nodes.loading.vae_file import load_vae_file

        path = Path(path)
        key = ("vae", file_key(path), str(self.compute_dtype("vae")))

        def factory():
            vae, cfg = load_vae_file(path, allow_pickle=self.allow_pickle, progress=progress)
            return make_vae_handle(self, vae, cfg, str(path), family_hint=None)

        return self._once(key, factory)

    # -- figures ----------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._lock:
            mods = [{"name": m.name, "source": m.source, "bytes": m.nbytes, "device": str(m.device),
                     "dtype": str(m.dtype).replace("torch.", ""),
                     "weights_dtype": str(m.storage_dtype or m.dtype).replace("torch.", ""), "in_use": m.pins > 0,
                     "streamed": m.sequential} for m in self._modules.values()]
        out: dict[str, Any] = {
            "device": str(self.device),
            "low_vram": self.low_vram,
            "files_loaded": len(self._files),
            "models": mods,
            "model_bytes_ram": sum(m["bytes"] for m in mods if m["device"] == "cpu"),
            "model_bytes_device": sum(m["bytes"] for m in mods if m["device"] != "cpu"),
            "device_budget": self.device_budget() if self.device.type != "cpu" else None,
        }
        if self.device.type == "cuda" and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info(self.device)
            out.update({"vram_total": total, "vram_free": free,
                        "torch_vram_allocated": torch.cuda.memory_allocated(self.device),
                        "torch_vram_reserved": torch.cuda.memory_reserved(self.device),
                        "torch_vram_peak": torch.cuda.max_memory_allocated(self.device)})
        ram = _ram()
        if ram:
            out.update(ram)
        return out


def _ram() -> dict[str, int]:
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if ":" in line}
        return {"ram_total": info.get("MemTotal", 0), "ram_free": info.get("MemAvailable", info.get("MemFree", 0))}
    except OSError:
        try:
            pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            return {"ram_total": pages}
        except (ValueError, OSError, AttributeError):
            return {}
