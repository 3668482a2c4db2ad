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
        return (clip_vision.load(manager(ctx), ctx.file_path("clip_name")),)


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
        return (style_model.load(manager(ctx), ctx.file_path("style_model_name")),)


class StyleModelApply(Node):
    type = "StyleModelApply"
    display_name = "Apply Style Model"
    category = "conditioning/style_model"
    description = ("Append an image's style tokens (a style model over its CLIP vision hidden states; the tokens of "
                   "every image in the batch) to each conditioning entry. strength_type 'multiply' scales the "
                   "tokens; 'attn_bias' is accepted at strength 1 (where both are the same).")
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
        if strength_type == "attn_bias" and strength != 1.0:
            raise ValueError(f"{self.type}: strength_type 'attn_bias' with strength {strength} needs a cross-attention "
                             "bias, which Chisel does not support yet; use 'multiply'")
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
            result.append([torch.cat([emb, cond.to(emb)], dim=1), dict(opts)])
        return (result,)
