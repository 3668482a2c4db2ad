"""Conditioning nodes (ComfyUI category "conditioning"): prompt encoding, conditioning arithmetic, regional prompts.

CLIPTextEncode chunks past 77 tokens, reads ``(word:1.3)`` emphasis and ``embedding:name`` textual inversion from
models/embeddings. CONDITIONING is a list of ``[embedding [1, tokens, dim], options]`` entries; the sampler honours
``area`` (h, w, y, x in latent cells) with ``strength``, ``mask`` with ``mask_strength`` and ``set_area_to_bounds``,
``pooled_output`` and SDXL's size options (see :mod:`nodes.sampling.guidance`).
"""
from __future__ import annotations

import torch

from graph.node import Input, Node, Output
from graph.types import CLIP, CONDITIONING, FLOAT, INT, MASK, STRING
from nodes.loading.weights import policy_of
from nodes.text import embeddings
from nodes.text.sdxl import encode_pair
from nodes.text.tokens import embedding_names


def _paths(ctx):
    return getattr(getattr(ctx, "services", None), "paths", None)


class CLIPTextEncode(Node):
    type = "CLIPTextEncode"
    display_name = "CLIP Text Encode (Prompt)"
    category = "conditioning"
    description = ("Encode a prompt with the CLIP text encoder(s). Longer than 75 tokens: encoded in chunks of 77 "
                   "and concatenated. (word) weighs 1.1x, (word:1.3) 1.3x; \\( and \\) are literal parentheses. "
                   "embedding:name inserts a textual-inversion embedding from models/embeddings.")
    inputs = (
        Input("text", STRING, multiline=True, tooltip="The prompt."),
        Input("clip", CLIP, tooltip="The text encoder (from a checkpoint loader)."),
    )
    outputs = (Output("CONDITIONING", CONDITIONING),)
    per_sample_inputs = ("text",)

    @classmethod
    def fingerprint(cls, ctx, text=None, **_):
        """The identity of the embedding files the prompt names (the text alone does not change with them)."""
        if not isinstance(text, str):
            return None
        return embeddings.fingerprint(embedding_names(text), getattr(ctx, "paths", None) or _paths(ctx))

    def run(self, ctx, text, clip):
        cond, pooled = clip.encode(text, embeddings=embeddings.EmbeddingLookup(_paths(ctx), policy_of(ctx)))
        opts = {}
        if pooled is not None:
            opts["pooled_output"] = pooled
        return ([[cond, opts]],)


class CLIPSetLastLayer(Node):
    type = "CLIPSetLastLayer"
    display_name = "CLIP Set Last Layer"
    category = "conditioning"
    description = ("Use an earlier layer of the text encoder (-1 = the last, -2 = the one before, as 'CLIP skip 2'). "
                   "SD2 and SDXL use -2 by default.")
    inputs = (
        Input("clip", CLIP),
        Input("stop_at_clip_layer", INT, default=-1, min=-24, max=-1, step=1),
    )
    outputs = (Output("CLIP", CLIP),)

    def run(self, ctx, clip, stop_at_clip_layer):
        return (clip.set_last_layer(stop_at_clip_layer),)


def _with(cond: list, **options) -> list:
    return [[emb, {**opts, **options}] for emb, opts in cond]


def _fit_tokens(x: torch.Tensor, tokens: int) -> torch.Tensor:
    """Pad (by repeating the last token) or cut an embedding to a token count."""
    n = x.shape[1]
    if n == tokens:
        return x
    if n > tokens:
        return x[:, :tokens]
    return torch.cat([x, x[:, -1:].expand(x.shape[0], tokens - n, x.shape[2])], dim=1)


class ConditioningCombine(Node):
    type = "ConditioningCombine"
    display_name = "Conditioning (Combine)"
    category = "conditioning"
    description = "Both prompts guide the image: their predictions are blended at every step."
    inputs = (Input("conditioning_1", CONDITIONING), Input("conditioning_2", CONDITIONING))
    outputs = (Output("CONDITIONING", CONDITIONING),)

    def run(self, ctx, conditioning_1, conditioning_2):
        return (list(conditioning_1) + list(conditioning_2),)


