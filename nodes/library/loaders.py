"""Loader nodes (ComfyUI category "loaders"): a checkpoint file (MODEL, CLIP, VAE), a standalone VAE, and LoRAs.

Files load once per identity through the model manager (``ctx.services.models``); loading is complete and offline or
it fails with an actionable error. LoRA nodes return clones of their input handles that carry the LoRA
(:mod:`nodes.patches.lora`): the checkpoint's modules are shared, never reloaded, and hold the LoRA's deltas only
while a sampler or text encoder runs with them. Strength 0 returns the input unchanged.
"""
from __future__ import annotations

from pathlib import Path

from graph.node import Input, Node, Output
from graph.types import CLIP, COMBO, FLOAT, MODEL, VAE
from nodes.loading.components import load_text_encoder_file, load_unet_file
from nodes.loading.ldm_config import CONFIG_EXTENSIONS, read_ldm_config
from nodes.loading.progress import READING, Stages, one_of
from nodes.loading.weights import policy_of
from nodes.memory.handles import make_clip_handle, make_unet_handle
from nodes.memory.manager import ModelManager, file_key
from nodes.memory.weight_storage import WEIGHT_DTYPES, store_weights_in
from nodes.patches.lora import (
    AppliedLora,
    load_lora,
    match,
    text_encoder_lookup,
    unet_lookup,
)

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
    return ctx.services.models


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
        bundle = manager(ctx).load_checkpoint(path, progress=ctx.progress)
        return (bundle.model, bundle.clip, bundle.vae)


class CheckpointLoader(Node):
    type = "CheckpointLoader"
    display_name = "Load Checkpoint With Config (DEPRECATED)"
    category = "advanced/loaders"
    description = ("Load a checkpoint with an original LDM YAML config (models/configs). The architecture comes from "
                   "the file's tensors as with Load Checkpoint; the config sets what tensors cannot say: the "
                   "prediction type (parameterization: v), the training noise schedule and the latent scale.")
    inputs = (
        Input("config_name", COMBO, files="configs", extensions=CONFIG_EXTENSIONS),
        Input("ckpt_name", COMBO, files="checkpoints", extensions=CHECKPOINT_EXTENSIONS, choices=checkpoint_choices),
    )
    outputs = (Output("MODEL", MODEL), Output("CLIP", CLIP), Output("VAE", VAE))

    def run(self, ctx, config_name, ckpt_name):
        overrides = read_ldm_config(ctx.file_path("config_name"))
        path = ctx.file_path("ckpt_name")
        if path.name == DIFFUSERS_INDEX:
            path = path.parent
        bundle = manager(ctx).load_checkpoint(path, progress=ctx.progress)
        return (with_ldm_config(bundle.model, overrides), bundle.clip, bundle.vae)


def with_ldm_config(model, overrides: dict):
    """A clone of ``model`` whose noise schedule, prediction type and latent scale follow a config's overrides."""
    import copy
    from dataclasses import replace

    from nodes.sampling import ModelSampling

    if not overrides:
        return model
    ms = model.model_sampling
    if any(k in overrides for k in ("beta_start", "beta_end", "num_train_timesteps")):
        sampling = ModelSampling(beta_schedule=ms.beta_schedule,
                                 linear_start=overrides.get("beta_start", 0.00085),
                                 linear_end=overrides.get("beta_end", 0.012),
                                 timesteps=overrides.get("num_train_timesteps", ms.num_timesteps),
                                 prediction_type=overrides.get("prediction_type", ms.prediction_type),
                                 zero_terminal_snr=ms.zero_terminal_snr)
    else:
        sampling = copy.copy(ms)
        sampling.prediction_type = overrides.get("prediction_type", ms.prediction_type)
    other = model.clone()
    other.model_sampling = sampling
    if "scale_factor" in overrides:
        other.latent_format = replace(model.latent_format, scale_factor=overrides["scale_factor"])
    return other


class VAELoader(Node):
    type = "VAELoader"
    display_name = "Load VAE"
    category = "loaders"
    description = "Load a standalone VAE file (models/vae), in the original or the diffusers key layout."
    inputs = (Input("vae_name", COMBO, files="vae", extensions=CHECKPOINT_EXTENSIONS),)
    outputs = (Output("VAE", VAE),)

    def run(self, ctx, vae_name):
        return (manager(ctx).load_vae(ctx.file_path("vae_name"), progress=ctx.progress),)


LORA_STAGES = (READING, "matching the LoRA to the diffusion model", "matching the LoRA to the text encoder")
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
        stages = Stages(LORA_STAGES, ctx.progress)
        stages.enter(READING)
        lora = load_lora(ctx.file_path("lora_name"), policy_of(ctx))
        name = Path(str(lora_name)).name
        stages.enter(LORA_STAGES[1])
        model_pairs = apply_to_model(model, lora, name, strength_model)
        stages.enter(LORA_STAGES[2])
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
        stages = Stages(LORA_STAGES[:2], ctx.progress)
        stages.enter(READING)
        lora = load_lora(ctx.file_path("lora_name"), policy_of(ctx))
        stages.enter(LORA_STAGES[1])
        pairs = apply_to_model(model, lora, Path(str(lora_name)).name, strength_model)
        return (model.with_lora(pairs) if strength_model != 0 else model,)


