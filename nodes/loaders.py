"""Loader nodes: a checkpoint file (MODEL, CLIP, VAE) and a standalone VAE. Files load once per identity through the
model manager (``ctx.services.models``); loading is complete and offline or it fails with an actionable error."""
from __future__ import annotations

from graph.node import Input, Node, Output
from graph.types import CLIP, COMBO, MODEL, VAE

from .models.manager import ModelManager

CHECKPOINT_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
DIFFUSERS_INDEX = "model_index.json"


def checkpoint_choices(paths) -> list[str]:
    """Checkpoint files, plus diffusers pipeline folders as ``<folder>/model_index.json``."""
    if paths is None:
        return []
    names = paths.list("checkpoints", CHECKPOINT_EXTENSIONS)
    names += [n for n in paths.list("checkpoints", (".json",)) if n.rsplit("/", 1)[-1] == DIFFUSERS_INDEX]
    return sorted(names)


def manager(ctx) -> ModelManager:
    services = getattr(ctx, "services", None)
    if services is not None and hasattr(services, "models"):
        return services.models
    # No services (a bare test context): one CPU manager per process.
    global _FALLBACK
    try:
        return _FALLBACK
    except NameError:
        _FALLBACK = ModelManager("cpu")
        return _FALLBACK


class CheckpointLoaderSimple(Node):
    type = "CheckpointLoaderSimple"
    display_name = "Load Checkpoint"
    category = "loaders"
    description = ("Load a Stable Diffusion checkpoint (SD1.x, SD2.x, SDXL base/refiner, inpainting; single-file "
                   ".safetensors in the original layout, or a diffusers folder) from models/checkpoints. Outputs the "
                   "denoising model, the text encoder(s) and the VAE.")
    inputs = (
        Input("ckpt_name", COMBO, files="checkpoints", extensions=CHECKPOINT_EXTENSIONS, choices=checkpoint_choices,
              tooltip="The checkpoint file (models/checkpoints); the model family is detected from its tensors. "
                      "A diffusers folder is chosen by its model_index.json."),
    )
    outputs = (
        Output("MODEL", MODEL, tooltip="The UNet that denoises latents."),
        Output("CLIP", CLIP, tooltip="The text encoder(s) that turn prompts into conditioning."),
        Output("VAE", VAE, tooltip="The autoencoder between images and latents."),
    )

    def run(self, ctx, ckpt_name):
        path = ctx.file_path("ckpt_name")
        if path.name == DIFFUSERS_INDEX:
            path = path.parent  # a diffusers pipeline folder
        bundle = manager(ctx).load_checkpoint(path)
        return (bundle.model, bundle.clip, bundle.vae)


class VAELoader(Node):
    type = "VAELoader"
    display_name = "Load VAE"
    category = "loaders"
    description = "Load a standalone VAE file (models/vae), in the original or the diffusers key layout."
    inputs = (Input("vae_name", COMBO, files="vae", extensions=CHECKPOINT_EXTENSIONS),)
    outputs = (Output("VAE", VAE),)

    def run(self, ctx, vae_name):
        return (manager(ctx).load_vae(ctx.file_path("vae_name")),)
