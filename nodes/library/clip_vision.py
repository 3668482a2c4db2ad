"""CLIP vision, unCLIP and style-model nodes: image prompts.

- Load CLIP Vision / CLIP Vision Encode: an image encoder (models/clip_vision; transformers' CLIP vision models,
  :mod:`nodes.vision.clip_vision`) and its CLIP_VISION_OUTPUT for a batch of images (hidden states and image
  embeddings, after CLIP's resize / centre-crop / normalisation).
- unCLIPConditioning: an image embedding as extra conditioning, noise-augmented at sampling time
  (:mod:`nodes.vision.unclip`): the class input of SD2.1-unCLIP UNets, or the pooled embedding of SDXL ("revision").
- Load Style Model / Apply Style Model: a T2I style adapter (models/style_models) turns the image's hidden states into
  a few tokens appended to the prompt's conditioning.
- unCLIPCheckpointLoader / ImageOnlyCheckpointLoader: checkpoints that carry their own image encoder (SD2.1-unCLIP).
"""
from __future__ import annotations

import torch

from graph.node import Input, Node, Output
from graph.types import CLIP, COMBO, CONDITIONING, FLOAT, IMAGE, MODEL, VAE
from nodes.library.loaders import CHECKPOINT_EXTENSIONS, manager
from nodes.patches.attention_bias import OPTION as ATTENTION_BIAS
from nodes.patches.attention_bias import append_bias
from nodes.vision import clip_vision, style_model

CLIP_VISION = "CLIP_VISION"
CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
STYLE_MODEL = "STYLE_MODEL"
CROP_MODES = ["center", "none"]
STRENGTH_TYPES = ["multiply", "attn_bias"]


class CLIPVisionLoader(Node):
    type = "CLIPVisionLoader"
    display_name = "Load CLIP Vision"
    category = "loaders"
    description = ("Load a CLIP image encoder from models/clip_vision (transformers' layout, as ComfyUI's clip_vision "
                   "files, or OpenCLIP's visual.* layout): ViT-L, ViT-H, ViT-bigG ...")
    inputs = (Input("clip_name", COMBO, files="clip_vision", extensions=CHECKPOINT_EXTENSIONS,
                    tooltip="The CLIP vision model file (models/clip_vision)."),)
    outputs = (Output(CLIP_VISION, CLIP_VISION),)

    def run(self, ctx, clip_name):
        return (clip_vision.load(manager(ctx), ctx.file_path("clip_name"), ctx.progress),)


def check_image(image, node: str, name: str = "image") -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (3, 4) or \
            min(image.shape[:3]) == 0:
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{node}: input '{name}' must be an IMAGE batch [batch, height, width, 3]; got {shape}")
    return image


class CLIPVisionEncode(Node):
    type = "CLIPVisionEncode"
    display_name = "CLIP Vision Encode"
    category = "conditioning"
    description = ("Encode images with a CLIP vision model. crop 'center' resizes the shortest side to the model's "
                   "input size and crops the centre (CLIP's own preprocessing); 'none' squeezes the whole image to a "
                   "square.")
    inputs = (
        Input("clip_vision", CLIP_VISION),
        Input("image", IMAGE),
        Input("crop", COMBO, choices=CROP_MODES, default="center"),
    )
    outputs = (Output(CLIP_VISION_OUTPUT, CLIP_VISION_OUTPUT),)

    def run(self, ctx, clip_vision, image, crop):
        check_image(image, self.type)
        return (clip_vision.encode(image, crop=crop == "center"),)


def _check_output(value, node: str, name: str = "clip_vision_output"):
    if not isinstance(value, clip_vision.ClipVisionOutput):
        raise ValueError(f"{node}: input '{name}' must come from CLIP Vision Encode; got {type(value).__name__}")
    return value


