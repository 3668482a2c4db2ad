"""Read a T2I-Adapter file into diffusers' ``T2IAdapter``, completely and offline.

T2I-Adapters load through the ControlNet loader (as in ComfyUI); this module recognises them and converts them.
Layouts read:

- TencentARC's original single files (``t2iadapter_*_sd14v1.pth``, CoAdapters ...), the full adapter: ``conv_in``
  then ``body.N`` resnet blocks, two per level (``body.N.block1``/``block2``, ``body.N.in_conv`` where the width
  changes); the hint channels and pixel-unshuffle factor follow from ``conv_in``'s input width (3 or 1 channels times
  8² for SD1.x, times 16² for SDXL, as ComfyUI reads them). Only the published variant exists in diffusers (1x1
  ``in_conv``/``block2``, average-pool downsampling, no skip convolution); another is refused by name;
- the original ``light`` adapter (the colour adapter): ``body.N.in_conv``, ``body.N.body.M.block1/2``,
  ``body.N.out_conv``;
- diffusers' layout (``adapter.conv_in``, ``adapter.body.N.resnets.M...``; light: ``adapter.body.N.out_conv``), as
  one file (the SDXL adapters are published so, as ``diffusion_pytorch_model.safetensors`` in a folder with its
  ``config.json``, which is read when it sits beside the weights) or as the diffusers folder itself;
- a pickle holding the state dict under an ``adapter`` key.

Every parameter must come from the file and every file tensor must find a parameter.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from nodes.loading.errors import (
    IncompleteCheckpoint,
    UnrecognisedArchitecture,
    check_parameters_match,
)
from nodes.loading.libraries import import_model_libraries

ORIGINAL_RES_BLOCKS = 2  # resnet blocks per level in the original full layout (every published file; ComfyUI's too)
HINT_CHANNELS = (3, 1)  # an RGB hint (depth, pose, canny as RGB ...) or a grey one (sketch, canny)
UNSHUFFLE_FACTORS = {8: "full_adapter", 16: "full_adapter_xl"}


def is_t2i_adapter(keys) -> bool:
    """Whether these tensor names are a T2I-Adapter's, in any layout read here."""
    keys = set(keys)
    if any(k.startswith("adapter.body.") for k in keys):
        return True
    full = "conv_in.weight" in keys and "body.0.block1.weight" in keys
    light = "body.0.in_conv.weight" in keys and "body.0.body.0.block1.weight" in keys
    return full or light


def family_of(config: Mapping) -> str:
    """``sdxl`` for SDXL adapters, ``sd1`` for the SD1.x ones (which also fit SD2.x UNets: same widths)."""
    return "sdxl" if config.get("adapter_type") == "full_adapter_xl" else "sd1"


# ------------------------------------------------------------------------------------------------ layouts → diffusers


