"""Write diffusers/transformers modules as a single-file checkpoint in the original (LDM/SGM) key layout.

The key maps are derived from each module's config (see :mod:`nodes.loading.keymaps`), so tiny models of the real
architectures come out in exactly the layout of the files people download. What the tensor shapes cannot tell the
loader (attention head counts, group-norm groups, activation functions, the VAE scaling factor, the prediction type)
is written to the safetensors ``__metadata__`` under ``chisel.*`` keys; a full-size file without that metadata loads
by its layout alone (the family defaults are the published configs).

    from nodes.testing.export import write_sd1_checkpoint
    write_sd1_checkpoint("models/checkpoints/demo.safetensors", unet, vae, text_encoder)

Before writing, the exporter re-infers the configs from the tensors it is about to write (the loader's own code path)
and refuses to write a file the loader would rebuild differently.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nodes.loading import keymaps as km

FORMAT_VERSION = "1"

# Config fields the tensor shapes cannot tell; stored in the file's metadata (``chisel.<component>``).
UNET_META_FIELDS = (
    "attention_head_dim", "num_attention_heads", "norm_num_groups", "norm_eps", "act_fn", "flip_sin_to_cos",
    "freq_shift", "upcast_attention", "resnet_time_scale_shift", "addition_time_embed_dim", "sample_size",
    "downsample_padding", "mid_block_scale_factor", "time_embedding_type",
)
VAE_META_FIELDS = ("norm_num_groups", "act_fn", "scaling_factor", "shift_factor", "force_upcast", "sample_size")
TEXT_META_FIELDS = ("num_attention_heads", "hidden_act", "layer_norm_eps", "bos_token_id", "eos_token_id", "pad_token_id")
SCHEDULER_META_FIELDS = ("prediction_type", "beta_start", "beta_end", "beta_schedule", "num_train_timesteps")

FAMILY_ARCHITECTURE = {
    "sd1": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2",
    "sdxl": "stable-diffusion-xl-v1-base",
    "sdxl_refiner": "stable-diffusion-xl-v1-refiner",
}


def _config_dict(module_or_config: Any) -> dict[str, Any]:
    cfg = getattr(module_or_config, "config", module_or_config)
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    return dict(cfg)


def _pick(config: Mapping[str, Any], fields) -> dict[str, Any]:
    out = {}
    for f in fields:
        if f in config:
            v = config[f]
            out[f] = list(v) if isinstance(v, tuple) else v
    return out


def _state(module: Any) -> dict[str, torch.Tensor]:
    if isinstance(module, Mapping):
        return dict(module)
    return {k: v for k, v in module.state_dict().items()}


def unet_to_ldm(unet: Any, config: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """A UNet2DConditionModel (or its state dict + config) as ``model.diffusion_model.*`` tensors."""
    config = _config_dict(config if config is not None else unet)
    state = _state(unet)
    mapping = km.unet_key_map(config, state.keys())
    return {km.UNET_PREFIX + mapping[k]: v for k, v in state.items()}


def vae_to_ldm(vae: Any, config: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """An AutoencoderKL as ``first_stage_model.*`` tensors (mid-attention linears become 1x1 convs)."""
    config = _config_dict(config if config is not None else vae)
    state = _state(vae)
    mapping = km.vae_key_map(config, state.keys())
    out = {}
    for k, v in state.items():
        ldm = mapping[k]
        if km.is_vae_attention_matrix(ldm) and v.ndim == 2:
            v = v[:, :, None, None]
        out[km.VAE_PREFIX + ldm] = v
    return out


def clip_l_to_ldm(text_encoder: Any, prefix: str, with_position_ids: bool = True) -> dict[str, torch.Tensor]:
    """An OpenAI-CLIP CLIPTextModel as ``<prefix>*`` tensors (``<prefix>`` ends in ``text_model.``)."""
    state = _state(text_encoder)
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    mapping = km.clip_l_key_map(state.keys())
    out = {prefix + mapping[k]: v for k, v in state.items()}
    if with_position_ids:
        n = next(v for k, v in state.items() if k.endswith("position_embedding.weight")).shape[0]
        out[prefix + "embeddings.position_ids"] = torch.arange(n, dtype=torch.int64)[None]
    return out


def open_clip_to_ldm(text_encoder: Any, prefix: str, add_projection: bool = True) -> dict[str, torch.Tensor]:
    """An OpenCLIP text tower (CLIPTextModel[WithProjection]) as ``<prefix>*`` tensors (``<prefix>`` ends in ``model.``).

    Real SD2 files carry ``text_projection`` and ``logit_scale`` although SD2 uses neither; with ``add_projection`` a
    model without a projection gets an identity one so the file has the real key set.
    """
    state = {k: v for k, v in _state(text_encoder).items() if not k.endswith("position_ids")}
    mapping = km.open_clip_key_map(state.keys())
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        ldm = mapping[k]
        if ".attn.in_proj_" in ldm:
            which = km.strip_text_model(k).split(".self_attn.")[1][0]  # q / k / v
            fused.setdefault(ldm, {})[which] = v
        elif ldm == "text_projection":
            out[prefix + ldm] = v.t()
        else:
            out[prefix + ldm] = v
    for ldm, parts in fused.items():
        out[prefix + ldm] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    width = out[prefix + "token_embedding.weight"].shape[1]
    like = out[prefix + "token_embedding.weight"]
    if prefix + "text_projection" not in out and add_projection:
        out[prefix + "text_projection"] = torch.eye(width, dtype=like.dtype, device=like.device)
    if add_projection:
        out[prefix + "logit_scale"] = torch.tensor(math.log(1 / 0.07), dtype=like.dtype, device=like.device)
    return out


def ldm_state_dict(family: str, unet: Any, vae: Any, text_encoder: Any = None,
                   text_encoder_2: Any = None) -> dict[str, torch.Tensor]:
    """All components of a checkpoint in the file layout of ``family`` (sd1, sd2, sdxl, sdxl_refiner)."""
    sd = unet_to_ldm(unet)
    sd.update(vae_to_ldm(vae))
    if family == "sd1":
        sd.update(clip_l_to_ldm(text_encoder, km.SD1_CLIP_PREFIX))
    elif family == "sd2":
        sd.update(open_clip_to_ldm(text_encoder, km.SD2_CLIP_PREFIX))
    elif family == "sdxl":
        sd.update(clip_l_to_ldm(text_encoder, km.SDXL_CLIP_L_PREFIX))
        sd.update(open_clip_to_ldm(text_encoder_2, km.SDXL_CLIP_G_PREFIX))
    elif family == "sdxl_refiner":
        sd.update(open_clip_to_ldm(text_encoder_2 if text_encoder_2 is not None else text_encoder,
                                   km.SDXL_REFINER_CLIP_G_PREFIX))
    else:
        raise ValueError(f"unknown family {family!r}; expected sd1, sd2, sdxl or sdxl_refiner")
    return sd


def chisel_metadata(family: str, unet: Any, vae: Any, text_encoder: Any = None, text_encoder_2: Any = None,
                    scheduler: Any = None, prediction_type: str | None = None) -> dict[str, str]:
    """The ``chisel.*`` metadata: the config fields the shapes cannot tell, per component."""
    meta = {
        "chisel.format": FORMAT_VERSION,
        "chisel.family": family,
        "modelspec.architecture": FAMILY_ARCHITECTURE[family],
        "chisel.unet": json.dumps(_pick(_config_dict(unet), UNET_META_FIELDS), sort_keys=True),
        "chisel.vae": json.dumps(_pick(_config_dict(vae), VAE_META_FIELDS), sort_keys=True),
    }
    if family == "sdxl_refiner":
        text_encoder_2 = text_encoder_2 if text_encoder_2 is not None else text_encoder
        text_encoder = None
    if text_encoder is not None:
        meta["chisel.text_encoder"] = json.dumps(_pick(_config_dict(text_encoder), TEXT_META_FIELDS), sort_keys=True)
    if text_encoder_2 is not None:
        meta["chisel.text_encoder_2"] = json.dumps(_pick(_config_dict(text_encoder_2), TEXT_META_FIELDS),
                                                   sort_keys=True)
    sched = _pick(_config_dict(scheduler), SCHEDULER_META_FIELDS) if scheduler is not None else {}
    if prediction_type is not None:
        sched["prediction_type"] = prediction_type
    if sched:
        meta["chisel.scheduler"] = json.dumps(sched, sort_keys=True)
        if "prediction_type" in sched:
            meta["modelspec.prediction_type"] = sched["prediction_type"]
    return meta


def _cast(sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        v = v.detach()
        if v.device.type != "cpu":
            v = v.cpu()
        if dtype is not None and v.is_floating_point() and v.dtype != dtype:
            v = v.to(dtype)
        else:
            v = v.clone()
        out[k] = v.contiguous()
    return out


def write_checkpoint(path: str | Path, family: str, unet: Any, vae: Any, text_encoder: Any = None,
                     text_encoder_2: Any = None, metadata: Mapping[str, Any] | None = None,
                     dtype: torch.dtype | None = torch.float16, scheduler: Any = None,
                     prediction_type: str | None = None, verify: bool = True) -> Path:
    """Write a single-file ``.safetensors`` checkpoint of ``family`` in the original key layout.

    ``metadata`` adds string entries to the header (non-strings are JSON-encoded). ``dtype`` casts floating tensors
    (None keeps them). ``scheduler`` (a diffusers scheduler or its config) and ``prediction_type`` record how the
    model was trained. With ``verify`` the configs the loader would infer from this file are compared with the
    modules' own configs first.
    """
    from safetensors.torch import save_file

    sd = ldm_state_dict(family, unet, vae, text_encoder, text_encoder_2)
    meta = chisel_metadata(family, unet, vae, text_encoder, text_encoder_2, scheduler, prediction_type)
    for k, v in (metadata or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    if verify:
        _verify_roundtrip(family, sd, meta, unet, vae, text_encoder, text_encoder_2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file(_cast(sd, dtype), str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def write_sd1_checkpoint(path: str | Path, unet: Any, vae: Any, text_encoder: Any,
                         metadata: Mapping[str, Any] | None = None, dtype: torch.dtype | None = torch.float16,
                         scheduler: Any = None, prediction_type: str | None = None) -> Path:
    """diffusers UNet2DConditionModel + AutoencoderKL + transformers CLIPTextModel -> an SD1.x single file."""
    return write_checkpoint(path, "sd1", unet, vae, text_encoder, metadata=metadata, dtype=dtype,
                            scheduler=scheduler, prediction_type=prediction_type)


def write_sd2_checkpoint(path: str | Path, unet: Any, vae: Any, text_encoder: Any, **kw: Any) -> Path:
    return write_checkpoint(path, "sd2", unet, vae, text_encoder, **kw)


def write_sdxl_checkpoint(path: str | Path, unet: Any, vae: Any, text_encoder: Any, text_encoder_2: Any,
                          **kw: Any) -> Path:
    return write_checkpoint(path, "sdxl", unet, vae, text_encoder, text_encoder_2, **kw)


def write_sdxl_refiner_checkpoint(path: str | Path, unet: Any, vae: Any, text_encoder_2: Any, **kw: Any) -> Path:
    return write_checkpoint(path, "sdxl_refiner", unet, vae, None, text_encoder_2, **kw)


# Fields compared by the round-trip check (the ones that change the module a config builds).
_UNET_CHECK = (
    "in_channels", "out_channels", "block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
    "cross_attention_dim", "use_linear_projection", "addition_embed_type", "projection_class_embeddings_input_dim",
    "addition_time_embed_dim", "norm_num_groups", "act_fn", "mid_block_type", "conv_in_kernel", "conv_out_kernel",
)
_VAE_CHECK = ("block_out_channels", "layers_per_block", "latent_channels", "in_channels", "out_channels",
              "norm_num_groups", "scaling_factor")
_TEXT_CHECK = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
               "max_position_embeddings", "hidden_act")


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _verify_roundtrip(family, sd, meta, unet, vae, text_encoder, text_encoder_2) -> None:
    from nodes.loading.configs import infer_configs
    from nodes.loading.detect import detect

    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    det = detect(shapes, meta)
    if det.family != family:
        raise ValueError(f"exported {family} but the layout reads as {det.family}")
    cfgs = infer_configs(det, shapes, meta)
    pairs = [("unet", unet, _UNET_CHECK), ("vae", vae, _VAE_CHECK)]
    if family == "sdxl_refiner":
        pairs.append(("text_encoder_2", text_encoder_2 if text_encoder_2 is not None else text_encoder, _TEXT_CHECK))
    else:
        pairs.append(("text_encoder", text_encoder, _TEXT_CHECK))
        if family == "sdxl":
            pairs.append(("text_encoder_2", text_encoder_2, _TEXT_CHECK))
    problems = []
    for name, module, fields in pairs:
        src = _config_dict(module)
        got = cfgs[name]
        for f in fields:
            if f in src and _norm(src[f]) != _norm(got.get(f)) and not (f == "layers_per_block" and isinstance(
                    src[f], (list, tuple)) and len(set(src[f])) == 1 and src[f][0] == got.get(f)):
                problems.append(f"{name}.{f}: module has {src[f]!r}, file would load as {got.get(f)!r}")
    if problems:
        raise ValueError("this model cannot be written so that it loads back identically:\n  " + "\n  ".join(problems))