class unCLIPConditioning(Node):  # noqa: N801 - ComfyUI's name
    type = "unCLIPConditioning"
    display_name = "unCLIPConditioning"
    category = "conditioning"
    description = ("Condition on an image: its CLIP embedding, noise-augmented (0: the image as it is; higher: looser "
                   "variations), goes to an unCLIP model's class input (SD2.1-unCLIP) or replaces SDXL's pooled text "
                   "embedding (SDXL 'revision'). Chain several to mix images; strength scales each.")
    inputs = (
        Input("conditioning", CONDITIONING),
        Input("clip_vision_output", CLIP_VISION_OUTPUT),
        Input("strength", FLOAT, default=1.0, min=-10.0, max=10.0, step=0.01),
        Input("noise_augmentation", FLOAT, default=0.0, min=0.0, max=1.0, step=0.01),
    )
    outputs = (Output("CONDITIONING", CONDITIONING),)

    def run(self, ctx, conditioning, clip_vision_output, strength, noise_augmentation):
        out = _check_output(clip_vision_output, self.type)
        if out.image_embeds is None:
            raise ValueError(f"{self.type}: input 'clip_vision_output' has no image embedding (its CLIP vision model "
                             "has no visual projection); unCLIP needs one")
        if strength == 0:
            return (conditioning,)
        item = {"clip_vision_output": out, "strength": float(strength),
                "noise_augmentation": float(noise_augmentation)}
        return ([[emb, {**opts, "unclip_conditioning": list(opts.get("unclip_conditioning", ())) + [item]}]
                 for emb, opts in conditioning],)


class StyleModelLoader(Node):
    type = "StyleModelLoader"
    display_name = "Load Style Model"
    category = "loaders"
    description = "Load a T2I-Adapter style model (t2iadapter_style_*) from models/style_models."
    inputs = (Input("style_model_name", COMBO, files="style_models", extensions=CHECKPOINT_EXTENSIONS),)
    outputs = (Output(STYLE_MODEL, STYLE_MODEL),)

    def run(self, ctx, style_model_name):
        return (style_model.load(manager(ctx), ctx.file_path("style_model_name"), ctx.progress),)


class StyleModelApply(Node):
    type = "StyleModelApply"
    display_name = "Apply Style Model"
    category = "conditioning/style_model"
    description = ("Append an image's style tokens (a style model over its CLIP vision hidden states; the tokens of "
                   "every image in the batch) to each conditioning entry. strength_type 'multiply' scales the "
                   "tokens; 'attn_bias' adds log(strength) to their cross-attention logits instead (each style "
                   "token then counts as if it were there `strength` times).")
    inputs = (
        Input("conditioning", CONDITIONING),
        Input("style_model", STYLE_MODEL),
        Input("clip_vision_output", CLIP_VISION_OUTPUT),
        Input("strength", FLOAT, default=1.0, min=0.0, max=10.0, step=0.001),
        Input("strength_type", COMBO, choices=STRENGTH_TYPES, default="multiply"),
    )
    outputs = (Output("CONDITIONING", CONDITIONING),)

    def run(self, ctx, conditioning, style_model, clip_vision_output, strength, strength_type):
        out = _check_output(clip_vision_output, self.type)
        biased = strength_type == "attn_bias" and strength != 1.0
        if biased and strength <= 0.0:  # a bias of log(0) = -inf: the tokens get no attention, as if not there
            return ([[emb, dict(opts)] for emb, opts in conditioning],)
        try:
            tokens = style_model.tokens(out)
        except ValueError as exc:
            raise ValueError(f"{self.type}: input 'clip_vision_output': {exc}") from None
        cond = tokens.reshape(1, -1, tokens.shape[-1])  # the tokens of every image, one after another
        if strength_type == "multiply":
            cond = cond * float(strength)
        result = []
        for emb, opts in conditioning:
            if emb.shape[-1] != cond.shape[-1]:
                raise ValueError(f"{self.type}: input 'conditioning' is {emb.shape[-1]} wide but the style model "
                                 f"{style_model.name} makes {cond.shape[-1]}-wide tokens: it was made for another "
                                 "model family")
            new = dict(opts)
            if biased:
                new[ATTENTION_BIAS] = append_bias(opts, emb.shape[1], cond.shape[1], float(strength))
            result.append([torch.cat([emb, cond.to(emb).expand(emb.shape[0], -1, -1)], dim=1), new])
        return (result,)


# ---------------------------------------------------------------------------------------- checkpoints with an encoder

LABEL_KEY = "model.diffusion_model.label_emb.0.0.weight"


