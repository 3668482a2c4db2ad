"""Read a ControlNet file into diffusers' ``ControlNetModel``, completely and offline.

Layouts read:

- the original (LDM) single-file layout of ``control_v11*`` (SD1.5) and the SD2 ControlNets: ``input_blocks``,
  ``middle_block``, ``zero_convs``, ``middle_block_out``, ``input_hint_block`` (with or without the
  ``control_model.`` prefix; SDXL's ``label_emb`` too), converted with diffusers' ``convert_controlnet_checkpoint``;
- "difference" ControlNets (a ``difference`` marker tensor): their tensors are added to the given UNet's weights;
- diffusers' layout as one file (how SDXL ControlNets are published), with the folder's ``config.json`` when it sits
  beside the weights, else a config inferred from the tensor shapes;
- a diffusers folder (``config.json`` + weights);
- T2I-Adapters in every layout :mod:`nodes.controlnet.t2i_load` reads (ComfyUI loads them with the same node).

The architecture is read from the tensor shapes; what shapes cannot tell (attention heads) follows the published
convention of the family (SD1: 8 heads; SD2 and SDXL: one head per 64 channels) unless the file's ``chisel.controlnet``
metadata says otherwise. Every parameter must come from the file and every file tensor must find a parameter.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from nodes.controlnet import t2i_load
from nodes.loading.configs import metadata_fields
from nodes.loading.errors import (
    CorruptCheckpoint,
    IncompleteCheckpoint,
    UnrecognisedArchitecture,
    WrongFileKind,
    check_parameters_match,
)
from nodes.loading.libraries import import_model_libraries
from nodes.loading.progress import IMPORTING, READING, Report, Stages
from nodes.loading.weights import read_tensors

LDM_PREFIX = "control_model."
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
META_KEY = "chisel.controlnet"
META_FIELDS = ("attention_head_dim", "num_attention_heads", "norm_num_groups", "norm_eps", "act_fn",
               "flip_sin_to_cos", "freq_shift", "upcast_attention", "resnet_time_scale_shift",
               "addition_time_embed_dim", "downsample_padding", "mid_block_scale_factor",
               "controlnet_conditioning_channel_order", "global_pool_conditions")
FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
KIND_NAMES = {"controlnet": "ControlNet", "t2i_adapter": "T2I-Adapter"}


@dataclass
class LoadedControlNet:
    module: torch.nn.Module  # diffusers ControlNetModel, eval, no grad
    config: dict
    family: str  # sd1 | sd2 | sdxl (from the layout)
    layout: str  # ldm | diffusers | diffusers-folder | difference | t2i-adapter
    kind: str = "controlnet"  # controlnet | t2i_adapter (diffusers T2IAdapter)

    @property
    def description(self) -> str:
        return f"{FAMILY_NAMES[self.family]} {KIND_NAMES[self.kind]}"


def family_of(config: Mapping) -> str:
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd2" if config.get("use_linear_projection") else "sd1"


# ------------------------------------------------------------------------------------------------------- reading


def read_state(path: Path, allow_pickle: bool | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a weights file and its safetensors metadata (through the one weight-file reader)."""
    return read_tensors(path, allow_pickle)


def _metadata_config(metadata: Mapping[str, str]) -> dict:
    return metadata_fields(metadata, META_KEY, META_FIELDS)


def _not_a_controlnet(keys: list[str], path: Path) -> WrongFileKind:
    if any(k.startswith("model.diffusion_model.") for k in keys):
        what = "a full Stable Diffusion checkpoint: put it in models/checkpoints and use Load Checkpoint"
    elif any(k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k or ".lora_A." in k for k in keys):
        what = "a LoRA: put it in models/loras and use Load LoRA"
    else:
        sample = ", ".join(keys[:4])
        what = f"not a ControlNet Chisel recognises ({len(keys)} tensors such as {sample})"
    return WrongFileKind(f"{path.name} is {what}.", path, kind="not_controlnet")


# ----------------------------------------------------------------------------------------------- layouts → diffusers


