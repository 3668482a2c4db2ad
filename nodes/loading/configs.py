"""Component configs of a single-file checkpoint: the family's published config, overridden by what the tensor
shapes say, overridden by the ``chisel.*`` metadata for what shapes cannot say.

Shapes give: channel widths, levels, layers per level, transformer depths, attention placement, cross-attention
width, linear/conv projections, input/output channels, time/addition embedding widths; VAE widths, levels, latent
channels; text encoder width, depth, MLP width, vocabulary and context length, projection width.
Shapes cannot give: attention head counts, group-norm groups, activation functions, epsilons, the VAE scaling factor,
the noise schedule and prediction type. For those a file without metadata gets the family's published values, so a
real SD1.5/SD2/SDXL file loads by its layout alone.
"""
from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from nodes.loading import keymaps as km
from nodes.loading.detect import Detection
from nodes.loading.errors import IncompleteCheckpoint, UnrecognisedArchitecture

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"

FAMILY_TEMPLATE = {"sd1": "sd15", "sd2": "sd2", "sdxl": "sdxl", "sdxl_refiner": "sdxl_refiner"}
SCHEDULER_FIELDS = ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "prediction_type")
UNET_META = ("attention_head_dim", "num_attention_heads", "norm_num_groups", "norm_eps", "act_fn", "flip_sin_to_cos",
             "freq_shift", "upcast_attention", "resnet_time_scale_shift", "addition_time_embed_dim", "sample_size",
             "downsample_padding", "mid_block_scale_factor", "time_embedding_type")
VAE_META = ("norm_num_groups", "act_fn", "scaling_factor", "shift_factor", "force_upcast", "sample_size")
TEXT_META = ("num_attention_heads", "hidden_act", "layer_norm_eps", "bos_token_id", "eos_token_id", "pad_token_id")


@lru_cache(maxsize=None)
def _load_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def template(name: str, component: str) -> dict:
    """A shipped config (``nodes/configs/<name>/<component>/config.json`` or ``scheduler_config.json``)."""
    folder = CONFIG_ROOT / name / component
    for fname in ("config.json", "scheduler_config.json"):
        if (folder / fname).is_file():
            return copy.deepcopy(_load_json(str(folder / fname)))
    raise FileNotFoundError(f"no shipped config {folder}")


def metadata_fields(metadata: Mapping[str, str], key: str, allowed) -> dict:
    raw = metadata.get(key)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return {k: v for k, v in data.items() if k in allowed} if isinstance(data, dict) else {}


class _Shape(tuple):
    """A tensor's shape that knows the tensor: asking for a dimension it lacks is a loader error naming it."""

    def __new__(cls, dims, name: str, where: str):
        shape = super().__new__(cls, dims)
        shape.name, shape.where = name, where
        return shape

    def __getitem__(self, index):
        try:
            return super().__getitem__(index)
        except IndexError:
            raise UnrecognisedArchitecture(f"{self.where}: tensor {self.name} has shape {list(self)}; its role in the "
                                           "layout needs more dimensions (the file is corrupt or not a layout Chisel "
                                           "reads).", self.where) from None


class _Layout(dict):
    """The shapes of one component's tensors (names without the component's prefix): a tensor the layout needs but
    the file lacks is an :class:`IncompleteCheckpoint` naming it, not a KeyError."""

    def __init__(self, shapes: Mapping[str, tuple], prefix: str, where: str, component: str):
        super().__init__(shapes)
        self.prefix, self.where, self.component = prefix, where, component

    def __missing__(self, key: str):
        name = self.prefix + key
        raise IncompleteCheckpoint(f"{self.where}: the {self.component} has no tensor {name!r}, which its layout needs; "
                                   "the file is incomplete or not a layout Chisel reads.", self.where,
                                   missing={self.component.replace(" ", "_"): [name]})


