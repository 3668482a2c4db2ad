"""Pixel filters for IMAGE tensors [B, H, W, C] in 0..1: Gaussian blur, unsharp-mask sharpening, blend modes.

The Gaussian follows ComfyUI's convention: a (2r+1)-wide kernel sampled at evenly spaced points from -1 to 1, so
``sigma`` is measured in units of the radius, not in pixels. Edges are reflected.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]


def gaussian_kernel_1d(radius: int, sigma: float) -> torch.Tensor:
    t = torch.linspace(-1.0, 1.0, 2 * radius + 1, dtype=torch.float64)
    g = torch.exp(-(t * t) / (2.0 * sigma * sigma))
    return (g / g.sum()).float()


def gaussian_blur(image: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [B, H, W, C] (reflected edges; a radius larger than the image is capped)."""
    if radius <= 0:
        return image
    x = image.movedim(-1, 1).float()
    b, c, h, w = x.shape
    r = min(radius, h - 1, w - 1)
    if r <= 0:
        return image
    k = gaussian_kernel_1d(r, sigma).to(x.device)
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x.reshape(b * c, 1, *x.shape[-2:]), k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x.reshape(b, c, h, w).movedim(1, -1).to(image.dtype)


def sharpen(image: torch.Tensor, radius: int, sigma: float, alpha: float) -> torch.Tensor:
    """Unsharp mask: ``image + 10·alpha·(image − blur(image))``, clamped to 0..1 (ComfyUI's strength scale)."""
    blurred = gaussian_blur(image, radius, sigma)
    return (image + 10.0 * alpha * (image - blurred)).clamp(0, 1)


def _soft_light_g(a: torch.Tensor) -> torch.Tensor:
    return torch.where(a <= 0.25, ((16 * a - 12) * a + 4) * a, torch.sqrt(a))


def blend_mode(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    """The W3C compositing formulas (``a`` the backdrop, ``b`` the layer); ``difference`` is ``a − b`` as in ComfyUI
    (clamped by the caller, so darker layers lighten nothing)."""
    if mode == "normal":
        return b
    if mode == "multiply":
        return a * b
    if mode == "screen":
        return 1 - (1 - a) * (1 - b)
    if mode == "overlay":
        return torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))
    if mode == "soft_light":
        return torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (_soft_light_g(a) - a))
    if mode == "difference":
        return a - b
    raise ValueError(f"unknown blend mode {mode!r}; one of {', '.join(BLEND_MODES)}")


def blend(image1: torch.Tensor, image2: torch.Tensor, factor: float, mode: str) -> torch.Tensor:
    """``image1·(1 − factor) + mode(image1, image2)·factor``, clamped to 0..1."""
    return (image1 * (1 - factor) + blend_mode(image1, image2, mode) * factor).clamp(0, 1)
