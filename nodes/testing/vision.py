"""Tiny CLIP vision encoders and T2I style adapters in the published file layouts, for tests.

``write_clip_vision`` saves a transformers ``CLIPVisionModelWithProjection`` in transformers' layout (ComfyUI's
``clip_vision`` files) or OpenCLIP's ``visual.*`` layout under a prefix (``embedder.model.`` as inside SD2.1-unCLIP
checkpoints); ``write_style_model`` saves a random style adapter in T2I-Adapter's layout.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def build_clip_vision(width: int = 32, layers: int = 2, heads: int = 4, patch: int = 8, image_size: int = 32,
                      projection: int = 24, act: str = "gelu", seed: int = 0):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=width, intermediate_size=width * 2, num_hidden_layers=layers,
                           num_attention_heads=heads, patch_size=patch, image_size=image_size,
                           projection_dim=projection, hidden_act=act, layer_norm_eps=1e-5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(cfg).eval()
        # transformers initialises the norms to identity and biases to zero: randomise them so a wrong mapping shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.data.normal_(0, 0.2).add_(1.0 if "norm" in name else 0.0)
    return model


def vision_metadata(model) -> dict[str, str]:
    c = model.config
    return {"chisel.clip_vision": json.dumps({"num_attention_heads": c.num_attention_heads, "hidden_act": c.hidden_act,
                                              "layer_norm_eps": c.layer_norm_eps})}


def to_open_clip(model, prefix: str = "") -> dict[str, torch.Tensor]:
    """transformers' vision tensors in OpenCLIP's ``visual.*`` layout (fused qkv, transposed projection)."""
    s = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    p, hf = prefix + "visual.", "vision_model."
    out = {p + "class_embedding": s[hf + "embeddings.class_embedding"],
           p + "positional_embedding": s[hf + "embeddings.position_embedding.weight"],
           p + "conv1.weight": s[hf + "embeddings.patch_embedding.weight"],
           p + "ln_pre.weight": s[hf + "pre_layrnorm.weight"], p + "ln_pre.bias": s[hf + "pre_layrnorm.bias"],
           p + "ln_post.weight": s[hf + "post_layernorm.weight"], p + "ln_post.bias": s[hf + "post_layernorm.bias"],
           p + "proj": s["visual_projection.weight"].t().contiguous()}
    for i in range(model.config.num_hidden_layers):
        a, b = f"{hf}encoder.layers.{i}.", f"{p}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{b}attn.in_proj_{kind}"] = torch.cat([s[f"{a}self_attn.{x}_proj.{kind}"] for x in "qkv"])
            out[f"{b}attn.out_proj.{kind}"] = s[f"{a}self_attn.out_proj.{kind}"]
            out[f"{b}ln_1.{kind}"] = s[f"{a}layer_norm1.{kind}"]
            out[f"{b}ln_2.{kind}"] = s[f"{a}layer_norm2.{kind}"]
            out[f"{b}mlp.c_fc.{kind}"] = s[f"{a}mlp.fc1.{kind}"]
            out[f"{b}mlp.c_proj.{kind}"] = s[f"{a}mlp.fc2.{kind}"]
    return out


def write_clip_vision(path, model, layout: str = "transformers", prefix: str = "", metadata: bool = True) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    if layout == "transformers":
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
                 if not k.endswith("position_ids")}
    else:
        state = to_open_clip(model, prefix)
    save_file(state, str(path), metadata=vision_metadata(model) if metadata else None)
    return path


def style_adapter_state(width: int = 32, context: int = 32, layers: int = 2, tokens: int = 4,
                        seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in T2I-Adapter's style layout."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2, base=0.0):
        return torch.randn(*shape, generator=g) * scale + base

    s = {"style_embedding": r(1, tokens, width, scale=width ** -0.5), "proj": r(width, context, scale=width ** -0.5),
         "ln_pre.weight": r(width, base=1.0), "ln_pre.bias": r(width), "ln_post.weight": r(width, base=1.0),
         "ln_post.bias": r(width)}
    for i in range(layers):
        b = f"transformer_layes.{i}."
        s.update({b + "attn.in_proj_weight": r(3 * width, width), b + "attn.in_proj_bias": r(3 * width),
                  b + "attn.out_proj.weight": r(width, width), b + "attn.out_proj.bias": r(width),
                  b + "ln_1.weight": r(width, base=1.0), b + "ln_1.bias": r(width),
                  b + "ln_2.weight": r(width, base=1.0), b + "ln_2.bias": r(width),
                  b + "mlp.c_fc.weight": r(4 * width, width), b + "mlp.c_fc.bias": r(4 * width),
                  b + "mlp.c_proj.weight": r(width, 4 * width), b + "mlp.c_proj.bias": r(width)})
    return s


def write_style_model(path, state: dict[str, torch.Tensor], heads: int = 4) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path),
              metadata={"chisel.style_model": json.dumps({"num_attention_heads": heads})})
    return Path(path)


# -------------------------------------------------------------------------------------------------- tiny unCLIP


class TinyUnclip:
    """A tiny SD2.1-unCLIP model: an SD2 layout whose UNet takes a class input (diffusers' ``class_embed_type=
    "projection"``: the image embedding plus its noise-level embedding), with its image encoder and embedding
    statistics."""

    def __init__(self, seed: int = 0, embed_dim: int = 24):
        from diffusers import UNet2DConditionModel

        from nodes.testing import tiny

        base = tiny.build("sd2", seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 100)
            self.unet = UNet2DConditionModel(
                sample_size=8, in_channels=4, out_channels=4,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                block_out_channels=(16, 32, 32), layers_per_block=1, cross_attention_dim=32,
                attention_head_dim=(2, 4, 4), use_linear_projection=True, norm_num_groups=8,
                class_embed_type="projection", projection_class_embeddings_input_dim=2 * embed_dim).eval()
            g = torch.Generator().manual_seed(seed + 101)
            self.mean = torch.randn(1, embed_dim, generator=g) * 0.5
            self.std = torch.rand(1, embed_dim, generator=g) + 0.5
        self.vae, self.text_encoder = base.vae, base.text_encoder
        self.tower = build_clip_vision(width=32, projection=embed_dim, seed=seed + 102)
        self.embed_dim = embed_dim


def write_unclip(path, model: TinyUnclip, dtype: torch.dtype | None = torch.float32, with_vision: bool = True) -> Path:
    """An SD2.1-unCLIP single file: the SD2 components, the image encoder under ``embedder.model.visual.`` and the
    embedding statistics as ``noise_augmentor.data_mean`` / ``data_std`` (with the augmentor's schedule buffers, as
    the published files carry them)."""
    from safetensors.torch import save_file

    from nodes.testing.export import chisel_metadata, ldm_state_dict

    sd = ldm_state_dict("sd2", model.unet, model.vae, model.text_encoder)
    if with_vision:
        sd.update(to_open_clip(model.tower, "embedder.model."))
    sd["noise_augmentor.data_mean"] = model.mean
    sd["noise_augmentor.data_std"] = model.std
    sd["noise_augmentor.betas"] = torch.linspace(1e-4, 0.02, 1000)
    meta = chisel_metadata("sd2", model.unet, model.vae, model.text_encoder, prediction_type="epsilon")
    meta.update(vision_metadata(model.tower))
    state = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).contiguous()
             for k, v in sd.items()}
    save_file(state, str(path), metadata=meta)
    return Path(path)