def layout(shapes: Mapping[str, tuple], prefix: str, where: str = "checkpoint", component: str = "model") -> _Layout:
    """The shapes of the tensors under ``prefix`` (names without it), as a :class:`_Layout`."""
    n = len(prefix)
    return _Layout({k[n:]: _Shape(v, k, where) for k, v in shapes.items() if k.startswith(prefix)}, prefix, where,
                   component)


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _uniform(values: list, what: str, where: str):
    if len(set(map(str, values))) != 1:
        raise UnrecognisedArchitecture(f"{where}: {what} differ between levels ({values}); not a layout Chisel loads")
    return values[0]


def infer_unet(shapes: Mapping[str, tuple], family: str, base: dict, meta: dict, where: str = "checkpoint") -> dict:
    """The UNet's diffusers config: ``base`` (the family's published config) overridden by what the LDM tensor shapes
    say, then by ``meta`` (the file's ``chisel.unet`` fields). Raises :class:`UnrecognisedArchitecture` for a layout
    diffusers cannot build."""
    u = layout(shapes, km.UNET_PREFIX, where, "unet")
    cfg = dict(base)
    cfg.update(_unet_io(u, where))
    blocks = _unet_blocks(u)
    down = _scan_input_blocks(u, blocks, where)
    cfg.update(_down_levels(down, where))
    up = _scan_output_blocks(blocks, len(down.levels), cfg["layers_per_block"] + 1, where)
    cfg["up_block_types"] = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up.attention]
    mid = _middle_depth(blocks, down, where)
    cfg.pop("reverse_transformer_layers_per_block", None)  # set again only where the shapes need it
    cfg.update(_transformer_layers(down, up, mid, cfg["layers_per_block"]))
    cfg.update(_cross_attention(down, where))
    cfg.update(_time_embedding(u))
    cfg.update(_addition_embedding(u, family, where))
    cfg.update(_attention_heads(family, cfg["block_out_channels"]))
    cfg.update(meta)
    return cfg


@dataclass
class _InputLevels:
    """What the input blocks say: per level, (channels, transformer depth) of each layer; per level, whether it has
    attention and its transformer depth (1 where it has none); the projection kind and cross-attention width."""
    levels: list[list[tuple[int, int]]]
    attention: list[bool] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    linear: bool | None = None
    cross: int | None = None


@dataclass
class _OutputLevels:
    """Per output level: whether it has attention, and the transformer depth of each of its layers."""
    attention: list[bool]
    depths: list[list[int]]


def _unet_io(u: Mapping[str, tuple], where: str) -> dict:
    """Input/output channels and kernel sizes, from the first and last convolutions."""
    conv_in = u["input_blocks.0.0.weight"]
    out = u.get("out.2.weight")
    if out is None:
        raise UnrecognisedArchitecture(f"{where}: the UNet has no output convolution (out.2.weight)")
    return {"in_channels": int(conv_in[1]), "conv_in_kernel": int(conv_in[2]),
            "out_channels": int(out[0]), "conv_out_kernel": int(out[2])}


def _unet_blocks(u: Mapping[str, tuple]) -> dict[str, set]:
    """``{"input_blocks.3": {"0.in_layers.0.weight", ...}, ...}`` for the input, middle and output blocks."""
    blocks: dict[str, set] = {}
    for k in u:
        parts = k.split(".")
        if parts[0] in ("input_blocks", "output_blocks", "middle_block"):
            blocks.setdefault(".".join(parts[:2]), set()).add(".".join(parts[2:]))
    return blocks


def _transformer_depth(blocks: Mapping[str, set], block: str, slot: int) -> int:
    """How many transformer blocks the spatial transformer in ``slot`` of ``block`` has (0: none)."""
    keys = blocks.get(block, ())
    return len({k.split(".")[2] for k in keys if k.startswith(f"{slot}.transformer_blocks.")})