UNET_DTYPES = list(WEIGHT_DTYPES)  # ComfyUI's order: default, fp8_e4m3fn, fp8_e4m3fn_fast, fp8_e5m2


class UNETLoader(Node):
    type = "UNETLoader"
    display_name = "Load Diffusion Model"
    category = "advanced/loaders"
    description = ("Load a diffusion model (UNet) saved on its own (models/unet), in the original layout; its family "
                   "(SD1.x, SD2.x, SDXL base/refiner) comes from its tensors. Pair it with a CLIP and a VAE loader. "
                   "weight_dtype fp8_*: keep the UNet's layer weights in 8-bit floats (about a quarter of fp32's "
                   "memory) and compute each layer in the working precision; _fast computes like fp8_e4m3fn "
                   "(no fp8 matrix multiplies). fp8 UNets run uncompiled.")
    inputs = (
        Input("unet_name", COMBO, files="unet", extensions=CHECKPOINT_EXTENSIONS),
        Input("weight_dtype", COMBO, choices=UNET_DTYPES, default="default"),
    )
    outputs = (Output("MODEL", MODEL),)

    def run(self, ctx, unet_name, weight_dtype):
        path = ctx.file_path("unet_name")
        mgr = manager(ctx)
        storage = WEIGHT_DTYPES[weight_dtype]

        def load():
            handle = make_unet_handle(mgr, load_unet_file(path, policy_of(ctx), ctx.progress), str(path))
            if storage is not None:
                store_weights_in(handle.unet, storage)
            return handle

        return (mgr.load_once(("unet", str(storage)), path, load),)


CLIP_TYPES = ["stable_diffusion"]
DUAL_CLIP_TYPES = ["sdxl"]
CLIP_DEVICES = ["default", "cpu"]  # ComfyUI's; placement is the model manager's (see CLIPLoader)


class CLIPLoader(Node):
    type = "CLIPLoader"
    display_name = "Load CLIP"
    category = "advanced/loaders"
    description = ("Load a text encoder saved on its own (models/clip; transformers layout): CLIP-L gives an SD1.x "
                   "CLIP, OpenCLIP-H an SD2.x one. `device` is accepted for ComfyUI's workflows; Chisel's model "
                   "manager places text encoders (on the GPU only while they encode).")
    inputs = (
        Input("clip_name", COMBO, files="clip", extensions=CHECKPOINT_EXTENSIONS),
        Input("type", COMBO, choices=CLIP_TYPES, default="stable_diffusion"),
        Input("device", COMBO, choices=CLIP_DEVICES, default="default", optional=True),
    )
    outputs = (Output("CLIP", CLIP),)

    def run(self, ctx, clip_name, type, device):
        path, mgr = ctx.file_path("clip_name"), manager(ctx)

        def factory():
            enc = load_text_encoder_file(path, policy_of(ctx), ctx.progress)
            if enc.with_projection:
                raise ValueError(f"{path.name} is SDXL's OpenCLIP-bigG text encoder: load it with its CLIP-L in a "
                                 "DualCLIPLoader (type sdxl)")
            family = "sd1" if enc.kind == "clip_l" else "sd2"
            return make_clip_handle(mgr, family, [("text_encoder", enc)], str(path))

        return (mgr.load_once("clip", path, factory),)


class DualCLIPLoader(Node):
    type = "DualCLIPLoader"
    display_name = "DualCLIPLoader"
    category = "advanced/loaders"
    description = "SDXL's two text encoders saved on their own (models/clip): CLIP-L and OpenCLIP-bigG, in either order."
    inputs = (
        Input("clip_name1", COMBO, files="clip", extensions=CHECKPOINT_EXTENSIONS),
        Input("clip_name2", COMBO, files="clip", extensions=CHECKPOINT_EXTENSIONS),
        Input("type", COMBO, choices=DUAL_CLIP_TYPES, default="sdxl"),
        Input("device", COMBO, choices=CLIP_DEVICES, default="default", optional=True),
    )
    outputs = (Output("CLIP", CLIP),)

    def run(self, ctx, clip_name1, clip_name2, type, device):
        paths, mgr = [ctx.file_path("clip_name1"), ctx.file_path("clip_name2")], manager(ctx)

        def factory():
            found = [(p, load_text_encoder_file(p, policy_of(ctx), one_of(ctx.progress, i, len(paths), p.name)))
                     for i, p in enumerate(paths)]
            l_enc = [e for _, e in found if e.kind == "clip_l"]
            g_enc = [e for _, e in found if e.kind == "open_clip" and e.with_projection]
            if len(l_enc) != 1 or len(g_enc) != 1:
                kinds = ", ".join(f"{p.name}: {e.kind}{' with projection' if e.with_projection else ''}"
                                  for p, e in found)
                raise ValueError(f"SDXL needs one CLIP-L and one OpenCLIP-bigG (with projection); got {kinds}")
            return make_clip_handle(mgr, "sdxl", [("text_encoder", l_enc[0]), ("text_encoder_2", g_enc[0])],
                                    " + ".join(str(p) for p in paths))

        return (mgr.load_once(("sdxl_clip", file_key(paths[1])), paths[0], factory),)
