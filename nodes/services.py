"""Runtime services the executor hands to every node as ``ctx.services``: device, folders, model memory."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from graph.paths import ModelPaths


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


def create_services(paths: ModelPaths | None = None, device: str = "auto", dtype: str | None = None,
                    low_vram: bool = False) -> Services:
    dt = {None: None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    return Services(paths=paths or ModelPaths(), device=pick_device(device), dtype=dt, low_vram=low_vram)