def _scan_input_blocks(u: Mapping[str, tuple], blocks: Mapping[str, set], where: str) -> _InputLevels:
    """Walk ``input_blocks.1..`` into levels (a downsampler starts the next level)."""
    scan = _InputLevels(levels=[[]])
    k = 1
    while f"input_blocks.{k}" in blocks:
        name = f"input_blocks.{k}"
        if f"{name}.0.op.weight" in u:
            scan.levels.append([])
        else:
            ch = int(u[f"{name}.0.out_layers.3.weight"][0])
            d = _transformer_depth(blocks, name, 1)
            if d:
                _note_projection(u, name, scan)
            scan.levels[-1].append((ch, d))
        k += 1
    if not scan.levels[-1]:
        raise UnrecognisedArchitecture(f"{where}: the UNet ends its input blocks with a downsampler")
    return scan


def _note_projection(u: Mapping[str, tuple], name: str, scan: _InputLevels) -> None:
    """The first transformer met fixes the projection kind (linear or 1x1 conv) and the cross-attention width."""
    linear = len(u[f"{name}.1.proj_in.weight"]) == 2
    if scan.linear is None:
        scan.linear = linear
    if scan.cross is None:
        scan.cross = int(u[f"{name}.1.transformer_blocks.0.attn2.to_k.weight"][1])


def _down_levels(down: _InputLevels, where: str) -> dict:
    """Channel widths, layers per level and down block types; fills ``down.attention`` and ``down.depth``."""
    cfg = {"block_out_channels": [_uniform([c for c, _ in lv], "channel widths within a level", where)
                                  for lv in down.levels],
           "layers_per_block": _uniform([len(lv) for lv in down.levels], "layers per level", where)}
    for i, lv in enumerate(down.levels):
        attention, depth = _level_attention([d for _, d in lv], i, where)
        down.attention.append(attention)
        down.depth.append(depth)
    cfg["down_block_types"] = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down.attention]
    return cfg


def _level_attention(depths: list[int], i: int, where: str) -> tuple[bool, int]:
    """Whether input level ``i`` has attention (on all its layers or none) and its one transformer depth (1: none)."""
    if any(depths) and not all(depths):
        raise UnrecognisedArchitecture(f"{where}: level {i} has attention on some layers only")
    return bool(depths[0]), _uniform(depths, f"transformer depths in level {i}", where) or 1


def _scan_output_blocks(blocks: Mapping[str, set], n: int, per: int, where: str) -> _OutputLevels:
    """The output blocks: ``n`` levels of ``per`` (layers per level + 1) layers, mirroring the input blocks."""
    up = _OutputLevels(attention=[], depths=[])
    for i in range(n):
        ds = [_transformer_depth(blocks, f"output_blocks.{i * per + j}", 1) for j in range(per)]
        if any(ds) and not all(ds):
            raise UnrecognisedArchitecture(f"{where}: output level {i} has attention on some layers only")
        up.attention.append(bool(ds[0]))
        up.depths.append(ds if ds[0] else [1] * per)
    if f"output_blocks.{n * per}" in blocks or f"output_blocks.{n * per - 1}" not in blocks:
        raise UnrecognisedArchitecture(f"{where}: the UNet's output blocks do not mirror its input blocks")
    return up


def _middle_depth(blocks: Mapping[str, set], down: _InputLevels, where: str) -> int:
    """The middle transformer's depth; diffusers needs it equal to the deepest level's when that has attention."""
    mid = len({k.split(".")[1] for k in blocks.get("middle_block.1", ()) if k.startswith("transformer_blocks.")})
    if not mid:
        raise UnrecognisedArchitecture(f"{where}: the UNet's middle block has no transformer (not an SD layout)")
    if down.attention[-1] and down.depth[-1] != mid:
        raise UnrecognisedArchitecture(f"{where}: middle transformer depth {mid} differs from the deepest level's "
                                       f"({down.depth[-1]}); diffusers cannot build that")
    return mid


