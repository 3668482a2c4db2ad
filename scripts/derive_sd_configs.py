"""Derive the diffusers-layout configs Chisel ships for SD2.x (512 epsilon, 768 v), SD1.5/SD2 inpainting and the SDXL
refiner, from the hyperparameters of the original LDM/SGM yaml files, through diffusers' own functions
(``create_unet_diffusers_config_from_ldm`` / ``create_vae_diffusers_config_from_ldm``).

    python scripts/derive_sd_configs.py          # write nodes/configs/{sd2,sd2_v,sdxl_refiner}
    python scripts/derive_sd_configs.py --check  # compare with what is shipped, exit 1 on a difference

The yaml values below are the published architecture hyperparameters (v2-inference.yaml, v2-inference-v.yaml,
v1-inpainting-inference.yaml, v2-inpainting-inference.yaml, sd_xl_refiner.yaml). The same functions applied to SD1.5's
v1-inference.yaml reproduce the shipped sd15 unet/vae exactly (checked by ``--check`` too), which is what makes the
derivation trustworthy. Text encoder configs are not derivable that way; they are the published values, except that
SD2's OpenCLIP-H keeps all 24 layers (diffusers drops the last one; Chisel keeps it so that every tensor of the file
is used and CLIPSetLastLayer(-1) means the last layer, as in ComfyUI).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "nodes" / "configs"

VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _ldm(unet_params: dict, scale_factor: float, sgm: bool = False) -> dict:
    params = {"scale_factor": scale_factor, "first_stage_config": {"params": {"ddconfig": VAE_DDCONFIG}}}
    params["network_config" if sgm else "unet_config"] = {"params": unet_params}
    return {"model": {"params": params}}


SD1_UNET = {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
            "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "num_heads": 8,
            "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": 768, "legacy": False}
SD2_UNET = {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
            "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
            "num_head_channels": 64, "use_spatial_transformer": True, "use_linear_in_transformer": True,
            "transformer_depth": 1, "context_dim": 1024, "legacy": False}
REFINER_UNET = {"adm_in_channels": 2560, "num_classes": "sequential", "in_channels": 4, "out_channels": 4,
                "model_channels": 384, "attention_resolutions": [4, 2], "num_res_blocks": 2,
                "channel_mult": [1, 2, 4, 4], "num_head_channels": 64, "use_linear_in_transformer": True,
                "transformer_depth": 4, "context_dim": [1280, 1280, 1280, 1280], "spatial_transformer_attn_type":
                "softmax-xformers"}

SD2_TEXT_ENCODER = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 2, "hidden_act": "gelu", "hidden_size": 1024, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 4096, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
    "model_type": "clip_text_model", "num_attention_heads": 16, "num_hidden_layers": 24, "pad_token_id": 1,
    "projection_dim": 512, "vocab_size": 49408,
}


class _Shape:
    def __init__(self, *shape):
        self.shape = shape


def _probe(kind: str, in_channels: int = 4) -> dict:
    """A fake checkpoint with just the keys diffusers' model-type sniffing reads."""
    ck = {"model.diffusion_model.input_blocks.0.0.weight": _Shape(320, in_channels, 3, 3)}
    if kind == "v2":
        ck["model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"] = _Shape(320, 1024)
    elif kind == "v1":
        ck["model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"] = _Shape(320, 768)
    elif kind == "xl_refiner":
        ck["conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias"] = _Shape(1280)
    return ck