class ConditioningAverage(Node):
    type = "ConditioningAverage"
    display_name = "Conditioning (Average)"
    category = "conditioning"
    description = "Interpolate embeddings: strength 1 keeps `conditioning_to`, 0 gives `conditioning_from`."
    inputs = (Input("conditioning_to", CONDITIONING), Input("conditioning_from", CONDITIONING),
              Input("conditioning_to_strength", FLOAT, default=1.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output("CONDITIONING", CONDITIONING),)

    def run(self, ctx, conditioning_to, conditioning_from, conditioning_to_strength):
        if not conditioning_from:
            return (conditioning_to,)
        src, src_opts = conditioning_from[0]
        s = conditioning_to_strength
        out = []
        for emb, opts in conditioning_to:
            if emb.shape[-1] != src.shape[-1]:
                raise ValueError(f"cannot average embeddings of width {emb.shape[-1]} and {src.shape[-1]} "
                                 "(conditionings from different model families)")
            mixed = emb * s + _fit_tokens(src, emb.shape[1]).to(emb) * (1 - s)
            new_opts = dict(opts)
            if opts.get("pooled_output") is not None and src_opts.get("pooled_output") is not None:
                new_opts["pooled_output"] = opts["pooled_output"] * s + src_opts["pooled_output"] * (1 - s)
            out.append([mixed, new_opts])
        return (out,)


class ConditioningConcat(Node):
    type = "ConditioningConcat"
    display_name = "Conditioning (Concat)"
    category = "conditioning"
    description = "Append the tokens of `conditioning_from` to each entry of `conditioning_to`."
    inputs = (Input("conditioning_to", CONDITIONING), Input("conditioning_from", CONDITIONING))
    outputs = (Output("CONDITIONING", CONDITIONING),)

    def run(self, ctx, conditioning_to, conditioning_from):
        if not conditioning_from:
            return (conditioning_to,)
        src = conditioning_from[0][0]
        out = []
        for emb, opts in conditioning_to:
            if emb.shape[-1] != src.shape[-1]:
                raise ValueError(f"cannot concatenate embeddings of width {emb.shape[-1]} and {src.shape[-1]}")
            out.append([torch.cat([emb, src.to(emb)], dim=1), dict(opts)])
        return (out,)


class ConditioningSetArea(Node):
    type = "ConditioningSetArea"
    display_name = "Conditioning (Set Area)"
    category = "conditioning"
    description = "Apply the prompt only to a rectangle of the image (pixels), with a strength."
    inputs = (
        Input("conditioning", CONDITIONING),
        Input("width", INT, default=64, min=64, max=16384, step=8),
        Input("height", INT, default=64, min=64, max=16384, step=8),
        Input("x", INT, default=0, min=0, max=16384, step=8),
        Input("y", INT, default=0, min=0, max=16384, step=8),
        Input("strength", FLOAT, default=1.0, min=0.0, max=10.0, step=0.01),
    )
    outputs = (Output("CONDITIONING", CONDITIONING),)

    def run(self, ctx, conditioning, width, height, x, y, strength):
        area = (height // 8, width // 8, y // 8, x // 8)
        return (_with(conditioning, area=area, strength=strength, set_area_to_bounds=False),)


class ConditioningSetAreaStrength(Node):
    type = "ConditioningSetAreaStrength"
    display_name = "Conditioning (Set Area Strength)"
    category = "conditioning"
    description = "Set how strongly the prompt counts where it applies."
    inputs = (Input("conditioning", CONDITIONING),
              Input("strength", FLOAT, default=1.0, min=0.0, max=10.0, step=0.01))
    outputs = (Output("CONDITIONING", CONDITIONING),)

    def run(self, ctx, conditioning, strength):
        return (_with(conditioning, strength=strength),)


class ConditioningSetMask(Node):
    type = "ConditioningSetMask"
    display_name = "Conditioning (Set Mask)"
    category = "conditioning"
    description = "Apply the prompt only where the mask is set; 'mask bounds' also crops to the mask's box."
    inputs = (Input("conditioning", CONDITIONING), Input("mask", MASK),
              Input("strength", FLOAT, default=1.0, min=0.0, max=10.0, step=0.01),
              Input("set_cond_area", "COMBO", choices=["default", "mask bounds"], default="default"))
    outputs = (Output("CONDITIONING", CONDITIONING),)

    def run(self, ctx, conditioning, mask, strength, set_cond_area):
        mask = mask.reshape(-1, mask.shape[-2], mask.shape[-1]).float()
        return (_with(conditioning, mask=mask, mask_strength=strength,
                      set_area_to_bounds=set_cond_area != "default"),)


class ConditioningSetTimestepRange(Node):
    type = "ConditioningSetTimestepRange"
    display_name = "ConditioningSetTimestepRange"
    category = "advanced/conditioning"
    description = ("Apply the prompt only between `start` and `end` of sampling (fractions of the model's schedule: "
                   "0 = pure noise, 1 = clean). Combine with another range to switch prompts mid-way; every "
                   "conditioning needs an entry in range at each step.")
    inputs = (Input("conditioning", CONDITIONING),
              Input("start", FLOAT, default=0.0, min=0.0, max=1.0, step=0.001),
              Input("end", FLOAT, default=1.0, min=0.0, max=1.0, step=0.001))
    outputs = (Output("CONDITIONING", CONDITIONING),)

    def run(self, ctx, conditioning, start, end):
        if float(start) > float(end):
            raise ValueError(f"ConditioningSetTimestepRange: input 'start' ({start:g}) is after input 'end' "
                             f"({end:g}); the conditioning would never apply")
        return (_with(conditioning, start_percent=float(start), end_percent=float(end)),)


class ConditioningZeroOut(Node):
    type = "ConditioningZeroOut"
    display_name = "Conditioning (Zero Out)"
    category = "advanced/conditioning"
    description = "All-zero embeddings (and pooled output) of the same shape."
    inputs = (Input("conditioning", CONDITIONING),)
    outputs = (Output("CONDITIONING", CONDITIONING),)

    def run(self, ctx, conditioning):
        out = []
        for emb, opts in conditioning:
            new_opts = dict(opts)
            if opts.get("pooled_output") is not None:
                new_opts["pooled_output"] = torch.zeros_like(opts["pooled_output"])
            out.append([torch.zeros_like(emb), new_opts])
        return (out,)


class CLIPTextEncodeSDXL(Node):
    type = "CLIPTextEncodeSDXL"
    display_name = "CLIPTextEncodeSDXL"
    category = "advanced/conditioning"
    description = ("SDXL's two prompts: text_g for OpenCLIP-bigG, text_l for CLIP-L, plus the size conditioning: the "
                   "original image size, the crop's top-left corner and the target size the model is told about.")
    inputs = (
        Input("clip", CLIP),
        Input("width", INT, default=1024, min=0, max=16384),
        Input("height", INT, default=1024, min=0, max=16384),
        Input("crop_w", INT, default=0, min=0, max=16384),
        Input("crop_h", INT, default=0, min=0, max=16384),
        Input("target_width", INT, default=1024, min=0, max=16384),
        Input("target_height", INT, default=1024, min=0, max=16384),
        Input("text_g", STRING, multiline=True),
        Input("text_l", STRING, multiline=True),
    )
    outputs = (Output("CONDITIONING", CONDITIONING),)
    per_sample_inputs = ("text_g", "text_l")

    @classmethod
    def fingerprint(cls, ctx, text_g=None, text_l=None, **_):
        names = [n for t in (text_g, text_l) if isinstance(t, str) for n in embedding_names(t)]
        return embeddings.fingerprint(names, getattr(ctx, "paths", None) or _paths(ctx))

    def run(self, ctx, clip, width, height, crop_w, crop_h, target_width, target_height, text_g, text_l):
        cond, pooled = encode_pair(clip, text_g, text_l, embeddings.EmbeddingLookup(_paths(ctx), policy_of(ctx)))
        return ([[cond, {"pooled_output": pooled, "width": width, "height": height, "crop_w": crop_w,
                         "crop_h": crop_h, "target_width": target_width, "target_height": target_height}]],)


class CLIPTextEncodeSDXLRefiner(Node):
    type = "CLIPTextEncodeSDXLRefiner"
    display_name = "CLIPTextEncodeSDXLRefiner"
    category = "advanced/conditioning"
    description = ("A prompt for the SDXL refiner with its conditioning on an aesthetic score (about 6 for a "
                   "positive prompt, 2.5 for a negative one) and the original image size.")
    inputs = (
        Input("ascore", FLOAT, default=6.0, min=0.0, max=1000.0, step=0.01),
        Input("width", INT, default=1024, min=0, max=16384),
        Input("height", INT, default=1024, min=0, max=16384),
        Input("text", STRING, multiline=True),
        Input("clip", CLIP),
    )
    outputs = (Output("CONDITIONING", CONDITIONING),)
    per_sample_inputs = ("text",)

    @classmethod
    def fingerprint(cls, ctx, text=None, **_):
        if not isinstance(text, str):
            return None
        return embeddings.fingerprint(embedding_names(text), getattr(ctx, "paths", None) or _paths(ctx))

    def run(self, ctx, ascore, width, height, text, clip):
        cond, pooled = clip.encode(text, embeddings=embeddings.EmbeddingLookup(_paths(ctx), policy_of(ctx)))
        return ([[cond, {"pooled_output": pooled, "aesthetic_score": ascore, "width": width, "height": height}]],)