def _transformer_layers(down: _InputLevels, up: _OutputLevels, mid: int, layers_per_block: int) -> dict:
    """``transformer_layers_per_block`` (one number when all agree) and, only where the output blocks differ from
    its mirror image, ``reverse_transformer_layers_per_block``."""
    n = len(down.depth)
    out: dict = {}
    depths = {d for d, a in zip(down.depth, down.attention) if a} | {mid}
    if len(depths) == 1:
        out["transformer_layers_per_block"] = mid
        tdepth = [mid] * n
    else:
        tdepth = [d if a else 1 for d, a in zip(down.depth, down.attention)]
        tdepth[-1] = mid  # diffusers takes the middle block's depth from the last entry
        out["transformer_layers_per_block"] = tdepth
    per = layers_per_block + 1
    mirrored = list(reversed(tdepth))
    if any(a and d != [mirrored[i]] * per for i, (a, d) in enumerate(zip(up.attention, up.depths))):
        out["reverse_transformer_layers_per_block"] = [list(d) for d in up.depths]
    return out


def _cross_attention(down: _InputLevels, where: str) -> dict:
    if down.linear is None:
        raise UnrecognisedArchitecture(f"{where}: the UNet has no cross-attention at all")
    return {"use_linear_projection": down.linear, "cross_attention_dim": down.cross,
            "mid_block_type": "UNetMidBlock2DCrossAttn"}


def _time_embedding(u: Mapping[str, tuple]) -> dict:
    """``time_embedding_dim`` only where it differs from diffusers' default (4 x the first block's width)."""
    temb = u.get("time_embed.0.weight")
    if temb is not None and int(temb[0]) != 4 * int(u["input_blocks.0.0.weight"][0]):
        return {"time_embedding_dim": int(temb[0])}
    return {}


def _addition_embedding(u: Mapping[str, tuple], family: str, where: str) -> dict:
    """The UNet's extra ("ADM") input, ``label_emb``: SDXL's text-and-time addition embedding; in an SD1/SD2 layout
    the class input of unCLIP models (an image embedding and its noise-level embedding: diffusers'
    ``class_embed_type="projection"``); none otherwise."""
    label = u.get("label_emb.0.0.weight")
    if label is None:
        return {"addition_embed_type": None, "projection_class_embeddings_input_dim": None,
                "addition_time_embed_dim": None}
    if family in ("sd1", "sd2"):
        return {"class_embed_type": "projection", "projection_class_embeddings_input_dim": int(label[1]),
                "addition_embed_type": None, "addition_time_embed_dim": None}
    if family not in ("sdxl", "sdxl_refiner"):
        raise UnrecognisedArchitecture(f"{where}: a class/ADM embedding in a {family} UNet is not supported")
    return {"addition_embed_type": "text_time", "projection_class_embeddings_input_dim": int(label[1])}


