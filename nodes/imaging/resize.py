"""Resizing of channel-first tensors [B, C, H, W], shared by the latent and image scaling nodes."""
from __future__ import annotations

import torch
import torch.nn.functional as F

LATENT_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
IMAGE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_MODES = ["disabled", "center"]


def center_crop_to_aspect(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop the middle of x so that it has the aspect ratio width:height."""
    h, w = x.shape[-2:]
    target = width / height
    if w / h > target:
        new_w = max(1, round(h * target))
        left = (w - new_w) // 2
        return x[..., :, left:left + new_w]
    new_h = max(1, round(w / target))
    top = (h - new_h) // 2
    return x[..., top:top + new_h, :]


def _bislerp(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear interpolation of each pixel's channel vector in direction (renormalised) and in length."""
    norm = x.norm(dim=1, keepdim=True).clamp_min(1e-8)
    direction = F.interpolate(x / norm, size=(height, width), mode="bilinear", align_corners=False)
    length = F.interpolate(norm, size=(height, width), mode="bilinear", align_corners=False)
    return direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-8) * length


def _lanczos(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    out = []
    for img in x.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy():
        channels = [Image.fromarray(img[..., c]).resize((width, height), Image.Resampling.LANCZOS)
                    for c in range(img.shape[-1])]
        out.append(np.stack([np.asarray(ch) for ch in channels], axis=-1))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x)


def resize(x: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """Resize [B, C, H, W] to (height, width) with one of the ComfyUI method names."""
    if width <= 0 or height <= 0:
        raise ValueError(f"cannot resize to {width}x{height}: both sides must be positive")
    if crop == "center":
        x = center_crop_to_aspect(x, width, height)
    if method == "bislerp":
        return _bislerp(x.float(), height, width).to(x.dtype)
    if method == "lanczos":
        return _lanczos(x.float(), height, width).to(x.dtype)
    mode = {"nearest-exact": "nearest-exact", "bilinear": "bilinear", "area": "area", "bicubic": "bicubic"}.get(method)
    if mode is None:
        raise ValueError(f"unknown upscale method {method!r}")
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x.float(), size=(height, width), mode=mode, **kwargs).to(x.dtype)


def resize_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a mask [B, H, W] (or [H, W]) bilinearly to (height, width), values kept in 0..1."""
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    return F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)[:, 0]
