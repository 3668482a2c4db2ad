"""EmptyLatentImage: the blank starting latent of text-to-image."""
from __future__ import annotations

import torch

from graph.node import Input, Node, Output
from graph.types import INT, LATENT


class EmptyLatentImage(Node):
    type = "EmptyLatentImage"
    display_name = "Empty Latent Image"
    category = "latent"
    description = "A batch of blank latents for an image of width x height pixels (latents are 1/8 of the size)."
    inputs = (
        Input("width", INT, default=512, min=16, max=16384, step=8),
        Input("height", INT, default=512, min=16, max=16384, step=8),
        Input("batch_size", INT, default=1, min=1, max=4096),
    )
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, width, height, batch_size):
        return ({"samples": torch.zeros((batch_size, 4, height // 8, width // 8), dtype=torch.float32)},)
