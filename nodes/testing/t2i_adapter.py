"""Tiny random T2I-Adapters for the tiny models of :mod:`nodes.testing.tiny`, written in the published file layouts.

:func:`build` makes diffusers' ``T2IAdapter`` whose features fit a tiny UNet (a full adapter for the two-level SD1
model, the SDXL adapter for the tiny SDXL model, a light adapter for the three-level SD2 model) and draws every
weight afresh, so its features are far from zero (``sdxl_mid``: the SDXL layout on the three-level refiner UNet, whose
fourth feature goes after the middle block, as with SDXL's own). :func:`write` saves it in TencentARC's original layout
(``conv_in``, ``body.N.block1`` ...; light: ``body.N.body.M.block1`` ...) as safetensors or as a pickle under an
``adapter`` key, in diffusers' layout as one file, or as a diffusers folder.
"""
from __future__ import annotations

from pathlib import Path

import torch

ADAPTERS = {  # name -> (T2IAdapter config, the tiny family it fits)
    "sd1": (dict(in_channels=3, channels=[32, 64], num_res_blocks=2, downscale_factor=8,
                 adapter_type="full_adapter"), "sd1"),
    "sd1_grey": (dict(in_channels=1, channels=[32, 64], num_res_blocks=2, downscale_factor=8,
                      adapter_type="full_adapter"), "sd1"),
    "sdxl": (dict(in_channels=3, channels=[32, 64], num_res_blocks=2, downscale_factor=16,
                  adapter_type="full_adapter_xl"), "sdxl"),
    "sdxl_mid": (dict(in_channels=3, channels=[16, 32, 32, 32], num_res_blocks=2, downscale_factor=16,
                      adapter_type="full_adapter_xl"), "sdxl_refiner"),  # four features: the last after the middle
    "sd2_light": (dict(in_channels=3, channels=[16, 32], num_res_blocks=4, downscale_factor=8,
                       adapter_type="light_adapter"), "sd2"),
}
ORIGINAL_RES_BLOCKS = 2


def build(name: str, seed: int = 0, scale: float = 0.1):
    """The tiny adapter ``name`` (see :data:`ADAPTERS`), every weight drawn from N(0, scale²) (biases too)."""
    from diffusers import T2IAdapter

    ad = T2IAdapter(**ADAPTERS[name][0])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ad.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return ad.eval()


def to_original(adapter) -> dict[str, torch.Tensor]:
    """The adapter's tensors under TencentARC's original names."""
    light = adapter.config.adapter_type == "light_adapter"
    if not light and adapter.config.num_res_blocks != ORIGINAL_RES_BLOCKS:
        raise ValueError("the original full layout has two resnet blocks per level")
    out = {}
    for k, v in adapter.state_dict().items():
        parts = k.split(".")[1:]  # without "adapter."
        if parts[0] == "conv_in":
            name = k[len("adapter."):]
        elif light:
            i = parts[1]
            name = (f"body.{i}.body.{parts[3]}." + ".".join(parts[4:]) if parts[2] == "resnets"
                    else f"body.{i}." + ".".join(parts[2:]))
        else:
            i = int(parts[1])
            if parts[2] == "in_conv":
                name = f"body.{i * ORIGINAL_RES_BLOCKS}.in_conv." + parts[3]
            else:
                name = f"body.{i * ORIGINAL_RES_BLOCKS + int(parts[3])}." + ".".join(parts[4:])
        out[name] = v.detach().clone().contiguous()
    return out


def write(path, adapter, layout: str = "original") -> Path:
    """Write ``adapter``: ``layout`` is ``original`` (safetensors), ``original-pth`` (a pickle holding
    ``{"adapter": state}``), ``diffusers`` (one file) or ``folder`` (``path`` is the folder)."""
    from safetensors.torch import save_file

    path = Path(path)
    if layout == "folder":
        adapter.save_pretrained(str(path), safe_serialization=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "original":
        save_file(to_original(adapter), str(path))
    elif layout == "original-pth":
        torch.save({"adapter": to_original(adapter)}, str(path))
    elif layout == "diffusers":
        save_file({k: v.detach().clone().contiguous() for k, v in adapter.state_dict().items()}, str(path))
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return path
