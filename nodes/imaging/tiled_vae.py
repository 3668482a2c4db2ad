"""VAE decoding and encoding in overlapping tiles, for images too large for the device's memory at once.

The input is cut into square tiles on a grid (latent cells for decoding, multiples of the VAE's downscale for
encoding) that overlap by ``overlap`` grid units; each tile goes through the VAE on its own, one batch entry at a
time, so peak memory depends on the tile size, not on the image. Tiles are blended with weights that ramp linearly
across the overlap (1/(o+1), 2/(o+1), ... from each tile edge), normalised by their sum, so seams fade instead of
showing as lines. With a tile at least as large as the input the result is the untiled one.

Plain VAE decoding/encoding falls back to this when the device runs out of memory (:func:`decode_with_fallback`,
:func:`encode_with_fallback`): the tile size halves until it fits or reaches the smallest tile.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

DEFAULT_TILE = 512  # pixels
DEFAULT_OVERLAP = 64
MIN_TILE = 64


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` units covering ``length`` units, consecutive tiles sharing ``overlap``."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def ramp(length: int, overlap: int) -> torch.Tensor:
    """Blend weights along one tile side: rising over ``overlap`` units from each edge, 1 in the middle."""
    if overlap <= 0:
        return torch.ones(length)
    i = torch.arange(length, dtype=torch.float32)
    return (torch.minimum(i + 1, length - i) / (overlap + 1)).clamp(max=1.0)


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, unit: int, tile: int, overlap: int,
                out_per_unit: int, out_channels: int, on_tile: Callable[[int, int], None] | None = None
                ) -> torch.Tensor:
    """Apply ``fn`` ([1, C, h, w] -> [1, C', h', w'] with h' = h / unit * out_per_unit) tile by tile.

    ``x`` is [B, C, H, W] with H and W multiples of ``unit``; ``tile`` and ``overlap`` count grid units (``unit``
    input cells each). ``on_tile(done, total)`` reports progress.
    """
    b, _, H, W = x.shape
    gh, gw = H // unit, W // unit
    tile = max(1, tile)
    overlap = max(0, min(overlap, tile - 1))
    ys, xs = tile_starts(gh, tile, overlap), tile_starts(gw, tile, overlap)
    out = torch.zeros((b, out_channels, gh * out_per_unit, gw * out_per_unit))
    weight = torch.zeros((1, 1, gh * out_per_unit, gw * out_per_unit))
    total, done = b * len(ys) * len(xs), 0
    o = overlap * out_per_unit
    for n in range(b):
        for y in ys:
            for x0 in xs:
                th, tw = min(tile, gh - y), min(tile, gw - x0)
                piece = fn(x[n:n + 1, :, y * unit:(y + th) * unit, x0 * unit:(x0 + tw) * unit]).float().cpu()
                oh, ow = th * out_per_unit, tw * out_per_unit
                if piece.shape[-2:] != (oh, ow):
                    raise RuntimeError(f"a tile of {th}x{tw} grid units gave {tuple(piece.shape[-2:])}, expected "
                                       f"{(oh, ow)}")
                w = (ramp(oh, o)[:, None] * ramp(ow, o)[None, :])[None, None]
                oy, ox = y * out_per_unit, x0 * out_per_unit
                out[n:n + 1, :, oy:oy + oh, ox:ox + ow] += piece * w
                if n == 0:
                    weight[..., oy:oy + oh, ox:ox + ow] += w
                done += 1
                if on_tile is not None:
                    on_tile(done, total)
    return out / weight


def _grid(tile_px: int, overlap_px: int, factor: int) -> tuple[int, int]:
    """Tile and overlap in grid units of ``factor`` pixels (ComfyUI: an overlap over a quarter tile is capped)."""
    if tile_px < overlap_px * 4:
        overlap_px = tile_px // 4
    return max(1, tile_px // factor), max(0, overlap_px // factor)


def decode_tiled(vae, samples: torch.Tensor, tile_px: int = DEFAULT_TILE, overlap_px: int = DEFAULT_OVERLAP,
                 on_tile=None) -> torch.Tensor:
    """[B, C, h, w] latents -> IMAGE [B, H, W, 3], decoded in tiles of ``tile_px`` pixels."""
    f = vae.downscale
    tile, overlap = _grid(tile_px, overlap_px, f)
    # eager: every tile size (edge tiles included) would be another compiled specialisation
    out = tiled_apply(lambda z: vae.decode(z, compiled=False).movedim(-1, 1), samples, 1, tile, overlap, f, 3,
                      on_tile)
    return out.movedim(1, -1).clamp(0, 1)


def encode_tiled(vae, pixels: torch.Tensor, tile_px: int = DEFAULT_TILE, overlap_px: int = DEFAULT_OVERLAP,
                 on_tile=None) -> torch.Tensor:
    """IMAGE [B, H, W, C] -> [B, C, H/f, W/f] latents, encoded in tiles of ``tile_px`` pixels (the image is
    centre-cropped to a multiple of the VAE's downscale first, as untiled encoding does)."""
    f = vae.downscale
    H, W = pixels.shape[1] // f * f, pixels.shape[2] // f * f
    if H == 0 or W == 0:
        raise ValueError(f"an image of {pixels.shape[2]}x{pixels.shape[1]} is smaller than the VAE's {f}x{f} "
                         "downscale")
    y0, x0 = (pixels.shape[1] - H) // 2, (pixels.shape[2] - W) // 2
    x = pixels[:, y0:y0 + H, x0:x0 + W, :3].movedim(-1, 1)
    tile, overlap = _grid(tile_px, overlap_px, f)
    return tiled_apply(lambda p: vae.encode(p.movedim(1, -1), compiled=False), x, f, tile, overlap, 1,
                       vae.latent_channels, on_tile)


def _free_device(vae) -> None:
    manager = getattr(vae, "manager", None)
    if manager is not None:
        manager.free()  # move idle models off the device
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def _with_fallback(whole: Callable[[], torch.Tensor], tiled: Callable[[int], torch.Tensor], what: str, size: int
                   ) -> torch.Tensor:
    """``whole()``; on out-of-memory, ``tiled(tile)`` with tiles smaller than the image, halving down to
    :data:`MIN_TILE` pixels while memory still runs out."""
    try:
        return whole()
    except torch.OutOfMemoryError as exc:
        first = exc
    tile = DEFAULT_TILE
    while tile >= size and tile > MIN_TILE:
        tile //= 2
    while True:
        log.warning("out of memory while %s the whole image; retrying in tiles of %d px", what, tile)
        try:
            return tiled(tile)
        except torch.OutOfMemoryError as exc:
            if tile <= MIN_TILE:
                raise torch.OutOfMemoryError(
                    f"out of memory while {what}, even in tiles of {MIN_TILE} px ({exc}); free device memory, use "
                    "--low-vram, or a smaller image") from first
            tile = max(MIN_TILE, tile // 2)


def decode_with_fallback(vae, samples: torch.Tensor, on_tile=None) -> torch.Tensor:
    """``vae.decode(samples)``; when the device runs out of memory, idle models are moved off it and the latents
    are decoded in tiles, smaller each time memory runs out again."""
    size = max(samples.shape[-2:]) * vae.downscale

    def tiled(tile: int) -> torch.Tensor:
        _free_device(vae)
        return decode_tiled(vae, samples, tile, DEFAULT_OVERLAP, on_tile)

    return _with_fallback(lambda: vae.decode(samples), tiled, "decoding", size)


def encode_with_fallback(vae, pixels: torch.Tensor, on_tile=None) -> torch.Tensor:
    """``vae.encode(pixels)``, falling back to tiles like :func:`decode_with_fallback`."""
    size = max(pixels.shape[1:3])

    def tiled(tile: int) -> torch.Tensor:
        _free_device(vae)
        return encode_tiled(vae, pixels, tile, DEFAULT_OVERLAP, on_tile)

    return _with_fallback(lambda: vae.encode(pixels), tiled, "encoding", size)
