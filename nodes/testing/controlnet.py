"""Tiny random ControlNets for the tiny models of :mod:`nodes.testing.tiny`, written in the published file layouts.

:func:`build` makes diffusers' ``ControlNetModel`` from a tiny UNet (as ControlNets are trained: a copy of the UNet's
encoder) and randomises every weight, the zero convolutions included, so its residuals are far from zero.
:func:`write` saves it in the original single-file layout (``control_model.*``: ``input_blocks``, ``zero_convs``,
``input_hint_block``, ``middle_block_out``; with or without the prefix), in diffusers' layout as one file, as a
diffusers folder, or as a "difference" ControlNet (offsets from the base UNet plus a ``difference`` marker). What
shapes cannot tell (attention heads, norm groups) goes into the ``chisel.controlnet`` metadata.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from nodes.loading import keymaps as km

HINT_CHANNELS = (4, 8, 8, 16)  # four levels: the hint is downscaled 8x, like the VAE
META_FIELDS = ("attention_head_dim", "norm_num_groups", "addition_time_embed_dim")


def build(unet, seed: int = 0, scale: float = 0.05):
    """A ControlNetModel mirroring ``unet``, every weight randomised (deterministic for ``unet`` and a seed)."""
    from diffusers import ControlNetModel

    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in cn.named_parameters():
            if name.startswith("controlnet_"):  # its own layers (random or zero at creation): drawn afresh here
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            else:  # the copy of the UNet's encoder: moved away from it
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    return cn.eval()


def _config(cn) -> dict:
    return dict(cn.config)


def to_ldm(cn, prefix: str = "control_model.") -> dict[str, torch.Tensor]:
    """The ControlNet's tensors under their original (LDM) names."""
    cfg = _config(cn)
    unet_like = {**cfg, "up_block_types": ["UpBlock2D"] * len(cfg["down_block_types"])}
    state = {k: v.detach().clone().contiguous() for k, v in cn.state_dict().items()}
    out = {}
    n_hint = len({k.split(".")[2] for k in state if k.startswith("controlnet_cond_embedding.blocks.")})
    for k, v in state.items():
        if k.startswith("controlnet_cond_embedding."):
            rest = k[len("controlnet_cond_embedding."):]
            if rest.startswith("conv_in."):
                name = "input_hint_block.0." + rest[len("conv_in."):]
            elif rest.startswith("conv_out."):
                name = f"input_hint_block.{2 * (n_hint + 1)}." + rest[len("conv_out."):]
            else:
                _, j, p = rest.split(".")
                name = f"input_hint_block.{2 * (int(j) + 1)}.{p}"
        elif k.startswith("controlnet_down_blocks."):
            _, i, p = k.split(".")
            name = f"zero_convs.{i}.0.{p}"
        elif k.startswith("controlnet_mid_block."):
            name = "middle_block_out.0." + k.split(".")[-1]
        else:
            name = km.unet_key_map(unet_like, [k])[k]
        out[prefix + name] = v
    return out


def metadata(cn) -> dict[str, str]:
    cfg = _config(cn)
    meta = {f: (list(cfg[f]) if isinstance(cfg[f], tuple) else cfg[f]) for f in META_FIELDS if f in cfg}
    return {"chisel.controlnet": json.dumps(meta)}


def write(path, cn, layout: str = "ldm", prefix: str = "control_model.", base_unet=None) -> Path:
    """Write ``cn``: ``layout`` is ``ldm``, ``diffusers`` (one file), ``folder`` (diffusers folder; ``path`` is the
    folder) or ``difference`` (LDM offsets from ``base_unet``)."""
    from safetensors.torch import save_file

    path = Path(path)
    if layout == "folder":
        cn.save_pretrained(str(path), safe_serialization=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "diffusers":
        state = {k: v.detach().clone().contiguous() for k, v in cn.state_dict().items()}
    elif layout in ("ldm", "difference"):
        state = to_ldm(cn, prefix)
        if layout == "difference":
            ucfg = dict(base_unet.config)
            base = {km.unet_key_map(ucfg, [k])[k]: v for k, v in base_unet.state_dict().items()}
            for k in list(state):
                b = base.get(k[len(prefix):])
                if b is not None and b.shape == state[k].shape:
                    state[k] = (state[k] - b).contiguous()
            state["difference"] = torch.tensor([1.0])
    else:
        raise ValueError(f"unknown layout {layout!r}")
    save_file(state, str(path), metadata=metadata(cn))
    return path
