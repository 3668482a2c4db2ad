"""Tiny random-weight models of the real Stable Diffusion architectures (a few MB), for tests and examples.

Each is built from diffusers/transformers classes with small widths but the structure of its family (attention
placement, linear vs conv projections, SDXL's two text encoders of different widths and its time/size embedding,
the refiner's single OpenCLIP encoder, 9-channel inpainting input), so writing one with :mod:`nodes.testing.export`
gives a file in exactly the real key layout. The VAE keeps four levels so latents are 1/8 of the image size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

FAMILIES = ("sd1", "sd1_inpaint", "sd2", "sd2_v", "sdxl", "sdxl_refiner", "sd1_plain")
# sd1_plain: a tiny SD1 whose hyperparameters that shapes cannot tell (8 attention heads, 32 norm groups, one head
# per 64 text channels, quick-GELU) equal SD1.5's published ones, so it loads with no metadata at all (as a .ckpt
# pickle or a stripped file would).


@dataclass
class TinyModel:
    family: str  # exporter family: sd1 | sd2 | sdxl | sdxl_refiner
    unet: Any
    vae: Any
    text_encoder: Any = None
    text_encoder_2: Any = None
    prediction_type: str = "epsilon"


def _clip(width: int, layers: int, heads: int, act: str, projection: int | None = None, pad_token_id: int = 1):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=width * 2, num_hidden_layers=layers,
                         num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
                         projection_dim=projection or width, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _vae(scaling_factor: float = 0.18215, force_upcast: bool = True, plain: bool = False):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(32, 32, 32, 32) if plain else (8, 16, 16, 16),
                         layers_per_block=1, latent_channels=4, norm_num_groups=32 if plain else 4, sample_size=32,
                         scaling_factor=scaling_factor, force_upcast=force_upcast).eval()


def build(family: str, seed: int = 0) -> TinyModel:
    """A tiny model of ``family`` (see :data:`FAMILIES`), deterministic for a given seed. The global torch RNG is
    left as it was (so what a caller draws next does not depend on whether a model was built first)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(family)


def _build(family: str) -> TinyModel:
    from diffusers import UNet2DConditionModel

    if family in ("sd1", "sd1_inpaint"):
        te = _clip(32, 2, 4, "quick_gelu")
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=9 if family == "sd1_inpaint" else 4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=4,
            norm_num_groups=8)
        return TinyModel("sd1", unet.eval(), _vae(), te)
    if family == "sd1_plain":
        te = _clip(64, 2, 1, "quick_gelu")
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=64, attention_head_dim=8,
            norm_num_groups=32)
        return TinyModel("sd1", unet.eval(), _vae(plain=True), te)
    if family in ("sd2", "sd2_v"):
        te = _clip(32, 3, 2, "gelu", pad_token_id=0)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(16, 32, 32), layers_per_block=1, cross_attention_dim=32,
            attention_head_dim=(2, 4, 4), use_linear_projection=True, norm_num_groups=8)
        return TinyModel("sd2", unet.eval(), _vae(), te,
                         prediction_type="v_prediction" if family == "sd2_v" else "epsilon")
    if family == "sdxl":
        te = _clip(32, 2, 4, "quick_gelu")
        te2 = _clip(48, 2, 4, "gelu", projection=48, pad_token_id=0)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=80, attention_head_dim=(2, 4),
            transformer_layers_per_block=(1, 2), use_linear_projection=True, norm_num_groups=8,
            addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=48 + 6 * 8)
        return TinyModel("sdxl", unet.eval(), _vae(0.13025), te, te2)
    if family == "sdxl_refiner":
        te2 = _clip(48, 2, 4, "gelu", projection=48, pad_token_id=0)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(16, 32, 32), layers_per_block=1, cross_attention_dim=48, attention_head_dim=(2, 4, 4),
            transformer_layers_per_block=2, use_linear_projection=True, norm_num_groups=8,
            addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=48 + 5 * 8)
        return TinyModel("sdxl_refiner", unet.eval(), _vae(0.13025), None, te2)
    raise ValueError(f"unknown tiny family {family!r}; choose from {', '.join(FAMILIES)}")


def write(family: str, path, seed: int = 0, dtype: torch.dtype | None = torch.float16, metadata=None):
    """Build a tiny ``family`` model and write it as a single-file checkpoint; returns (path, TinyModel)."""
    from nodes.testing.export import write_checkpoint

    m = build(family, seed)
    p = write_checkpoint(path, m.family, m.unet, m.vae, m.text_encoder, m.text_encoder_2, metadata=metadata,
                         dtype=dtype, prediction_type=m.prediction_type)
    return p, m
