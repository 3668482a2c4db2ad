"""Latent files (ComfyUI category "_for_testing"): SaveLatent writes a LATENT to the output folder and LoadLatent
reads one from the input folder, in ComfyUI's ``.latent`` layout (:mod:`nodes.loading.latent_file`)."""
from __future__ import annotations

from graph.node import Input, Node, NodeResult, Output
from graph.types import COMBO, LATENT, STRING
from nodes.loading.latent_file import LATENT_EXTENSIONS, read_latent, write_latent


class SaveLatent(Node):
    type = "SaveLatent"
    display_name = "SaveLatent"
    category = "_for_testing"
    description = ("Save latents to the output folder as <prefix>_00001_.latent (safetensors, ComfyUI's layout, with "
                   "the workflow and prompt as metadata); LoadLatent reads them back from the input folder.")
    output_node = True
    inputs = (Input("samples", LATENT), Input("filename_prefix", STRING, default="latents/ComfyUI"))
    outputs = ()

    def run(self, ctx, samples, filename_prefix):
        entry = write_latent(samples, ctx.services.paths.dir("output"), filename_prefix, ctx)
        return NodeResult(ui={"latents": [entry]})


class LoadLatent(Node):
    type = "LoadLatent"
    display_name = "LoadLatent"
    category = "_for_testing"
    description = "Load latents saved by SaveLatent (or ComfyUI) from a .latent file in the input folder."
    inputs = (Input("latent", COMBO, files="input", extensions=LATENT_EXTENSIONS),)
    outputs = (Output("LATENT", LATENT),)

    def run(self, ctx, latent):
        return (read_latent(ctx.file_path("latent")),)
