"""LoraLoader and LoraLoaderModelOnly: a LoRA from models/loras on a MODEL (and CLIP), ComfyUI's inputs.

The nodes return clones of their input handles that carry the LoRA (:mod:`nodes.models.lora`); the checkpoint's
modules are shared, never reloaded, and only hold the LoRA's deltas while a sampler or text encoder runs with them.
Strength 0 returns the input unchanged. A LoRA that does not fit the model is an error naming what did not fit.
"""
from __future__ import annotations

from pathlib import Path

from graph.node import Input, Node, Output
from graph.types import CLIP, COMBO, FLOAT, MODEL

from .models.lora import AppliedLora, load_lora, match, text_encoder_lookup, unet_lookup

LORA_EXTENSIONS = (".safetensors", ".sft", ".pt", ".pth", ".bin")
_TEXT_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "text_encoder.", "text_encoder_2.")


def _model_desc(model) -> str:
    return f"this {model.family} model ({Path(model.source).name})"


def apply_to_model(model, lora, name: str, strength: float):
    """The UNet part of ``lora`` matched onto ``model``: ``[("unet", AppliedLora)]`` (its text-encoder keys are
    left to :func:`apply_to_clip`)."""
    lookup = unet_lookup(model.unet.module, model.config)
    found = match(lora, name, [("unet", model.unet.module, lookup)], _model_desc(model), ignore=_TEXT_PREFIXES)
    return [("unet", AppliedLora(name, found["unet"], float(strength)))]


def apply_to_clip(clip, lora, name: str, strength: float):
    targets = []
    for i, enc in enumerate(clip.encoders):
        module = enc.module.module
        targets.append((enc.name, module, text_encoder_lookup(module, enc.name, i, len(clip.encoders))))
    text_only = type(lora)(lora.path, {k: v for k, v in lora.layers.items() if k.startswith(_TEXT_PREFIXES)},
                          lora.metadata)
    found = match(text_only, name, targets, f"the text encoder(s) of this {clip.family} model "
                                            f"({Path(clip.source).name})")
    return [(tid, AppliedLora(name, layers, float(strength))) for tid, layers in found.items() if layers]


class LoraLoader(Node):
    type = "LoraLoader"
    display_name = "Load LoRA"
    category = "loaders"
    description = ("Apply a LoRA (models/loras; kohya or diffusers/PEFT format) to the model and the text encoder. "
                   "The checkpoint is not reloaded or changed: the LoRA is added while sampling/encoding only. "
                   "Chain several to combine them.")
    inputs = (
        Input("model", MODEL, tooltip="The diffusion model the LoRA will be applied to."),
        Input("clip", CLIP, tooltip="The CLIP model the LoRA will be applied to."),
        Input("lora_name", COMBO, files="loras", extensions=LORA_EXTENSIONS, tooltip="The LoRA file."),
        Input("strength_model", FLOAT, default=1.0, min=-100.0, max=100.0, step=0.01,
              tooltip="How strongly to modify the diffusion model (0: not at all; negative: the opposite)."),
        Input("strength_clip", FLOAT, default=1.0, min=-100.0, max=100.0, step=0.01,
              tooltip="How strongly to modify the text encoder."),
    )
    outputs = (Output("MODEL", MODEL, tooltip="The model with the LoRA."),
               Output("CLIP", CLIP, tooltip="The text encoder with the LoRA."))

    def run(self, ctx, model, clip, lora_name, strength_model, strength_clip):
        lora = load_lora(ctx.file_path("lora_name"))
        name = Path(str(lora_name)).name
        model_pairs = apply_to_model(model, lora, name, strength_model)
        clip_pairs = apply_to_clip(clip, lora, name, strength_clip)
        new_model = model.with_lora(model_pairs) if strength_model != 0 else model
        new_clip = clip.with_lora(clip_pairs) if strength_clip != 0 and clip_pairs else clip
        return (new_model, new_clip)


class LoraLoaderModelOnly(Node):
    type = "LoraLoaderModelOnly"
    display_name = "Load LoRA (model only)"
    category = "loaders"
    description = "Apply the diffusion-model part of a LoRA (models/loras); its text-encoder part is ignored."
    inputs = (
        Input("model", MODEL),
        Input("lora_name", COMBO, files="loras", extensions=LORA_EXTENSIONS),
        Input("strength_model", FLOAT, default=1.0, min=-100.0, max=100.0, step=0.01),
    )
    outputs = (Output("MODEL", MODEL),)

    def run(self, ctx, model, lora_name, strength_model):
        lora = load_lora(ctx.file_path("lora_name"))
        pairs = apply_to_model(model, lora, Path(str(lora_name)).name, strength_model)
        return (model.with_lora(pairs) if strength_model != 0 else model,)