def _ldm_to_diffusers(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    sub = {k[len(LDM_PREFIX):]: v for k, v in state.items() if k.startswith(LDM_PREFIX)} or dict(state)
    blocks = sorted({int(m.group(1)) for k in sub if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    down = [b for b in blocks if f"input_blocks.{b}.0.op.weight" in sub]
    if not blocks or "zero_convs.0.0.weight" not in sub:
        raise _not_a_controlnet(list(state), path)
    layers = (down[0] - 1) if down else len(blocks) - 1
    out = convert_controlnet_checkpoint(sub, {"layers_per_block": layers})
    # diffusers' converter leaves SDXL's label embedding and the hint block's last conv (not always at index 14) out
    for i in (0, 2):
        for p in ("weight", "bias"):
            if f"label_emb.0.{i}.{p}" in sub:
                out[f"add_embedding.linear_{i // 2 + 1}.{p}"] = sub[f"label_emb.0.{i}.{p}"]
    hint = sorted({int(m.group(1)) for k in sub if (m := re.match(r"input_hint_block\.(\d+)\.weight", k))})
    if hint and hint[-1] != 14:
        out["controlnet_cond_embedding.conv_out.weight"] = sub[f"input_hint_block.{hint[-1]}.weight"]
        out["controlnet_cond_embedding.conv_out.bias"] = sub[f"input_hint_block.{hint[-1]}.bias"]
        for j, idx in enumerate(hint[1:-1]):
            for p in ("weight", "bias"):
                out[f"controlnet_cond_embedding.blocks.{j}.{p}"] = sub[f"input_hint_block.{idx}.{p}"]
    missing = sorted(k for k, v in out.items() if v is None)
    if missing:
        raise IncompleteCheckpoint(f"{path.name} lacks {len(missing)} ControlNet tensors ({', '.join(missing[:4])}); "
                                   "the file is incomplete.", path, missing={"controlnet": missing})
    return out


def _add_difference(state: dict[str, torch.Tensor], unet, unet_config: Mapping, path: Path) -> dict:
    """A difference ControlNet's tensors plus the base UNet's weights at the same (LDM) names."""
    from nodes.loading import keymaps as km

    if unet is None:
        raise WrongFileKind(f"{path.name} is a difference ControlNet: its weights are offsets from a base model; load "
                            "it with Load ControlNet Model (diff), which takes the model.", path, kind="diff_controlnet")
    own = unet.state_dict()
    ldm_to_own = {ldm: k for k, ldm in km.unet_key_map(unet_config, own.keys()).items()}
    out = {}
    for k, v in state.items():
        if k == "difference":
            continue
        name = k.removeprefix(LDM_PREFIX)
        base = ldm_to_own.get(name)
        if base is not None and tuple(own[base].shape) == tuple(v.shape):
            v = v.float() + own[base].float().to(v.device)
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------------ config from shapes


def infer_config(state: Mapping[str, torch.Tensor], meta: Mapping | None = None, where: str = "ControlNet") -> dict:
    """A diffusers ControlNetModel config from diffusers-layout tensor shapes."""
    s = {k: tuple(v.shape) for k, v in state.items()}
    try:
        conv_in = s["conv_in.weight"]
        hint_in = s["controlnet_cond_embedding.conv_in.weight"]
    except KeyError as exc:
        raise UnrecognisedArchitecture(f"{where}: no {exc.args[0]} tensor; not a ControlNet layout Chisel reads")
    levels = sorted({int(m.group(1)) for k in s if (m := re.match(r"down_blocks\.(\d+)\.", k))})
    cfg: dict = {"in_channels": int(conv_in[1]), "conditioning_channels": int(hint_in[1])}
    hint_blocks = sorted({int(m.group(1)) for k in s if (m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.", k))})
    cfg["conditioning_embedding_out_channels"] = [int(hint_in[0])] + [
        int(s[f"controlnet_cond_embedding.blocks.{j}.weight"][0]) for j in hint_blocks[1::2]]
    widths, types, depths, layers = [], [], [], None
    linear = cross = None
    for i in levels:
        res = sorted({int(m.group(1)) for k in s if (m := re.match(rf"down_blocks\.{i}\.resnets\.(\d+)\.", k))})
        layers = len(res) if layers is None else layers
        if len(res) != layers:
            raise UnrecognisedArchitecture(f"{where}: levels have different numbers of layers")
        widths.append(int(s[f"down_blocks.{i}.resnets.0.conv1.weight"][0]))
        tb = {int(m.group(1)) for k in s if (m := re.match(rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.", k))}
        types.append("CrossAttnDownBlock2D" if tb else "DownBlock2D")
        depths.append(len(tb) or 1)
        if tb:
            linear = len(s[f"down_blocks.{i}.attentions.0.proj_in.weight"]) == 2
            cross = int(s[f"down_blocks.{i}.attentions.0.transformer_blocks.0.attn2.to_k.weight"][1])
    if cross is None:
        raise UnrecognisedArchitecture(f"{where}: no cross-attention layer; not a Stable Diffusion ControlNet")
    mid = len({int(m.group(1)) for k in s if (m := re.match(r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.", k))})
    depths[-1] = mid or depths[-1]
    cfg.update(block_out_channels=widths, down_block_types=types, layers_per_block=layers, cross_attention_dim=cross,
               use_linear_projection=linear,
               transformer_layers_per_block=depths[0] if len(set(depths)) == 1 else depths)
    if "add_embedding.linear_1.weight" in s:
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                   projection_class_embeddings_input_dim=int(s["add_embedding.linear_1.weight"][1]))
    cfg["attention_head_dim"] = 8 if family_of(cfg) == "sd1" else [max(1, c // 64) for c in widths]
    cfg.update(meta or {})
    return cfg


# ----------------------------------------------------------------------------------------------------- the loader


CONTROLNET_STAGES = (IMPORTING, READING, "building the ControlNet", "loading the ControlNet weights")


def load_controlnet(path: str | Path, *, unet=None, unet_config: Mapping | None = None,
                    allow_pickle: bool | None = None, progress: Report | None = None) -> LoadedControlNet:
    """Load a ControlNet file or diffusers folder; ``unet``/``unet_config`` (a MODEL's) for difference files.
    ``progress`` (a node's ``ctx.progress``) hears :data:`CONTROLNET_STAGES` start (a T2I-Adapter or a folder
    reports the first two)."""
    stages = Stages(CONTROLNET_STAGES, progress)
    stages.enter(IMPORTING)
    import_model_libraries()  # waits for a background import under way rather than importing beside it
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    path = Path(path)
    stages.enter(READING)
    if path.is_dir() or path.name == "config.json":
        return _load_folder(path if path.is_dir() else path.parent)
    state, metadata = read_state(path, allow_pickle)
    if not state:
        raise CorruptCheckpoint(f"{path} contains no tensors.", path)
    if t2i_load.is_t2i_adapter(state):
        module, cfg = t2i_load.load_state(state, path, t2i_load.config_beside(path))
        return LoadedControlNet(module, cfg, t2i_load.family_of(cfg), "t2i-adapter", "t2i_adapter")
    layout = "diffusers"
    if "difference" in state:
        state = _add_difference(state, unet, unet_config or {}, path)
        layout = "difference"
    if "controlnet_cond_embedding.conv_in.weight" not in state:
        if not any(k.startswith(LDM_PREFIX) or k.startswith("input_hint_block.") for k in state):
            raise _not_a_controlnet(list(state), path)
        state = _ldm_to_diffusers(state, path)
        layout = "ldm" if layout == "diffusers" else layout
    beside = path.parent / "config.json"
    if layout == "diffusers" and path.name in DIFFUSERS_WEIGHTS and beside.is_file():
        cfg = {k: v for k, v in json.loads(beside.read_text()).items() if not k.startswith("_")}
    else:
        cfg = infer_config(state, _metadata_config(metadata), where=path.name)
    stages.enter(CONTROLNET_STAGES[2])
    with init_empty_weights(include_buffers=False):
        module = ControlNetModel.from_config(cfg)
    stages.enter(CONTROLNET_STAGES[3])
    own = module.state_dict()
    check_parameters_match(own, state, path, "ControlNet", "controlnet")
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, assign=True)
    module.requires_grad_(False).eval()
    return LoadedControlNet(module, dict(module.config), family_of(module.config), layout)


def _load_folder(folder: Path) -> LoadedControlNet:
    import_model_libraries()
    from diffusers import ControlNetModel

    if not (folder / "config.json").is_file():
        raise UnrecognisedArchitecture(f"{folder} is not a diffusers ControlNet folder (no config.json).", folder)
    if t2i_load.config_beside(folder / "config.json") is not None:
        module, cfg = t2i_load.load_folder(folder)
        return LoadedControlNet(module, cfg, t2i_load.family_of(cfg), "t2i-adapter-folder", "t2i_adapter")
    try:
        module, info = ControlNetModel.from_pretrained(folder, local_files_only=True, output_loading_info=True,
                                                       torch_dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise IncompleteCheckpoint(f"{folder}: {exc}", folder)
    if info.get("missing_keys"):
        raise IncompleteCheckpoint(f"{folder} lacks {len(info['missing_keys'])} ControlNet parameters "
                                   f"({', '.join(info['missing_keys'][:4])})", folder,
                                   missing={"controlnet": info["missing_keys"]})
    module.requires_grad_(False).eval()
    return LoadedControlNet(module, dict(module.config), family_of(module.config), "diffusers-folder")
