"""CLIP's image preprocessing, on torch tensors (any device, whole batches).

The published recipe (OpenAI CLIP; transformers' ``CLIPImageProcessor`` defaults): 8-bit pixels, the shortest side
resized to the model's input size with bicubic filtering (antialiased when shrinking, as PIL does), a centre crop of
size x size, then ``(x - mean) / std`` per channel with CLIP's mean and std. ``crop=False`` (ComfyUI's crop "none")
resizes the whole image to size x size instead, changing its aspect ratio.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _quantise(x: torch.Tensor) -> torch.Tensor:
    """To the 256 levels of an 8-bit image (CLIP's preprocessing works on 8-bit pixels)."""
    return (x.clamp(0, 1) * 255).round() / 255


def clip_preprocess(image: torch.Tensor, size: int = 224, crop: bool = True) -> torch.Tensor:
    """IMAGE ``[B, H, W, C]`` floats in 0..1 (C >= 3; an alpha channel is dropped) -> ``[B, 3, size, size]``
    normalised pixel values for a CLIP vision model."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] < 3:
        raise ValueError(f"expected an IMAGE of shape [batch, height, width, 3], got {list(image.shape)}")
    x = _quantise(image[..., :3].float()).permute(0, 3, 1, 2)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if crop:
        # transformers' rule for {"shortest_edge": size}: the long side is truncated, not rounded
        if h <= w:
            nh, nw = size, int(size * w / h)
        else:
            nh, nw = int(size * h / w), size
    else:
        nh, nw = size, size
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        x = _quantise(x)
    if crop:
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, :, top:top + size, left:left + size]
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std
