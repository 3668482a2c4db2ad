"""T2I-Adapter's style adapter (``t2iadapter_style_*``): a small transformer that turns a CLIP vision encoder's last
hidden state into a few tokens in the text encoder's space, appended to a prompt's conditioning.

Published layout: ``style_embedding`` [1, tokens, width], ``ln_pre``, ``transformer_layes.N.{ln_1, attn.in_proj_weight,
attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_post``, ``proj`` [width, context]. Its forward
pass: append the (learned) style tokens to the image tokens, ``ln_pre``, pre-norm residual blocks (multi-head
self-attention; an MLP with quick-GELU), keep the last ``tokens`` positions, ``ln_post``, multiply by ``proj``. The
blocks are torch's ``TransformerEncoderLayer`` (pre-norm); the head count (8 in the published adapters) cannot be
read from shapes and comes from the file's ``chisel.style_model`` metadata when present.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nodes.loading.configs import metadata_fields
from nodes.loading.progress import READING, Report, Stages
from nodes.loading.errors import (
    UnrecognisedArchitecture,
    WrongFileKind,
    check_parameters_match,
)

META_KEY = "chisel.style_model"
PUBLISHED_HEADS = 8


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class StyleAdapter(nn.Module):
    def __init__(self, width: int, context_dim: int, heads: int, layers: int, tokens: int, mlp: int):
        super().__init__()
        self.tokens = tokens
        self.style_embedding = nn.Parameter(torch.zeros(1, tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, dim_feedforward=mlp, dropout=0.0, activation=quick_gelu,
                                       batch_first=True, norm_first=True) for _ in range(layers))
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, context_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, image tokens, width]`` -> ``[B, tokens, context]``."""
        x = torch.cat([hidden, self.style_embedding.to(hidden).expand(hidden.shape[0], -1, -1)], dim=1)
        x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x[:, -self.tokens:]) @ self.proj


_BLOCK_RENAMES = {"ln_1.": "norm1.", "ln_2.": "norm2.", "attn.in_proj_weight": "self_attn.in_proj_weight",
                  "attn.in_proj_bias": "self_attn.in_proj_bias", "attn.out_proj.": "self_attn.out_proj.",
                  "mlp.c_fc.": "linear1.", "mlp.c_proj.": "linear2."}


def to_module_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        m = re.match(r"transformer_layes\.(\d+)\.(.+)$", key)
        if not m:
            out[key] = value
            continue
        rest = m.group(2)
        for old, new in _BLOCK_RENAMES.items():
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        out[f"blocks.{m.group(1)}.{rest}"] = value
    return out


@dataclass(eq=False)
class StyleModelHandle:
    """STYLE_MODEL: a style adapter (small: kept on the CPU until used, then on the manager's device)."""

    manager: Any
    module: Any  # ManagedModule of a StyleAdapter
    width: int
    context_dim: int
    source: str

    @property
    def name(self) -> str:
        return Path(self.source).name

    def __chisel_nbytes__(self) -> dict[str, int]:
        return {}

    def __repr__(self) -> str:
        return f"<STYLE_MODEL {self.source}>"

    @torch.no_grad()
    def tokens(self, clip_vision_output) -> torch.Tensor:
        """The style tokens ``[B, tokens, context]`` (float32, CPU) for a CLIP_VISION_OUTPUT's last hidden state."""
        hidden = clip_vision_output.last_hidden_state
        if hidden.shape[-1] != self.width:
            raise ValueError(f"the style model {self.name} reads {self.width}-wide image features but the CLIP vision "
                             f"output is {hidden.shape[-1]} wide: encode the image with the CLIP vision model it was "
                             "made for (ViT-L/14 for the published T2I style adapters)")
        with self.manager.use(self.module):
            out = self.module.module(hidden.to(self.module.device, self.module.dtype))
        return out.float().cpu()


STYLE_MODEL_STAGES = (READING, "building the style model")


def load_style_model(path: str | Path, allow_pickle: bool | None = None, progress: Report | None = None
                     ) -> StyleAdapter:
    """A T2I style adapter file; ``progress`` hears each of :data:`STYLE_MODEL_STAGES` start."""
    from nodes.loading.weights import read_tensors

    stages = Stages(STYLE_MODEL_STAGES, progress)
    stages.enter(READING)
    path = Path(path)
    state, metadata = read_tensors(path, allow_pickle)
    stages.enter(STYLE_MODEL_STAGES[1])
    if "style_embedding" not in state:
        keys = list(state)
        if any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in keys):
            what = "a Stable Diffusion checkpoint: use Load Checkpoint"
        elif any(k.startswith(("vision_model.", "visual.")) for k in keys):
            what = "a CLIP vision model: put it in models/clip_vision and use Load CLIP Vision"
        elif any(k.startswith(("adapter.", "body.", "conv_in.")) for k in keys):
            what = "a T2I-Adapter for spatial hints (depth, sketch ...), not a style adapter: load it as a ControlNet"
        else:
            what = f"not a style model Chisel recognises ({len(keys)} tensors such as {', '.join(keys[:3])})"
        raise WrongFileKind(f"{path.name} is {what}.", path, kind="not_style_model")
    s = {k: tuple(v.shape) for k, v in state.items()}
    try:
        _, tokens, width = s["style_embedding"]
        context = s["proj"][1]
        mlp = s["transformer_layes.0.mlp.c_fc.weight"][0]
    except (KeyError, ValueError) as exc:
        raise UnrecognisedArchitecture(f"{path.name}: not a T2I style adapter layout ({exc})", path)
    layers = sorted({int(m.group(1)) for k in s if (m := re.match(r"transformer_layes\.(\d+)\.", k))})
    heads = int(metadata_fields(metadata, META_KEY, ("num_attention_heads",)).get("num_attention_heads",
                                                                                   PUBLISHED_HEADS))
    if width % heads:
        raise UnrecognisedArchitecture(f"{path.name}: width {width} does not split into {heads} attention heads", path)
    module = StyleAdapter(width, context, heads, len(layers), tokens, mlp)
    tensors = to_module_keys(state)
    own = module.state_dict()
    check_parameters_match(own, tensors, path, "style adapter", "style_model")
    module.load_state_dict({k: v.float() for k, v in tensors.items()})
    return module.requires_grad_(False).eval()


def load(manager, path: str | Path, progress: Report | None = None) -> StyleModelHandle:
    path = Path(path)

    def factory():
        module = load_style_model(path, manager.allow_pickle, progress)
        mm = manager.register("style_model", module, str(path), manager.compute_dtype("clip_vision"))
        return StyleModelHandle(manager, mm, int(module.style_embedding.shape[-1]), int(module.proj.shape[1]),
                                str(path))

    return manager.load_once("style_model", path, factory)
