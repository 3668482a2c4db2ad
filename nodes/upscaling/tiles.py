"""Run an image-to-image model (an upscaler) tile by tile, so device memory stays bounded by the tile size.

Tiles form a grid whose tiles overlap by at least ``overlap`` input pixels, spread evenly over the image. Each output
tile is weighted by a separable profile that is 0 for the first ``margin`` pixels inside an edge it shares with a
neighbour (where the model saw a cut-off context) and ramps linearly to 1 across the rest of the overlap; edges on
the image border keep weight 1. The weighted tiles are summed and divided by the summed weights (separable too, so
no full-size weight map is stored). A model whose receptive field reaches less than ``margin`` pixels gives the same
result tiled as untiled, up to float rounding; deeper models differ only by what a tile's context could not see,
spread smoothly over the overlap, so no seam appears.

The output is assembled on the CPU in float32; only one tile at a time is on the device.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread starts of tiles of ``tile`` pixels covering ``size`` with at least ``overlap`` in common."""
    if size <= tile:
        return [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def _profile(length: int, start: int, starts: list[int], tile: int, margin: int) -> torch.Tensor:
    """1D weights of one tile: ramps over its overlap with each neighbour, 0 within ``margin`` of a shared edge."""
    w = torch.ones(length)
    i = starts.index(start)
    pos = torch.arange(length, dtype=torch.float32) + 0.5
    if i > 0:  # shares its leading edge with the previous tile
        ov = starts[i - 1] + tile - start
        w = torch.minimum(w, ((pos - margin) / max(ov - 2 * margin, 1)).clamp(0, 1))
    if i < len(starts) - 1:  # and its trailing edge with the next
        ov = start + length - starts[i + 1]
        w = torch.minimum(w, ((length - pos - margin) / max(ov - 2 * margin, 1)).clamp(0, 1))
    return w


def upscale_tiled(fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, scale: int, tile: int,
                  overlap: int, margin: int | None = None, progress: Callable[[int, int], None] | None = None
                  ) -> torch.Tensor:
    """``fn`` applied to [B, C, H, W] ``image`` (values on any device, moved by ``fn``) in tiles of at most
    ``tile`` x ``tile`` input pixels; returns [B, C', H*scale, W*scale] float32 on the CPU."""
    b, _, h, w = image.shape
    tile = max(int(tile), 1)
    overlap = min(int(overlap), tile // 2)
    margin = overlap // 4 if margin is None else min(int(margin), max(overlap // 2 - 1, 0))
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    out = None
    sum_y = torch.zeros(h * scale)
    sum_x = torch.zeros(w * scale)
    prof_y = {y: _profile(th * scale, y * scale, [s * scale for s in ys], th * scale, margin * scale)
              for y in ys}
    prof_x = {x: _profile(tw * scale, x * scale, [s * scale for s in xs], tw * scale, margin * scale)
              for x in xs}
    for y in ys:
        sum_y[y * scale:(y + th) * scale] += prof_y[y]
    for x in xs:
        sum_x[x * scale:(x + tw) * scale] += prof_x[x]
    total, done = len(ys) * len(xs), 0
    for y in ys:
        for x in xs:
            res = fn(image[:, :, y:y + th, x:x + tw]).float().cpu()
            if res.shape[-2:] != (th * scale, tw * scale):
                raise ValueError(f"the model turned a {tw}x{th} tile into {res.shape[-1]}x{res.shape[-2]}; expected "
                                 f"{tw * scale}x{th * scale} (scale {scale})")
            if out is None:
                out = torch.zeros(b, res.shape[1], h * scale, w * scale)
            wgt = prof_y[y][:, None] * prof_x[x][None, :]
            out[:, :, y * scale:(y + th) * scale, x * scale:(x + tw) * scale] += res * wgt
            done += 1
            if progress is not None:
                progress(done, total)
    if len(ys) * len(xs) > 1:
        out /= (sum_y[:, None] * sum_x[None, :]).clamp_min(1e-12)
    return out
