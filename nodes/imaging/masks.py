"""Mask helpers: growing a mask and preparing the pixels and mask VAEEncodeForInpaint needs; morphology, edge
feathering and combining for the mask nodes. A MASK is [B, H, W] float32 in 0..1."""
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


MASK_OPERATIONS = ["multiply", "add", "subtract", "and", "or", "xor"]


def as_masks(mask: torch.Tensor) -> torch.Tensor:
    """A MASK as [B, H, W] float32."""
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1]).float()


def morph(mask: torch.Tensor, steps: int, tapered: bool) -> torch.Tensor:
    """Grow (``steps`` > 0: grey dilation) or shrink (< 0: erosion) a [B, H, W] mask one cell per step, with a 3x3
    square, or with a plus-shaped neighbourhood when ``tapered`` (so corners round off)."""
    m = mask[:, None]
    sign = 1.0 if steps > 0 else -1.0
    m = m * sign  # erosion is the dilation of the negated mask
    for _ in range(abs(steps)):
        padded = F.pad(m, (1, 1, 1, 1), mode="replicate")
        if tapered:
            h, w = m.shape[-2:]
            shifts = [padded[..., 1:h + 1, 1:w + 1], padded[..., 0:h, 1:w + 1], padded[..., 2:h + 2, 1:w + 1],
                      padded[..., 1:h + 1, 0:w], padded[..., 1:h + 1, 2:w + 2]]
            m = torch.stack(shifts).amax(0)
        else:
            m = F.max_pool2d(padded, kernel_size=3, stride=1)
    return (m * sign)[:, 0]


def feather_edges(mask: torch.Tensor, left: int, top: int, right: int, bottom: int) -> torch.Tensor:
    """Fade a [B, H, W] mask towards each edge: the n-th cell from an edge feathered by ``k`` is scaled by n/k."""
    out = mask.clone()
    h, w = out.shape[-2:]
    for n, size, dim, from_end in ((left, w, 2, False), (right, w, 2, True), (top, h, 1, False),
                                   (bottom, h, 1, True)):
        n = min(n, size)
        if n <= 0:
            continue
        ramp = torch.arange(1, n + 1, dtype=out.dtype) / n
        shape = [1, 1, 1]
        shape[dim] = n
        idx = torch.arange(size - 1, size - n - 1, -1) if from_end else torch.arange(n)
        out.index_copy_(dim, idx, out.index_select(dim, idx) * ramp.view(shape))
    return out


def combine(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, operation: str) -> torch.Tensor:
    """``source`` combined into a copy of ``destination`` at (x, y) by ``operation`` (arithmetic ones clamped to 0..1;
    and/or/xor on the masks rounded to 0/1)."""
    dest = as_masks(destination).clone()
    src = as_masks(source)
    b = max(dest.shape[0], src.shape[0])
    dest = dest[torch.arange(b) % dest.shape[0]]
    src = src[torch.arange(b) % src.shape[0]]
    H, W = dest.shape[-2:]
    x, y = max(0, min(int(x), W)), max(0, min(int(y), H))
    h, w = min(src.shape[1], H - y), min(src.shape[2], W - x)
    if h <= 0 or w <= 0:
        return dest
    d, s = dest[:, y:y + h, x:x + w], src[:, :h, :w]
    if operation == "multiply":
        r = d * s
    elif operation == "add":
        r = d + s
    elif operation == "subtract":
        r = d - s
    elif operation in ("and", "or", "xor"):
        db, sb = d.round().bool(), s.round().bool()
        r = {"and": db & sb, "or": db | sb, "xor": db ^ sb}[operation].float()
    else:
        raise ValueError(f"unknown mask operation {operation!r}; one of {', '.join(MASK_OPERATIONS)}")
    dest[:, y:y + h, x:x + w] = r.clamp(0, 1)
    return dest
