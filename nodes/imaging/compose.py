"""Placing one picture or latent into another: batch matching, masked compositing, feathered pasting and blending.

Everything here works on channel-first tensors [B, C, H, W] (IMAGE nodes move their channels first and back); a
MASK is [B or 1, H, W] (or [H, W]) in 0..1, 1 = take the source.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nodes.imaging.resize import resize


def match_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x`` with ``n`` batch entries: repeated cyclically when it has fewer, the first ``n`` when it has more."""
    if x.shape[0] == n:
        return x
    return x[torch.arange(n) % x.shape[0]]


def match_size(x: torch.Tensor, like: torch.Tensor, method: str = "bilinear", crop: str = "center") -> torch.Tensor:
    """``x`` resized (aspect kept by a centre crop) to the spatial size of ``like`` when the sizes differ."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return resize(x, like.shape[-1], like.shape[-2], method, crop)


def as_mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """A MASK as [B, 1, H, W] float32."""
    return mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, mask: torch.Tensor | None = None,
              resize_source: bool = False) -> torch.Tensor:
    """``source`` laid over a copy of ``destination`` with its top-left corner at (x, y) (in tensor cells), blended
    by ``mask`` (stretched to the source's size; None: opaque). What falls outside the destination is cut off."""
    out = destination.clone()
    b, c, H, W = out.shape
    src = match_batch(source.to(out.dtype), b)
    if src.shape[1] != c:
        if src.shape[1] < c:
            raise ValueError(f"the source has {src.shape[1]} channels, the destination {c}")
        src = src[:, :c]
    if resize_source:
        src = F.interpolate(src, size=(H, W), mode="bilinear", align_corners=False)
    x, y = max(0, min(int(x), W)), max(0, min(int(y), H))
    h, w = min(src.shape[2], H - y), min(src.shape[3], W - x)
    if h <= 0 or w <= 0:
        return out
    if mask is None:
        m = torch.ones((1, 1, h, w), dtype=out.dtype)
    else:
        m = F.interpolate(as_mask_batch(mask), size=src.shape[-2:], mode="bilinear", align_corners=False)
        m = match_batch(m, b)[..., :h, :w].to(out.dtype)
    region = out[..., y:y + h, x:x + w]
    out[..., y:y + h, x:x + w] = m * src[..., :h, :w] + (1 - m) * region
    return out


def edge_feather(h: int, w: int, feather: int, top: bool, bottom: bool, left: bool, right: bool) -> torch.Tensor:
    """[h, w] weights that ramp linearly from 1/feather at each chosen edge to 1 at ``feather`` cells in."""
    m = torch.ones((h, w))
    ramp = torch.arange(1, feather + 1, dtype=torch.float32) / feather
    n_h, n_w = min(feather, h), min(feather, w)
    if top:
        m[:n_h] *= ramp[:n_h, None]
    if bottom:
        m[h - n_h:] *= ramp[:n_h].flip(0)[:, None]
    if left:
        m[:, :n_w] *= ramp[:n_w][None]
    if right:
        m[:, w - n_w:] *= ramp[:n_w].flip(0)[None]
    return m


def paste_feathered(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, feather: int) -> torch.Tensor:
    """``source`` pasted at (x, y); with ``feather`` > 0 its edges that lie inside the destination fade in over
    ``feather`` cells (edges on the destination's border stay sharp)."""
    b, _, H, W = destination.shape
    x, y = max(0, min(int(x), W)), max(0, min(int(y), H))
    h, w = min(source.shape[2], H - y), min(source.shape[3], W - x)
    if h <= 0 or w <= 0 or feather <= 0:
        return composite(destination, source, x, y)
    m = edge_feather(h, w, feather, top=y != 0, bottom=y + h < H, left=x != 0, right=x + w < W)
    return composite(destination, source[..., :h, :w], x, y, m[None])
