"""Mask helpers for inpainting: growing a mask and preparing the pixels and mask VAEEncodeForInpaint needs."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def grow_mask(mask: torch.Tensor, by: int) -> torch.Tensor:
    """Dilate a [B, H, W] 0/1 mask with a ``by`` x ``by`` box (about by/2 pixels on each side)."""
    if by <= 0:
        return mask
    lo, hi = (by - 1) // 2 + (by - 1) % 2, (by - 1) // 2  # ceil, floor of (by-1)/2
    m = F.pad(mask[:, None], (lo, hi, lo, hi))
    return F.max_pool2d(m, kernel_size=by, stride=1)[:, 0]


def inpaint_inputs(pixels: torch.Tensor, mask: torch.Tensor, factor: int, grow_mask_by: int):
    """(pixels cropped to a multiple of ``factor`` with the masked area set to mid-gray, the grown 0/1 noise mask at
    that pixel size)."""
    b, H, W = pixels.shape[:3]
    mask = mask.reshape(-1, mask.shape[-2], mask.shape[-1]).float()
    mh, mw = mask.shape[-2:]
    if abs(mh / mw - H / W) > 0.02 * (H / W):
        raise ValueError(f"the mask is {mw}x{mh} but the image is {W}x{H}: its aspect ratio differs; give a mask of "
                         "the image's size")
    if mask.shape[0] not in (1, b):
        raise ValueError(f"a batch of {mask.shape[0]} masks does not match a batch of {b} images")
    if (mh, mw) != (H, W):
        mask = F.interpolate(mask[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    mask = mask.clamp(0, 1).expand(b, -1, -1)
    h, w = H // factor * factor, W // factor * factor
    if h == 0 or w == 0:
        raise ValueError(f"an image of {W}x{H} is smaller than the VAE's {factor}x{factor} downscale")
    y0, x0 = (H - h) // 2, (W - w) // 2
    pixels = pixels[:, y0:y0 + h, x0:x0 + w, :3]
    mask = mask[:, y0:y0 + h, x0:x0 + w]
    hard = mask.round()
    keep = (1.0 - hard)[..., None]
    gray = (pixels - 0.5) * keep + 0.5  # what is to be repainted carries no trace of the old content
    return gray, grow_mask(hard, grow_mask_by)
