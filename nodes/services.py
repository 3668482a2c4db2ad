"""Runtime services the executor hands to every node as ``ctx.services``: device, folders, model memory."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from graph.paths import ModelPaths
from nodes.loading.weights import pickles_allowed_by_default
from nodes.memory.compile import use_persistent_cache


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    return device


def set_cpu_threads(threads: int | None) -> None:
    """Have torch use ``threads`` CPU threads within one operation from now on, in every thread of this process
    (each thread reads the setting when it first runs an operation; call this before starting threads that run
    nodes). The inter-op pool gets the same number when it can still be sized (once per process, before any
    inter-op work). None leaves torch's own choice (one thread per core, or ``OMP_NUM_THREADS``)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # sized already (by an earlier call or by inter-op work): only the intra-op count changes
        pass


class FileWriter(Protocol):
    """Writes output files off the sampling thread (the server offers one; without it nodes write in place)."""

    def submit(self, path: Path, write: Callable[[Path], None]) -> Any:
        """Reserve ``path`` at once (``FileExistsError`` when taken) and have ``write(tmp)`` fill it later."""


@dataclass
class Services:
    """What every node gets as ``ctx.services``; each member is declared here."""

    paths: ModelPaths
    device: torch.device
    dtype: torch.dtype | None = None  # compute dtype override; None picks per device
    low_vram: bool = False
    file_writer: FileWriter | None = None  # saving nodes hand their files to it when set
    compile: str = "auto"  # the UNet through torch.compile: auto | off | on | max (nodes.memory.compile)
    # .ckpt/.pt/.bin files load weights-only unless refused (--no-pickle, CHISEL_NO_PICKLE): nodes.loading.weights
    allow_pickle: bool = field(default_factory=pickles_allowed_by_default)
    device_budget: int | None = None  # bytes of model weights allowed on the device; None: total minus a reserve
    _models: Any = field(default=None, repr=False)

    @property
    def models(self):
        """The :class:`nodes.memory.manager.ModelManager` (created on first use: loads files once, places
        modules on the device by budget, reports memory)."""
        if self._models is None:
            from nodes.memory.manager import ModelManager

            self._models = ModelManager(self.device, dtype=self.dtype, low_vram=self.low_vram,
                                        device_budget=self.device_budget, allow_pickle=self.allow_pickle,
                                        compile=self.compile)
            if self._models.compile_mode != "off":
                use_persistent_cache(self.paths.root / ".cache" / "torch-compile")
        return self._models

    @property
    def loaded_models(self):
        """The model manager if it exists already, else None (never creates it)."""
        return self._models

    def memory_stats(self) -> dict[str, Any]:
        """Model memory figures for the server's system stats (device, budgets, resident models)."""
        return self.models.stats()


def create_services(paths: ModelPaths | None = None, device: str = "auto", dtype: str | None = None,
                    low_vram: bool = False, allow_pickle: bool | None = None, compile: str = "auto") -> Services:
    dt = {None: None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    kw: dict[str, Any] = {}
    if allow_pickle is not None:
        kw["allow_pickle"] = allow_pickle
    return Services(paths=paths or ModelPaths(), device=pick_device(device), dtype=dt, low_vram=low_vram,
                    compile=compile, **kw)
