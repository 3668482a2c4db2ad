"""Read a GLIGEN file into diffusers' building blocks, completely and offline.

A GLIGEN ("grounded generation") model adds two things to a Stable Diffusion UNet: one gated self-attention layer
(diffusers' ``GatedSelfAttentionDense``, the "fuser") after the self-attention of every transformer block, and a
"position net" (diffusers' ``GLIGENTextBoundingboxProjection``) that turns boxes and their phrases' pooled CLIP
embeddings into grounding tokens the fusers attend to.

Layouts read (the fusers are addressed by their transformer block):

- the published single file (``gligen_sd14_textbox_pruned.safetensors``): ``input_blocks.N.1.transformer_blocks.K
  .fuser.*``, ``middle_block.1...``, ``output_blocks.N.1...`` and ``position_net.*``, with or without the
  ``model.diffusion_model.`` prefix on the fuser keys (the original training checkpoint has it);
- a diffusers GLIGEN UNet's weights (``attention_type="gated"``): ``down_blocks.i.attentions.j.transformer_blocks.K
  .fuser.*``, ``mid_block...``, ``up_blocks...`` and ``position_net.*``; the UNet's other tensors are not used (GLIGEN
  applies to the MODEL it is sampled with).

What shapes cannot tell is the fusers' attention heads: GLIGEN gives each fuser the heads of the transformer block it
sits in, which the published convention states as 8 heads for SD1.x (768-wide grounding tokens) and one head per 64
channels otherwise; a file's ``chisel.gligen`` metadata (``{"heads": {block address: n}}``) says otherwise. Every
fuser and position-net parameter must come from the file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from nodes.loading.configs import metadata_fields
from nodes.loading.errors import (
    CorruptCheckpoint,
    IncompleteCheckpoint,
    UnrecognisedArchitecture,
    WrongFileKind,
)
from nodes.loading.progress import READING, Report, Stages
from nodes.loading.weights import read_tensors

GLIGEN_STAGES = (READING, "building the GLIGEN model")

FUSER = ".fuser."
POSITION_NET = "position_net."
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")
META_KEY = "chisel.gligen"
MAX_OBJECTS = 30  # grounding tokens per image: GLIGEN's training size (boxes beyond it have no place)
_LDM_BLOCK = re.compile(r"^(input_blocks\.\d+\.\d+|middle_block\.\d+|output_blocks\.\d+\.\d+)\.transformer_blocks\.\d+$")
_DIFFUSERS_BLOCK = re.compile(r"^(down_blocks\.\d+\.attentions\.\d+|mid_block\.attentions\.\d+|"
                              r"up_blocks\.\d+\.attentions\.\d+)\.transformer_blocks\.\d+$")


class GligenModules(torch.nn.Module):
    """The fusers (one per transformer block, in file order) and the position net, as one module for the model
    manager. ``addresses[i]`` is fuser i's transformer block as the file names it; ``layout`` says in which naming
    (``"ldm"``: input_blocks/middle_block/output_blocks, ``"diffusers"``: down_blocks/mid_block/up_blocks)."""

    def __init__(self, fusers: list[torch.nn.Module], addresses: list[str], layout: str,
                 position_net: torch.nn.Module):
        super().__init__()
        self.fusers = torch.nn.ModuleList(fusers)
        self.addresses = list(addresses)
        self.layout = layout
        self.position_net = position_net

    @property
    def phrase_width(self) -> int:
        """Width of the pooled phrase embeddings the position net reads (the CLIP's hidden width: 768 for SD1.x)."""
        return int(self.position_net.positive_len)

    @property
    def token_width(self) -> int:
        """Width of the grounding tokens (the model's cross-attention width in GLIGEN's design)."""
        return int(self.position_net.linears[-1].out_features)

    @property
    def query_widths(self) -> dict[str, int]:
        return {a: int(f.linear.out_features) for a, f in zip(self.addresses, self.fusers)}


@dataclass
class LoadedGligen:
    module: GligenModules
    layout: str  # ldm | diffusers

    @property
    def description(self) -> str:
        return f"GLIGEN text-box model ({len(self.module.fusers)} fusers, {self.module.phrase_width}-wide phrases)"


def _strip(key: str) -> str:
    for p in PREFIXES:
        if key.startswith(p):
            return key[len(p):]
    return key


def _what_else(keys: list[str], path: Path) -> WrongFileKind:
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in keys):
        what = "a Stable Diffusion checkpoint without GLIGEN layers: put it in models/checkpoints"
    elif any(k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k or ".lora_A." in k for k in keys):
        what = "a LoRA: put it in models/loras and use Load LoRA"
    elif any(k.startswith("control_model.") or k.startswith(("zero_convs.", "controlnet_")) for k in keys):
        what = "a ControlNet: put it in models/controlnet and use Load ControlNet Model"
    elif any(k.startswith(("down_blocks.", "conv_in.")) for k in keys):
        what = "a diffusers UNet without GLIGEN layers (no fuser or position_net tensors)"
    else:
        what = f"not a GLIGEN model ({len(keys)} tensors such as {', '.join(keys[:4])})"
    return WrongFileKind(f"{path.name} is {what}.", path, kind="not_gligen")


