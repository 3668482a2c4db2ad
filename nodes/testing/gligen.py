"""Tiny random GLIGEN models for the tiny models of :mod:`nodes.testing.tiny`, written in the published file layouts.

:func:`build` makes diffusers' GLIGEN UNet (``attention_type="gated"``: a fuser in every transformer block and a
position net) with a tiny UNet's weights and randomises the GLIGEN layers, their gates included (a fresh GLIGEN layer
starts with closed gates, tanh(0) = 0, and would change nothing). :func:`write` saves its GLIGEN layers as the
published single file (``input_blocks.N.1.transformer_blocks.0.fuser.*`` and ``position_net.*``, optionally with the
``model.diffusion_model.`` prefix on the fusers) or the whole gated UNet in diffusers' layout. The fusers' heads,
which shapes cannot tell, go into the ``chisel.gligen`` metadata.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from nodes.loading import keymaps as km

GLIGEN_PARTS = (".fuser.", "position_net.")


def build(unet, seed: int = 0, scale: float = 1.0):
    """diffusers' gated UNet2DConditionModel with ``unet``'s weights and random GLIGEN layers (deterministic for
    ``unet`` and a seed)."""
    from diffusers import UNet2DConditionModel

    cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    cfg["attention_type"] = "gated"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gated = UNet2DConditionModel(**cfg)
    missing, unexpected = gated.load_state_dict(unet.state_dict(), strict=False)
    assert not unexpected and all(any(p in k for p in GLIGEN_PARTS) for k in missing), (missing, unexpected)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in missing:
            p = gated.get_parameter(name)
            if name.endswith(("alpha_attn", "alpha_dense")):
                p.fill_(0.5 + float(torch.rand((), generator=gen)))  # open gates
            elif name.endswith(("norm1.weight", "norm2.weight")):
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * scale / p.shape[-1] ** 0.5)
        # weigh the box coordinates' Fourier features up, so that where a box is matters visibly
        gated.position_net.linears[0].weight[:, gated.position_net.positive_len:] *= 4.0
    return gated.eval()


def gligen_state(gated) -> dict[str, torch.Tensor]:
    """The GLIGEN layers' tensors under diffusers' names."""
    return {k: v.detach().clone().contiguous() for k, v in gated.state_dict().items()
            if any(p in k for p in GLIGEN_PARTS)}


def fuser_heads(gated) -> dict[str, int]:
    """Each fuser's attention heads, by its transformer block's address in the published (LDM) naming."""
    names = [n for n, _ in gated.named_modules() if n.endswith(".fuser")]
    ldm = km.unet_key_map(gated.config, [n[: -len(".fuser")] + ".x" for n in names])
    return {ldm[n[: -len(".fuser")] + ".x"][: -len(".x")]: int(gated.get_submodule(n).attn.heads) for n in names}


def to_published(gated, prefix: str = "") -> dict[str, torch.Tensor]:
    """The GLIGEN layers under the published names: fusers by LDM block (with ``prefix``), ``position_net.*``."""
    state = gligen_state(gated)
    fusers = [k for k in state if ".fuser." in k]
    names = km.unet_key_map(gated.config, fusers)
    out = {prefix + names[k]: state[k] for k in fusers}
    out.update({k: v for k, v in state.items() if k.startswith("position_net.")})
    return out


def write(path, gated, layout: str = "ldm", prefix: str = "", dtype: torch.dtype | None = torch.float16) -> Path:
    """Write ``gated``'s GLIGEN: ``layout`` ``ldm`` (the published single file) or ``diffusers`` (the whole gated
    UNet's weights in diffusers' names)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "ldm":
        state = to_published(gated, prefix)
        heads = fuser_heads(gated)
        meta = {"chisel.gligen": json.dumps({"heads": heads})}
    elif layout == "diffusers":
        state = {k: v.detach().clone().contiguous() for k, v in gated.state_dict().items()}
        names = [n for n, _ in gated.named_modules() if n.endswith(".fuser")]
        meta = {"chisel.gligen": json.dumps({"heads": {n[: -len(".fuser")]: int(gated.get_submodule(n).attn.heads)
                                                       for n in names}})}
    else:
        raise ValueError(f"unknown layout {layout!r}")
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(path), metadata=meta)
    return path
