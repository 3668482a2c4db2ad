"""Tiled VAE nodes (ComfyUI category "_for_testing"): decode and encode large images tile by tile in bounded memory,
with blended seams (:mod:`nodes.imaging.tiled_vae`). The temporal inputs are ComfyUI's, for video VAEs; Chisel's
image VAEs have no time axis and ignore them."""
from __future__ import annotations

from graph.node import Input, Node, Output
from graph.types import IMAGE, INT, LATENT, VAE
from nodes.imaging.tiled_vae import decode_tiled, encode_tiled


def _progress(ctx):
    return (lambda done, total: ctx.progress(done, total)) if ctx is not None else None


class VAEDecodeTiled(Node):
    type = "VAEDecodeTiled"
    display_name = "VAE Decode (Tiled)"
    category = "_for_testing"
    description = ("Decode latents in overlapping tiles of `tile_size` pixels, blending `overlap` pixels at each "
                   "seam: memory depends on the tile, not on the image.")
    inputs = (
        Input("samples", LATENT),
        Input("vae", VAE),
        Input("tile_size", INT, default=512, min=64, max=4096, step=32),
        Input("overlap", INT, default=64, min=0, max=4096, step=32),
        Input("temporal_size", INT, default=64, min=8, max=4096, step=4, tooltip="For video VAEs; ignored."),
        Input("temporal_overlap", INT, default=8, min=4, max=4096, step=4, tooltip="For video VAEs; ignored."),
    )
    outputs = (Output("IMAGE", IMAGE),)

    def run(self, ctx, samples, vae, tile_size, overlap, temporal_size, temporal_overlap):
        return (decode_tiled(vae, samples["samples"], tile_size, overlap, _progress(ctx)),)


class VAEEncodeTiled(Node):
    type = "VAEEncodeTiled"
    display_name = "VAE Encode (Tiled)"
    category = "_for_testing"
    description = ("Encode an image in overlapping tiles of `tile_size` pixels, blending `overlap` pixels at each "
                   "seam (the image is centre-cropped to a multiple of 8 pixels).")
    inputs = (
        Input("pixels", IMAGE),
        Input("vae", VAE),
        Input("tile_size", INT, default=512, min=64, max=4096, step=64),
        Input("overlap", INT, default=64, min=0, max=4096, step=32),
        Input("temporal_size", INT, default=64, min=8, max=4096, step=4, tooltip="For video VAEs; ignored."),
        Input("temporal_overlap", INT, default=8, min=4, max=4096, step=4, tooltip="For video VAEs; ignored."),
    )
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, pixels, vae, tile_size, overlap, temporal_size, temporal_overlap):
        return ({"samples": encode_tiled(vae, pixels, tile_size, overlap, _progress(ctx))},)