def _heads_from_metadata(metadata: dict) -> dict[str, int]:
    heads = metadata_fields(metadata, META_KEY, ("heads",)).get("heads")
    return {str(k): int(v) for k, v in heads.items()} if isinstance(heads, dict) else {}


def _conventional_heads(query_dim: int, context_dim: int) -> int:
    return 8 if context_dim == 768 else max(1, query_dim // 64)


def _position_net(sub: dict[str, torch.Tensor], path: Path):
    from diffusers.models.embeddings import GLIGENTextBoundingboxProjection

    if any(k.startswith(("linears_text.", "linears_image.", "null_text_feature", "null_image_feature")) for k in sub):
        raise UnrecognisedArchitecture(f"{path.name} is a text-and-image GLIGEN (its position net also reads "
                                       "reference images); only the text-box GLIGEN is supported.", path)
    try:
        positive = int(sub["null_positive_feature"].shape[0])
        position = int(sub["null_position_feature"].shape[0])
        out_dim = int(sub["linears.4.weight"].shape[0])
        hidden = tuple(sub["linears.0.weight"].shape)
    except KeyError as exc:
        raise IncompleteCheckpoint(f"{path.name}: the GLIGEN position net lacks its {exc.args[0]} tensor; the file "
                                   "is incomplete.", path, missing={"position_net": [exc.args[0]]})
    if position % 8 or hidden != (512, positive + position):
        raise UnrecognisedArchitecture(f"{path.name}: the GLIGEN position net has shapes {list(hidden)} "
                                       f"(phrases {positive}, positions {position}) that no text-box GLIGEN has.",
                                       path)
    with torch.device("meta"):
        net = GLIGENTextBoundingboxProjection(positive, out_dim, "text-only", fourier_freqs=position // 8)
    _assign(net, sub, "position net", path)
    return net


def _fuser(sub: dict[str, torch.Tensor], heads: int | None, address: str, path: Path):
    from diffusers.models.attention import GatedSelfAttentionDense

    try:
        query_dim, context_dim = (int(n) for n in sub["linear.weight"].shape)
    except KeyError:
        raise IncompleteCheckpoint(f"{path.name}: the GLIGEN fuser of {address} lacks its linear.weight tensor.",
                                   path, missing={"fuser": [f"{address}.fuser.linear.weight"]})
    heads = heads or _conventional_heads(query_dim, context_dim)
    if query_dim % heads:
        raise UnrecognisedArchitecture(f"{path.name}: the fuser of {address} is {query_dim} wide, which {heads} "
                                       "attention heads do not divide.", path)
    with torch.device("meta"):
        fuser = GatedSelfAttentionDense(query_dim, context_dim, heads, query_dim // heads)
    _assign(fuser, sub, f"fuser of {address}", path)
    return fuser


def _assign(module: torch.nn.Module, sub: dict[str, torch.Tensor], what: str, path: Path) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(sub))
    unused = sorted(set(sub) - set(own))
    if missing:
        raise IncompleteCheckpoint(f"{path.name}: the GLIGEN {what} lacks {len(missing)} tensors "
                                   f"({', '.join(missing[:4])}); refusing to leave them random.", path,
                                   missing={"gligen": missing})
    if unused:
        raise UnrecognisedArchitecture(f"{path.name}: {len(unused)} tensors of the GLIGEN {what} fit no parameter "
                                       f"({', '.join(unused[:4])}).", path)
    state = {}
    for k, v in sub.items():
        want = tuple(own[k].shape)
        if tuple(v.shape) != want:
            if v.numel() == 1 and int(torch.tensor(want).prod()) == 1:  # a gate stored as [1] instead of a scalar
                v = v.reshape(want)
            else:
                raise UnrecognisedArchitecture(f"{path.name}: tensor {k} of the GLIGEN {what} is {list(v.shape)}; "
                                               f"the layer needs {list(want)}.", path)
        state[k] = v.float() if v.is_floating_point() else v
    module.load_state_dict(state, assign=True)


def load_gligen(path: str | Path, allow_pickle: bool | None = None, progress: Report | None = None) -> LoadedGligen:
    """The fusers and position net of a GLIGEN file (see the module docstring for the layouts); ``progress`` (a
    node's ``ctx.progress``) hears each of :data:`GLIGEN_STAGES` start."""
    stages = Stages(GLIGEN_STAGES, progress)
    stages.enter(READING)
    path = Path(path)
    state, metadata = read_tensors(path, allow_pickle)
    stages.enter(GLIGEN_STAGES[1])
    if not state:
        raise CorruptCheckpoint(f"{path} contains no tensors.", path)
    fusers: dict[str, dict[str, torch.Tensor]] = {}
    position: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = _strip(key)
        if FUSER in name:
            block, rest = name.split(FUSER, 1)
            fusers.setdefault(block, {})[rest] = value
        elif name.startswith(POSITION_NET):
            position[name[len(POSITION_NET):]] = value
    if not fusers or not position:
        raise _what_else(list(state), path)
    layouts = {"ldm" if _LDM_BLOCK.match(b) else "diffusers" if _DIFFUSERS_BLOCK.match(b) else None for b in fusers}
    if None in layouts or len(layouts) != 1:
        odd = sorted(b for b in fusers if not (_LDM_BLOCK.match(b) or _DIFFUSERS_BLOCK.match(b)))
        raise UnrecognisedArchitecture(f"{path.name}: GLIGEN fusers at {', '.join(odd[:3]) or 'mixed block names'}: "
                                       "not a layout Chisel reads (input_blocks/middle_block/output_blocks or "
                                       "down_blocks/mid_block/up_blocks).", path)
    heads = _heads_from_metadata(metadata)
    addresses = sorted(fusers, key=_block_order)
    modules = [_fuser(fusers[a], heads.get(a), a, path) for a in addresses]
    net = _position_net(position, path)
    widths = {int(f.linear.in_features) for f in modules}
    if widths != {int(net.linears[-1].out_features)}:
        raise UnrecognisedArchitecture(f"{path.name}: the fusers read {sorted(widths)}-wide grounding tokens but the "
                                       f"position net makes {net.linears[-1].out_features}-wide ones.", path)
    module = GligenModules(modules, addresses, layouts.pop(), net)
    module.requires_grad_(False).eval()
    return LoadedGligen(module, module.layout)


def _block_order(address: str) -> tuple:
    """The order blocks run in: encoder, middle, decoder, by index (numbers compared as numbers)."""
    part = address.split(".", 1)[0]
    rank = {"input_blocks": 0, "down_blocks": 0, "middle_block": 1, "mid_block": 1, "output_blocks": 2,
            "up_blocks": 2}[part]
    return (rank, [int(n) for n in re.findall(r"\d+", address)])