def _attention_heads(family: str, block_out_channels: list[int]) -> dict:
    """Heads cannot be read from shapes: the family's published convention (the file's metadata may override it).
    SD1 keeps the template's ``attention_head_dim`` (8, heads in diffusers' legacy naming); the others use 64-wide
    heads per level."""
    if family == "sd1":
        return {}
    return {"attention_head_dim": [max(1, c // 64) for c in block_out_channels]}


def infer_vae(shapes: Mapping[str, tuple], base: dict, meta: dict, where: str = "checkpoint") -> dict:
    v = layout(shapes, km.VAE_PREFIX, where, "vae")
    cfg = dict(base)
    levels = _indices(v, r"encoder\.down\.(\d+)\.")
    cfg["block_out_channels"] = [int(v[f"encoder.down.{i}.block.0.conv1.weight"][0]) for i in levels]
    cfg["layers_per_block"] = len(_indices(v, r"encoder\.down\.0\.block\.(\d+)\."))
    cfg["in_channels"] = int(v["encoder.conv_in.weight"][1])
    cfg["out_channels"] = int(v["decoder.conv_out.weight"][0])
    cfg["latent_channels"] = int(v["decoder.conv_in.weight"][1])
    if len(_indices(v, r"decoder\.up\.(\d+)\.")) != len(levels):
        raise UnrecognisedArchitecture(f"{where}: the VAE decoder's levels do not mirror its encoder's")
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * len(levels)
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * len(levels)
    cfg["mid_block_add_attention"] = "encoder.mid.attn_1.q.weight" in v
    cfg["use_quant_conv"] = "quant_conv.weight" in v
    cfg["use_post_quant_conv"] = "post_quant_conv.weight" in v
    for k in ("mid_block_add_attention", "use_quant_conv", "use_post_quant_conv"):
        if cfg[k] is True and k not in base:
            cfg.pop(k)  # default: keep the config identical to the published one
    cfg.update(meta)
    return cfg


def infer_text(shapes: Mapping[str, tuple], kind: str, prefix: str, base: dict, meta: dict,
               with_projection: bool, where: str = "checkpoint") -> dict:
    t = layout(shapes, prefix, where, "text encoder")
    cfg = dict(base)
    if kind == "clip_l":
        flat = _Layout({km.strip_text_model(k): s for k, s in t.items()}, prefix, where, "text encoder")
        tok = flat["embeddings.token_embedding.weight"]
        pos = flat["embeddings.position_embedding.weight"]
        layers = _indices(flat, r"encoder\.layers\.(\d+)\.")
        mlp = flat["encoder.layers.0.mlp.fc1.weight"]
        proj = None
    else:
        tok = t["token_embedding.weight"]
        pos = t["positional_embedding"]
        layers = _indices(t, r"transformer\.resblocks\.(\d+)\.")
        mlp = t["transformer.resblocks.0.mlp.c_fc.weight"]
        proj = t.get("text_projection")
    cfg["vocab_size"] = int(tok[0])
    cfg["hidden_size"] = int(tok[1])
    cfg["max_position_embeddings"] = int(pos[0])
    cfg["num_hidden_layers"] = len(layers)
    cfg["intermediate_size"] = int(mlp[0])
    if with_projection:
        if proj is None:
            raise UnrecognisedArchitecture(f"{where}: the OpenCLIP text encoder under {prefix!r} has no projection")
        cfg["projection_dim"] = int(proj[1])
    if "num_attention_heads" not in meta:
        cfg["num_attention_heads"] = max(1, cfg["hidden_size"] // 64)
    cfg.update(meta)
    if layers != list(range(len(layers))):
        raise UnrecognisedArchitecture(f"{where}: text encoder layers under {prefix!r} are not numbered 0..n-1")
    return cfg


def infer_configs(det: Detection, shapes: Mapping[str, tuple], metadata: Mapping[str, str] | None = None,
                  where: str = "checkpoint") -> dict[str, dict]:
    """Diffusers/transformers configs for every component: ``unet``, ``vae``, ``text_encoder[_2]``, ``scheduler``."""
    metadata = metadata or {}
    name = FAMILY_TEMPLATE[det.family]
    if det.family == "sd2" and det.prediction_type == "v_prediction":
        name = "sd2_v"
    out: dict[str, dict] = {}
    out["unet"] = infer_unet(shapes, det.family, template(name, "unet"), metadata_fields(metadata, "chisel.unet", UNET_META),
                             where)
    out["vae"] = infer_vae(shapes, template(name, "vae"), metadata_fields(metadata, "chisel.vae", VAE_META), where)
    for te in det.text_encoders:
        out[te.name] = infer_text(shapes, te.kind, te.prefix, template(name, te.name),
                                  metadata_fields(metadata, f"chisel.{te.name}", TEXT_META), te.with_projection, where)
    sched = template(name, "scheduler")
    sched = {k: sched[k] for k in SCHEDULER_FIELDS if k in sched}
    sched.update(metadata_fields(metadata, "chisel.scheduler", SCHEDULER_FIELDS))
    if det.prediction_type:
        sched["prediction_type"] = det.prediction_type
    out["scheduler"] = sched
    return out
