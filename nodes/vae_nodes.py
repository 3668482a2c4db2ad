"""VAEDecode and VAEEncode: between IMAGE ([B, H, W, C] float32 0..1, CPU) and LATENT (VAE latents)."""
from __future__ import annotations

from graph.node import Input, Node, Output
from graph.types import IMAGE, LATENT, VAE


class VAEDecode(Node):
    type = "VAEDecode"
    display_name = "VAE Decode"
    category = "latent"
    description = "Decode latents into images."
    inputs = (Input("samples", LATENT), Input("vae", VAE))
    outputs = (Output("IMAGE", IMAGE),)

    def run(self, ctx, samples, vae):
        return (vae.decode(samples["samples"]),)


class VAEEncode(Node):
    type = "VAEEncode"
    display_name = "VAE Encode"
    category = "latent"
    description = "Encode images into latents (the image is center-cropped to a multiple of 8 pixels)."
    inputs = (Input("pixels", IMAGE), Input("vae", VAE))
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, pixels, vae):
        return ({"samples": vae.encode(pixels)},)
