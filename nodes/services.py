"""Runtime services the executor hands to every node as ``ctx.services``: device, folders, model memory."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from graph.paths import ModelPaths
from nodes.loading.weights import pickles_allowed_by_default


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    return device


@dataclass
class Services:
    paths: ModelPaths
    device: torch.device
    dtype: torch.dtype | None = None  # compute dtype override; None picks per device
    low_vram: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
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
                                        device_budget=self.device_budget, allow_pickle=self.allow_pickle)
        return self._models

    def memory_stats(self) -> dict[str, Any]:
        """Model memory figures for the server's system stats (device, budgets, resident models)."""
        return self.models.stats()


def create_services(paths: ModelPaths | None = None, device: str = "auto", dtype: str | None = None,
                    low_vram: bool = False, allow_pickle: bool | None = None) -> Services:
    dt = {None: None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    kw: dict[str, Any] = {}
    if allow_pickle is not None:
        kw["allow_pickle"] = allow_pickle
    return Services(paths=paths or ModelPaths(), device=pick_device(device), dtype=dt, low_vram=low_vram, **kw)
