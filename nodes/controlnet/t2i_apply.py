"""T2I-Adapters on a UNet: where their features go, whether an adapter fits a model, its hint and its features.

A T2I-Adapter turns the hint image into one feature map per UNet level, once per run (it sees neither the latent
nor the timestep). diffusers' UNet adds them (``down_intrablock_additional_residuals``) in order: to the output of
each cross-attention down block before its downsampler, to the output of a plain down block after its downsampler,
and one more to the middle block's output when its shape matches (SDXL adapters). :func:`check_fits` compares the
adapter's features (channels and pixel stride, read from its blocks) with those places in the model's UNet, so an
adapter of another family fails before sampling with both lists in the message.

The hint is scaled (nearest-exact) to the latent's pixel size rounded up to a multiple of the adapter's
pixel-unshuffle factor (8 for SD1.x, 16 for SDXL), as ComfyUI does, so the features' sizes follow the UNet's
(stride-2 convolutions and the adapter's ceil-mode pooling both round up) at any latent size. (diffusers' pipelines
instead round the image size down to a multiple of the adapter's total downscale, 64 for SD1.x and 32 for SDXL, and
take the hint at that size; at such sizes the two agree.) A one-channel adapter (sketch, canny) gets the mean of the
image's channels, as in ComfyUI. Which CFG passes an adapter steers is the graph's choice (the conditioning it was
applied to), as in ComfyUI; diffusers' pipelines steer both.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from nodes.controlnet.handle import MODEL_FAMILY, ControlNetHandle


def adapter_layout(module) -> list[tuple[int, int]]:
    """(channels, pixel stride) of each feature a diffusers ``T2IAdapter`` returns."""
    inner = module.adapter
    stride = int(inner.unshuffle.downscale_factor)
    out = []
    for block in inner.body:
        if block.downsample is not None:
            stride *= 2
        last = block.out_conv if hasattr(block, "out_conv") else block.resnets[-1].block2
        out.append((int(last.out_channels), stride))
    return out


def unet_places(config) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """(channels, pixel stride) where diffusers' UNet adds adapter features: one per down block, then the middle."""
    types, widths = list(config["down_block_types"]), [int(c) for c in config["block_out_channels"]]
    stride, places = 8, []
    for i, (kind, width) in enumerate(zip(types, widths)):
        step = 1 if i == len(types) - 1 else 2  # the last level has no downsampler
        if "CrossAttn" in kind:
            places.append((width, stride))
            stride *= step
        else:
            stride *= step
            places.append((width, stride))
    return places, (widths[-1], stride)


def _fmt(pairs) -> str:
    return ", ".join(f"{c}@1/{s}" for c, s in pairs)


def check_fits(control: ControlNetHandle, model, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` when the adapter's features do not meet ``model``'s UNet one for one."""
    feats = adapter_layout(control.module.module)
    places, mid = unet_places(model.config)
    d = len(places)
    fits = feats[:d] == places and (len(feats) == d or (len(feats) == d + 1 and feats[d] == mid))
    if not fits:
        fam = MODEL_FAMILY.get(getattr(model, "family", ""), "this")
        raise ValueError(
            f"{what}: the T2I-Adapter {control.name} ({control.description}) does not fit this {fam} model "
            f"({Path(model.source).name}): its features (channels@scale) are {_fmt(feats)} but the UNet takes "
            f"{_fmt(places)} (and {_fmt([mid])} after its middle block). Use a T2I-Adapter made for {fam} models.")


def hint_size(control: ControlNetHandle, height: int, width: int) -> tuple[int, int]:
    """The pixel size the adapter's hint is scaled to for a latent of ``height`` x ``width`` pixels."""
    f = int(control.config.get("downscale_factor", 8))
    return math.ceil(height / f) * f, math.ceil(width / f) * f


def hint_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """IMAGE [B, H, W, C] -> [B, channels, H, W] float."""
    hint = image.permute(0, 3, 1, 2).float()
    if channels == 1 and hint.shape[1] > 1:
        return hint.mean(1, keepdim=True)
    return hint[:, :channels]


def features(control: ControlNetHandle, hint: torch.Tensor, strength: float, dtype: torch.dtype) -> list:
    """The adapter's features for ``hint`` ([B, C, H, W] on the CPU), scaled by ``strength``, on the device."""
    mm = control.module
    with control.manager.use(mm), torch.no_grad():
        feats = mm.module(hint.to(control.manager.device, mm.dtype))
    return [(f * strength).to(dtype) for f in feats]
