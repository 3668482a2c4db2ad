"""Latent editing nodes (ComfyUI categories "latent", "latent/transform", "latent/batch"): compositing, blending,
cropping, flipping, rotating and batching LATENTs.

Positions and sizes are given in pixels, as in ComfyUI, and act on latent cells (pixels // 8). A LATENT keeps its
other entries (noise mask, batch indices) where they still fit, and drops what no longer does.
"""
from __future__ import annotations

import torch

from graph.node import Input, Node, Output
from graph.types import BOOLEAN, COMBO, FLOAT, INT, LATENT, MASK
from nodes.imaging.compose import composite, match_batch, match_size, paste_feathered

FLIP_METHODS = ["x-axis: vertically", "y-axis: horizontally"]
ROTATIONS = ["none", "90 degrees", "180 degrees", "270 degrees"]
CELL = 8  # pixels per latent cell


def _with(latent: dict, samples: torch.Tensor, keep_mask: bool = True) -> dict:
    out = {k: v for k, v in latent.items() if keep_mask or k != "noise_mask"}
    out["samples"] = samples
    return out


def _pos(v: int) -> int:
    return int(v) // CELL


class LatentComposite(Node):
    type = "LatentComposite"
    display_name = "Latent Composite"
    category = "latent"
    description = ("Paste `samples_from` into `samples_to` with its top-left corner at (x, y) pixels. `feather` fades "
                   "the pasted edges that lie inside the destination over that many pixels.")
    inputs = (
        Input("samples_to", LATENT),
        Input("samples_from", LATENT),
        Input("x", INT, default=0, min=0, max=16384, step=8),
        Input("y", INT, default=0, min=0, max=16384, step=8),
        Input("feather", INT, default=0, min=0, max=16384, step=8),
    )
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, samples_to, samples_from, x, y, feather):
        out = paste_feathered(samples_to["samples"], samples_from["samples"], _pos(x), _pos(y), _pos(feather))
        return (_with(samples_to, out),)


class LatentCompositeMasked(Node):
    type = "LatentCompositeMasked"
    display_name = "LatentCompositeMasked"
    category = "latent"
    description = ("Lay `source` over `destination` at (x, y) pixels, blended by `mask` (stretched to the source; "
                   "none: opaque). `resize_source` first stretches the source to the destination's size.")
    inputs = (
        Input("destination", LATENT),
        Input("source", LATENT),
        Input("x", INT, default=0, min=0, max=16384, step=8),
        Input("y", INT, default=0, min=0, max=16384, step=8),
        Input("resize_source", BOOLEAN, default=False),
        Input("mask", MASK, optional=True),
    )
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, destination, source, x, y, resize_source, mask):
        out = composite(destination["samples"], source["samples"], _pos(x), _pos(y), mask, bool(resize_source))
        return (_with(destination, out),)


class LatentBlend(Node):
    type = "LatentBlend"
    display_name = "Latent Blend"
    category = "_for_testing"
    description = ("samples1 · blend_factor + samples2 · (1 − blend_factor); samples2 is resized (centre crop, "
                   "bicubic) when its size differs.")
    inputs = (
        Input("samples1", LATENT),
        Input("samples2", LATENT),
        Input("blend_factor", FLOAT, default=0.5, min=0, max=1, step=0.01),
    )
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, samples1, samples2, blend_factor):
        a = samples1["samples"]
        b = match_batch(match_size(samples2["samples"], a, "bicubic"), a.shape[0]).to(a)
        return (_with(samples1, a * blend_factor + b * (1 - blend_factor)),)


class LatentCrop(Node):
    type = "LatentCrop"
    display_name = "Crop Latent"
    category = "latent/transform"
    description = ("Crop a width x height pixel area with its top-left corner at (x, y); a corner outside the "
                   "latent moves to its last cell, and the crop ends at the latent's edge.")
    inputs = (
        Input("samples", LATENT),
        Input("width", INT, default=512, min=64, max=16384, step=8),
        Input("height", INT, default=512, min=64, max=16384, step=8),
        Input("x", INT, default=0, min=0, max=16384, step=8),
        Input("y", INT, default=0, min=0, max=16384, step=8),
    )
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, samples, width, height, x, y):
        s = samples["samples"]
        H, W = s.shape[-2:]
        x0, y0 = min(_pos(x), W - 1), min(_pos(y), H - 1)
        x1, y1 = min(W, x0 + max(1, _pos(width))), min(H, y0 + max(1, _pos(height)))
        out = _with(samples, s[..., y0:y1, x0:x1].clone(), keep_mask=False)
        mask = samples.get("noise_mask")
        if mask is not None and mask.shape[-2:] == (H, W):
            out["noise_mask"] = mask[..., y0:y1, x0:x1].clone()
        return (out,)


class LatentFlip(Node):
    type = "LatentFlip"
    display_name = "Flip Latent"
    category = "latent/transform"
    description = "Mirror latents: upside down (x-axis) or left to right (y-axis)."
    inputs = (Input("samples", LATENT), Input("flip_method", COMBO, choices=FLIP_METHODS, default=FLIP_METHODS[0]))
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, samples, flip_method):
        if flip_method not in FLIP_METHODS:
            raise ValueError(f"flip_method must be one of {FLIP_METHODS}")
        dim = -2 if flip_method.startswith("x") else -1
        out = _with(samples, samples["samples"].flip(dim), keep_mask=False)
        if samples.get("noise_mask") is not None:
            out["noise_mask"] = samples["noise_mask"].flip(dim)
        return (out,)


class LatentRotate(Node):
    type = "LatentRotate"
    display_name = "Rotate Latent"
    category = "latent/transform"
    description = "Rotate latents clockwise by 90, 180 or 270 degrees."
    inputs = (Input("samples", LATENT), Input("rotation", COMBO, choices=ROTATIONS, default="none"))
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, samples, rotation):
        turns = ROTATIONS.index(rotation)
        # rot90 from the width axis towards the height axis turns the picture clockwise
        out = _with(samples, torch.rot90(samples["samples"], turns, dims=(-1, -2)), keep_mask=False)
        if samples.get("noise_mask") is not None:
            out["noise_mask"] = torch.rot90(samples["noise_mask"], turns, dims=(-1, -2))
        return (out,)


class LatentBatch(Node):
    type = "LatentBatch"
    display_name = "LatentBatch"
    category = "latent/batch"
    description = ("One batch of samples1 followed by samples2 (resized, centre crop, when its size differs). Each "
                   "entry keeps the noise of its position in its own batch, as in ComfyUI.")
    inputs = (Input("samples1", LATENT), Input("samples2", LATENT))
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, samples1, samples2):
        a = samples1["samples"]
        b = match_size(samples2["samples"], a).to(a)
        out = {"samples": torch.cat([a, b])}
        out["batch_index"] = (list(samples1.get("batch_index", range(a.shape[0])))
                              + list(samples2.get("batch_index", range(b.shape[0]))))
        m1, m2 = samples1.get("noise_mask"), samples2.get("noise_mask")
        if m1 is not None or m2 is not None:
            size = tuple(a.shape[-2:])
            out["noise_mask"] = torch.cat([_full_mask(m1, a.shape[0], size), _full_mask(m2, b.shape[0], size)])
        return (out,)


def _full_mask(mask, n: int, size: tuple[int, int]) -> torch.Tensor:
    """A [n, h, w] noise mask at the latent size (none: resample everywhere)."""
    if mask is None:
        return torch.ones((n, *size))
    m = match_batch(mask.reshape(-1, 1, *mask.shape[-2:]).float(), n)
    return torch.nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=False)[:, 0]