def _video_model(shapes) -> bool:
    return any(".time_stack." in k or ".time_mixer." in k for k in shapes)


def _image_encoder_checkpoint(ctx, node: str):
    """(MODEL, CLIP, VAE, CLIP_VISION) of a checkpoint that carries its image encoder (SD2.1-unCLIP); a clear error
    naming the node and input for any other file."""
    from nodes.loading.detect import FAMILY_NAMES, detect
    from nodes.loading.weights import WeightFile
    from nodes.vision.unclip import read_noise_augmentor

    path, mgr = ctx.file_path("ckpt_name"), manager(ctx)
    where = f"{node}: input 'ckpt_name': {path.name}"
    if path.is_dir():
        raise ValueError(f"{where} is a diffusers folder; {node} reads single-file checkpoints that carry an image "
                         "encoder (SD2.1-unCLIP)")
    with WeightFile(path, mgr.allow_pickle) as source:
        shapes = source.shapes
        if _video_model(shapes):
            raise ValueError(f"{where} is an image-to-video model (Stable Video Diffusion): Chisel loads SD1.x, SD2.x "
                             "and SDXL image models only")
        det = detect(shapes, source.metadata, path)
        if clip_vision.find_layout(shapes) is None:
            hint = ("for SDXL 'revision', load the checkpoint with Load Checkpoint and OpenCLIP ViT-bigG "
                    "(clip_vision_g) with Load CLIP Vision" if det.family.startswith("sdxl") else
                    "load it with Load Checkpoint, and an image encoder with Load CLIP Vision")
            raise ValueError(f"{where} is a {FAMILY_NAMES[det.family]} checkpoint without an image encoder "
                             f"(not an unCLIP checkpoint): {hint}")
        class_dim = shapes[LABEL_KEY][1] if LABEL_KEY in shapes and not det.family.startswith("sdxl") else None
        if class_dim is None:
            raise ValueError(f"{where} carries an image encoder but its UNet takes no image embedding (no class "
                             "input): not an unCLIP checkpoint Chisel reads")
        augmentor = mgr.load_once("unclip_statistics", path, lambda: read_noise_augmentor(source, int(class_dim)))
    bundle = mgr.load_checkpoint(path)
    vision = clip_vision.load_embedded(mgr, path)
    model = bundle.model.clone()
    model.noise_augmentor = augmentor
    return model, bundle.clip, bundle.vae, vision


class unCLIPCheckpointLoader(Node):  # noqa: N801 - ComfyUI's name
    type = "unCLIPCheckpointLoader"
    display_name = "unCLIPCheckpointLoader"
    category = "loaders"
    description = ("Load an unCLIP checkpoint (SD2.1-unCLIP, models/checkpoints): the model, text encoder and VAE, "
                   "and the image encoder it carries, for unCLIPConditioning.")
    inputs = (Input("ckpt_name", COMBO, files="checkpoints", extensions=CHECKPOINT_EXTENSIONS),)
    outputs = (Output("MODEL", MODEL), Output("CLIP", CLIP), Output("VAE", VAE), Output(CLIP_VISION, CLIP_VISION))

    def run(self, ctx, ckpt_name):
        return _image_encoder_checkpoint(ctx, self.type)


class ImageOnlyCheckpointLoader(Node):
    type = "ImageOnlyCheckpointLoader"
    display_name = "Image Only Checkpoint Loader (img2vid model)"
    category = "loaders/video_models"
    description = ("Load a checkpoint conditioned on images rather than text: its model, image encoder and VAE. "
                   "Chisel reads SD2.1-unCLIP files here; image-to-video models (Stable Video Diffusion) are not "
                   "supported, and a checkpoint without an image encoder is refused.")
    inputs = (Input("ckpt_name", COMBO, files="checkpoints", extensions=CHECKPOINT_EXTENSIONS),)
    outputs = (Output("MODEL", MODEL), Output(CLIP_VISION, CLIP_VISION), Output("VAE", VAE))

    def run(self, ctx, ckpt_name):
        model, _clip, vae, vision = _image_encoder_checkpoint(ctx, self.type)
        return (model, vision, vae)
