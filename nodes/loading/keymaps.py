"""Key maps between diffusers/transformers module layouts and the original (LDM/CompVis, SGM) single-file layout.

diffusers' own diffusers->LDM conversion scripts hard-code SD1.5's block table; these maps are derived from a model's
config instead, so they work for any block count, layer count and transformer depth (full-size or tiny). They are
used by the exporter (diffusers -> LDM) and by the loader to account for every file tensor.

Each ``*_key_map`` returns ``{diffusers_or_hf_key: ldm_key}`` for the given module state keys (without the file
prefix). Tensors that change shape on the way (VAE mid attention 1x1 convs, OpenCLIP fused qkv and transposed
projection) are handled in :mod:`nodes.testing.export`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# File prefixes of the components, per family.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer.text_model."
SD2_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
SDXL_REFINER_CLIP_G_PREFIX = "conditioner.embedders.0.model."

_RESNET_RENAMES = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
)


def _as_list(value: Any, n: int) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"expected {n} values, got {list(value)}")
        return list(value)
    return [value] * n


def unet_prefix_map(config: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """Ordered ``(diffusers_prefix, ldm_prefix, is_resnet)`` rules for a UNet2DConditionModel config."""
    down = list(config["down_block_types"])
    up = list(config["up_block_types"])
    n = len(down)
    layers = _as_list(config.get("layers_per_block", 2), n)
    rules: list[tuple[str, str, bool]] = [
        ("time_embedding.linear_1.", "time_embed.0.", False),
        ("time_embedding.linear_2.", "time_embed.2.", False),
        ("add_embedding.linear_1.", "label_emb.0.0.", False),
        ("add_embedding.linear_2.", "label_emb.0.2.", False),
        ("class_embedding.linear_1.", "label_emb.0.0.", False),
        ("class_embedding.linear_2.", "label_emb.0.2.", False),
        ("conv_in.", "input_blocks.0.0.", False),
        ("conv_norm_out.", "out.0.", False),
        ("conv_out.", "out.2.", False),
    ]
    k = 1
    for i in range(n):
        for j in range(layers[i]):
            rules.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{k}.0.", True))
            rules.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{k}.1.", False))
            k += 1
        if i < n - 1:
            rules.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{k}.0.op.", False))
            k += 1
    mid_type = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    rules.append(("mid_block.resnets.0.", "middle_block.0.", True))
    if mid_type == "UNetMidBlock2DCrossAttn":
        rules.append(("mid_block.attentions.0.", "middle_block.1.", False))
        rules.append(("mid_block.resnets.1.", "middle_block.2.", True))
    else:
        rules.append(("mid_block.resnets.1.", "middle_block.1.", True))
    up_layers = list(reversed(layers))
    k = 0
    for i in range(len(up)):
        has_attn = "CrossAttn" in up[i]
        for j in range(up_layers[i] + 1):
            rules.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{k}.0.", True))
            rules.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{k}.1.", False))
            if j == up_layers[i] and i < len(up) - 1:
                slot = 2 if has_attn else 1
                rules.append((f"up_blocks.{i}.upsamplers.0.conv.", f"output_blocks.{k}.{slot}.conv.", False))
            k += 1
    return rules


def _apply_rules(key: str, rules: Iterable[tuple[str, str, bool]], renames=_RESNET_RENAMES) -> str | None:
    for src, dst, is_resnet in rules:
        if key.startswith(src):
            rest = key[len(src):]
            if is_resnet:
                for a, b in renames:
                    if rest.startswith(a):
                        rest = b + rest[len(a):]
                        break
            return dst + rest
    return None


def unet_key_map(config: Mapping[str, Any], keys: Iterable[str]) -> dict[str, str]:
    """``{diffusers_key: ldm_key}`` (LDM keys without the ``model.diffusion_model.`` prefix)."""
    rules = unet_prefix_map(config)
    out: dict[str, str] = {}
    for key in keys:
        mapped = _apply_rules(key, rules)
        if mapped is None:
            raise KeyError(f"UNet key {key!r} has no place in the LDM layout")
        out[key] = mapped
    return out


_VAE_RESNET_RENAMES = (("conv_shortcut.", "nin_shortcut."),)
_VAE_ATTN_RENAMES = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)


def vae_key_map(config: Mapping[str, Any], keys: Iterable[str]) -> dict[str, str]:
    """``{diffusers_key: ldm_key}`` for an AutoencoderKL (LDM keys without the ``first_stage_model.`` prefix)."""
    n = len(config["down_block_types"])
    rules: list[tuple[str, str, tuple]] = []
    for part in ("encoder", "decoder"):
        rules += [
            (f"{part}.conv_in.", f"{part}.conv_in.", ()),
            (f"{part}.conv_out.", f"{part}.conv_out.", ()),
            (f"{part}.conv_norm_out.", f"{part}.norm_out.", ()),
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", _VAE_RESNET_RENAMES),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", _VAE_RESNET_RENAMES),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTN_RENAMES),
        ]
    for i in range(n):
        rules.append((f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.", _VAE_RESNET_RENAMES))
        rules.append((f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.", ()))
        rules.append((f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block.", _VAE_RESNET_RENAMES))
        rules.append((f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{n - 1 - i}.upsample.conv.", ()))
    rules += [("quant_conv.", "quant_conv.", ()), ("post_quant_conv.", "post_quant_conv.", ())]
    out: dict[str, str] = {}
    for key in keys:
        for src, dst, renames in rules:
            if key.startswith(src):
                rest = key[len(src):]
                if renames is _VAE_RESNET_RENAMES:
                    # rest is "<j>.<name>..." for down/up blocks, "<name>..." for mid blocks
                    head, _, tail = rest.partition(".") if rest[:1].isdigit() else ("", "", rest)
                    for a, b in renames:
                        if tail.startswith(a):
                            tail = b + tail[len(a):]
                    rest = f"{head}.{tail}" if head else tail
                else:
                    for a, b in renames:
                        if rest.startswith(a):
                            rest = b + rest[len(a):]
                            break
                out[key] = dst + rest
                break
        else:
            raise KeyError(f"VAE key {key!r} has no place in the LDM layout")
    return out


def is_vae_attention_matrix(ldm_key: str) -> bool:
    """The VAE mid-attention projections: 1x1 convs ([C, C, 1, 1]) in LDM files, linears ([C, C]) in diffusers."""
    return ".mid.attn_1." in ldm_key and ldm_key.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight"))


def strip_text_model(key: str) -> str:
    """transformers >= 5.6 CLIPTextModel keys have no ``text_model.`` prefix; normalise to that flat form."""
    return key[len("text_model."):] if key.startswith("text_model.") else key


def clip_l_key_map(keys: Iterable[str]) -> dict[str, str]:
    """``{flat_hf_key: ldm_key}`` for an OpenAI CLIP text model; LDM keys are relative to ``...transformer.text_model.``."""
    out = {}
    for key in keys:
        flat = strip_text_model(key)
        if flat == "text_projection.weight":
            raise KeyError("the LDM layout of an OpenAI CLIP text encoder has no text projection")
        out[key] = flat
    return out


_OPEN_CLIP_RENAMES = (
    ("self_attn.out_proj.", "attn.out_proj."),
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
)


def open_clip_key_map(keys: Iterable[str]) -> dict[str, str]:
    """``{hf_key: ldm_key}`` for an OpenCLIP text tower (relative to ``...model.``).

    q/k/v projections map to the fused ``attn.in_proj_weight`` / ``attn.in_proj_bias`` (three HF keys share one LDM
    key); ``text_projection.weight`` maps to ``text_projection`` (transposed).
    """
    out = {}
    for key in keys:
        flat = strip_text_model(key)
        if flat == "embeddings.token_embedding.weight":
            out[key] = "token_embedding.weight"
        elif flat == "embeddings.position_embedding.weight":
            out[key] = "positional_embedding"
        elif flat.startswith("final_layer_norm."):
            out[key] = "ln_final." + flat[len("final_layer_norm."):]
        elif flat == "text_projection.weight":
            out[key] = "text_projection"
        elif flat.startswith("encoder.layers."):
            rest = flat[len("encoder.layers."):]
            idx, _, tail = rest.partition(".")
            for proj in ("q_proj", "k_proj", "v_proj"):
                if tail.startswith(f"self_attn.{proj}."):
                    kind = tail.rsplit(".", 1)[1]
                    out[key] = f"transformer.resblocks.{idx}.attn.in_proj_{kind}"
                    break
            else:
                for a, b in _OPEN_CLIP_RENAMES:
                    if tail.startswith(a):
                        tail = b + tail[len(a):]
                        break
                else:
                    raise KeyError(f"OpenCLIP key {key!r} has no place in the LDM layout")
                out[key] = f"transformer.resblocks.{idx}.{tail}"
        elif flat == "embeddings.position_ids":
            continue
        else:
            raise KeyError(f"OpenCLIP key {key!r} has no place in the LDM layout")
    return out