def _original_full(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if k.startswith("conv_in."):
            out["adapter." + k] = v
            continue
        m = re.fullmatch(r"body\.(\d+)\.(block1|block2|in_conv|skep|down_opt\.op)\.(weight|bias)", k)
        if m is None:
            raise UnrecognisedArchitecture(f"{path.name}: tensor {k} is not part of a T2I-Adapter's layout.", path)
        n, part, p = int(m.group(1)), m.group(2), m.group(3)
        if part in ("skep", "down_opt.op"):
            what = "skip convolutions (skep)" if part == "skep" else "convolution downsampling (down_opt.op)"
            raise UnrecognisedArchitecture(
                f"{path.name} is a T2I-Adapter variant with {what}; the published adapters (and diffusers' "
                "T2IAdapter, which Chisel runs) have none, so this one cannot be loaded.", path)
        level, j = divmod(n, ORIGINAL_RES_BLOCKS)
        name = f"in_conv.{p}" if part == "in_conv" else f"resnets.{j}.{part}.{p}"
        out[f"adapter.body.{level}.{name}"] = v
    return out


def _original_light(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        m = re.fullmatch(r"body\.(\d+)\.(?:(in_conv|out_conv)|body\.(\d+)\.(block1|block2))\.(weight|bias)", k)
        if m is None:
            raise UnrecognisedArchitecture(f"{path.name}: tensor {k} is not part of a light T2I-Adapter's layout.",
                                           path)
        i, conv, j, block, p = m.groups()
        out[f"adapter.body.{i}." + (f"{conv}.{p}" if conv else f"resnets.{j}.{block}.{p}")] = v
    return out


def to_diffusers(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The adapter's tensors under diffusers' ``T2IAdapter`` names."""
    if any(k.startswith("adapter.") for k in state):
        return dict(state)
    if "conv_in.weight" in state:
        return _original_full(state, path)
    return _original_light(state, path)


# ------------------------------------------------------------------------------------------------ config from shapes


def _split_input(cin: int, where: str) -> tuple[int, int]:
    """(hint channels, pixel-unshuffle factor) from the first layer's input width ``channels * factor²``."""
    for c in HINT_CHANNELS:
        for f in UNSHUFFLE_FACTORS:
            if c * f * f == cin:
                return c, f
    raise UnrecognisedArchitecture(f"{where}: the adapter's first layer takes {cin} channels; a T2I-Adapter takes "
                                   "3 or 1 hint channels unshuffled by 8 (SD1.x) or 16 (SDXL), i.e. 192, 64, 768 "
                                   "or 256")


def infer_config(state: Mapping[str, torch.Tensor], where: str) -> dict:
    """A diffusers ``T2IAdapter`` config from diffusers-layout tensor shapes."""
    s = {k[len("adapter."):]: tuple(v.shape) for k, v in state.items() if k.startswith("adapter.")}
    levels = sorted({int(m.group(1)) for k in s if (m := re.match(r"body\.(\d+)\.", k))})
    if not levels:
        raise UnrecognisedArchitecture(f"{where}: no adapter.body tensors; not a T2I-Adapter layout Chisel reads")
    res = len({m.group(1) for k in s if (m := re.match(r"body\.0\.resnets\.(\d+)\.", k))})
    try:
        if "body.0.out_conv.weight" in s:  # light adapter: the last block repeats the last width
            c, f = _split_input(s["body.0.in_conv.weight"][1], where)
            outs = [s[f"body.{i}.out_conv.weight"][0] for i in levels]
            if len(outs) < 2 or outs[-1] != outs[-2]:
                raise UnrecognisedArchitecture(f"{where}: a light T2I-Adapter's last two blocks have one width; "
                                               f"these have {outs}")
            return {"in_channels": c, "channels": outs[:-1], "num_res_blocks": res, "downscale_factor": f,
                    "adapter_type": "light_adapter"}
        c, f = _split_input(s["conv_in.weight"][1], where)
        channels = [s[f"body.{i}.resnets.0.block1.weight"][0] for i in levels]
    except KeyError as exc:
        raise UnrecognisedArchitecture(f"{where}: no {exc.args[0]} tensor; not a T2I-Adapter layout Chisel reads")
    return {"in_channels": c, "channels": channels, "num_res_blocks": res, "downscale_factor": f,
            "adapter_type": UNSHUFFLE_FACTORS[f]}


# ----------------------------------------------------------------------------------------------------- the loader


def load_state(state: Mapping[str, torch.Tensor], path: Path, config: Mapping | None = None):
    """A ``T2IAdapter`` (eval, no grad) from a state dict in any layout read here, and its config."""
    import_model_libraries()  # waits for a background import under way rather than importing beside it
    from accelerate import init_empty_weights
    from diffusers import T2IAdapter

    state = to_diffusers(state, path)
    cfg = dict(config) if config else infer_config(state, path.name)
    with init_empty_weights(include_buffers=False):
        module = T2IAdapter.from_config(cfg)
    own = module.state_dict()
    check_parameters_match(own, state, path, "T2I-Adapter", "t2i_adapter",
                           " (a T2I-Adapter variant diffusers' T2IAdapter does not have)")
    module.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    return module.requires_grad_(False).eval(), dict(module.config)


def config_beside(path: Path) -> dict | None:
    """The ``config.json`` of the diffusers folder holding ``path``, when it describes a T2I-Adapter."""
    beside = path.parent / "config.json"
    if not beside.is_file():
        return None
    try:
        cfg = json.loads(beside.read_text())
    except ValueError:
        return None
    if not isinstance(cfg, dict) or cfg.get("_class_name") != "T2IAdapter":
        return None
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def load_folder(folder: Path):
    """A diffusers ``T2IAdapter`` folder (``config.json`` + weights)."""
    import_model_libraries()
    from diffusers import T2IAdapter

    try:
        module, info = T2IAdapter.from_pretrained(folder, local_files_only=True, output_loading_info=True,
                                                  torch_dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise IncompleteCheckpoint(f"{folder}: {exc}", folder)
    if info.get("missing_keys"):
        raise IncompleteCheckpoint(f"{folder} lacks {len(info['missing_keys'])} T2I-Adapter parameters "
                                   f"({', '.join(info['missing_keys'][:4])})", folder,
                                   missing={"t2i_adapter": info["missing_keys"]})
    return module.requires_grad_(False).eval(), dict(module.config)