def derive() -> dict[str, dict[str, dict]]:
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    def unet_vae(unet_params, scale, probe, sgm=False):
        orig = _ldm(unet_params, scale, sgm)
        u = create_unet_diffusers_config_from_ldm(orig, probe)
        v = create_vae_diffusers_config_from_ldm(orig, probe)
        return u, v

    def load(name, comp):
        p = CONFIGS / name / comp
        f = p / ("scheduler_config.json" if comp == "scheduler" else "config.json")
        return json.loads(f.read_text())

    out: dict[str, dict[str, dict]] = {}

    # SD1.5: the control case (must equal what ships).
    u, v = unet_vae(SD1_UNET, 0.18215, _probe("v1"))
    if u.get("transformer_layers_per_block") == 1:
        u.pop("transformer_layers_per_block")  # the default; the published sd15 config leaves it out
    sd15 = {"unet": {**load("sd15", "unet"), **u}, "vae": {**load("sd15", "vae"), **v}}
    out["sd15_check"] = sd15

    # SD2 512 (epsilon) and 768 (v-prediction): same network, different objective and default size.
    u, v = unet_vae(SD2_UNET, 0.18215, _probe("v2"))
    base_unet = {**load("sd15", "unet"), **u}
    base_unet.pop("transformer_layers_per_block", None)  # 1, the default (as in the sd15 config)
    sched = load("sd15", "scheduler")
    sched = {**sched, "_class_name": "DDIMScheduler"}
    for k in ("skip_prk_steps",):
        sched.pop(k, None)
    out["sd2"] = {
        "unet": {**base_unet, "sample_size": 64, "upcast_attention": False},
        "vae": {**load("sd15", "vae"), **v, "sample_size": 512},
        "text_encoder": dict(SD2_TEXT_ENCODER),
        "scheduler": {**sched, "prediction_type": "epsilon"},
    }
    out["sd2_v"] = {
        "unet": {**base_unet, "sample_size": 96, "upcast_attention": True},
        "vae": {**load("sd15", "vae"), **v, "sample_size": 768},
        "text_encoder": dict(SD2_TEXT_ENCODER),
        "scheduler": {**sched, "prediction_type": "v_prediction"},
    }

    # Inpainting: the same networks with 9 input channels (checked, not shipped separately: the loader reads
    # in_channels from the file).
    out["sd15_inpaint_check"] = {"unet": create_unet_diffusers_config_from_ldm(
        _ldm({**SD1_UNET, "in_channels": 9}, 0.18215), _probe("v1", 9))}
    out["sd2_inpaint_check"] = {"unet": create_unet_diffusers_config_from_ldm(
        _ldm({**SD2_UNET, "in_channels": 9}, 0.18215), _probe("v2", 9))}

    # SDXL refiner.
    u, v = unet_vae(REFINER_UNET, 0.13025, _probe("xl_refiner"), sgm=True)
    xl_unet = load("sdxl", "unet")
    ref_unet = {**xl_unet, **u}
    ref_unet.pop("reverse_transformer_layers_per_block", None)
    out["sdxl_refiner"] = {
        "unet": ref_unet,
        "vae": {**load("sdxl", "vae"), **v, "force_upcast": True},
        "text_encoder_2": load("sdxl", "text_encoder_2"),
        "scheduler": load("sdxl", "scheduler"),
    }
    return out


SHIPPED = ("sd2", "sd2_v", "sdxl_refiner")


def _write(name: str, comps: dict[str, dict]) -> None:
    for comp, cfg in comps.items():
        d = CONFIGS / name / comp
        d.mkdir(parents=True, exist_ok=True)
        f = d / ("scheduler_config.json" if comp == "scheduler" else "config.json")
        f.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _nonnull(d: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(d)).items() if v is not None}


def check(derived: dict) -> list[str]:
    problems = []

    def load(name, comp):
        f = CONFIGS / name / comp / ("scheduler_config.json" if comp == "scheduler" else "config.json")
        return json.loads(f.read_text()) if f.is_file() else None

    for comp in ("unet", "vae"):
        shipped = load("sd15", comp)
        if _nonnull(shipped) != _nonnull(derived["sd15_check"][comp]):
            diff = {k: (shipped.get(k), derived["sd15_check"][comp].get(k)) for k in
                    set(shipped) | set(derived["sd15_check"][comp])
                    if shipped.get(k) != derived["sd15_check"][comp].get(k)}
            problems.append(f"sd15/{comp}: shipped differs from the derivation: {diff}")
    for name in SHIPPED:
        for comp, cfg in derived[name].items():
            if load(name, comp) != json.loads(json.dumps(cfg)):
                problems.append(f"{name}/{comp}: shipped config differs from the derivation (rerun the script)")
    for name, base in (("sd15_inpaint_check", "sd15"), ("sd2_inpaint_check", "sd2")):
        u = derived[name]["unet"]
        if u["in_channels"] != 9:
            problems.append(f"{name}: in_channels {u['in_channels']}")
        ref = load(base, "unet")
        for k in ("block_out_channels", "down_block_types", "up_block_types", "attention_head_dim",
                  "cross_attention_dim", "use_linear_projection"):
            if ref is not None and json.loads(json.dumps(u[k])) != ref[k]:
                problems.append(f"{name}: {k} {u[k]} differs from {base}'s {ref[k]}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    derived = derive()
    if not args.check:
        for name in SHIPPED:
            _write(name, derived[name])
    problems = check(derived)
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print("configs agree with their derivation")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
