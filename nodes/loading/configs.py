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
from functools import lru_cache
from pathlib import Path

from nodes.loading import keymaps as km
from nodes.loading.detect import Detection
from nodes.loading.errors import UnrecognisedArchitecture

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


def _sub(shapes: Mapping[str, tuple], prefix: str) -> dict[str, tuple]:
    n = len(prefix)
    return {k[n:]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _uniform(values: list, what: str, where: str):
    if len(set(map(str, values))) != 1:
        raise UnrecognisedArchitecture(f"{where}: {what} differ between levels ({values}); not a layout Chisel loads")
    return values[0]


def infer_unet(shapes: Mapping[str, tuple], family: str, base: dict, meta: dict, where: str = "checkpoint") -> dict:
    u = _sub(shapes, km.UNET_PREFIX)
    cfg = dict(base)
    conv_in = u["input_blocks.0.0.weight"]
    cfg["in_channels"] = int(conv_in[1])
    cfg["conv_in_kernel"] = int(conv_in[2])
    out = u.get("out.2.weight")
    if out is None:
        raise UnrecognisedArchitecture(f"{where}: the UNet has no output convolution (out.2.weight)")
    cfg["out_channels"] = int(out[0])
    cfg["conv_out_kernel"] = int(out[2])
    c0 = int(conv_in[0])

    by_block: dict[str, set] = {}
    for k in u:
        parts = k.split(".")
        if parts[0] in ("input_blocks", "output_blocks", "middle_block"):
            by_block.setdefault(".".join(parts[:2]), set()).add(".".join(parts[2:]))

    def depth(block: str, slot: int) -> int:
        keys = by_block.get(block, ())
        return len({k.split(".")[2] for k in keys if k.startswith(f"{slot}.transformer_blocks.")})

    levels: list[list[tuple[int, int]]] = [[]]
    linear = None
    cross = None
    k = 1
    while f"input_blocks.{k}" in by_block:
        name = f"input_blocks.{k}"
        if f"input_blocks.{k}.0.op.weight" in u:
            levels.append([])
        else:
            ch = int(u[f"{name}.0.out_layers.3.weight"][0])
            d = depth(name, 1)
            if d:
                pin = u[f"{name}.1.proj_in.weight"]
                linear = len(pin) == 2 if linear is None else linear
                cross = int(u[f"{name}.1.transformer_blocks.0.attn2.to_k.weight"][1]) if cross is None else cross
            levels[-1].append((ch, d))
        k += 1
    if not levels[-1]:
        raise UnrecognisedArchitecture(f"{where}: the UNet ends its input blocks with a downsampler")
    n = len(levels)
    cfg["block_out_channels"] = [_uniform([c for c, _ in lv], "channel widths within a level", where)
                                 for lv in levels]
    cfg["layers_per_block"] = _uniform([len(lv) for lv in levels], "layers per level", where)
    attn = []
    tdepth = []
    for i, lv in enumerate(levels):
        ds = [d for _, d in lv]
        if any(ds) and not all(ds):
            raise UnrecognisedArchitecture(f"{where}: level {i} has attention on some layers only")
        attn.append(bool(ds[0]))
        tdepth.append(_uniform(ds, f"transformer depths in level {i}", where) or 1)
    cfg["down_block_types"] = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn]

    # output blocks: n levels of layers_per_block + 1
    per = cfg["layers_per_block"] + 1
    up_attn = []
    up_depth = []
    for i in range(n):
        ds = [depth(f"output_blocks.{i * per + j}", 1) for j in range(per)]
        if any(ds) and not all(ds):
            raise UnrecognisedArchitecture(f"{where}: output level {i} has attention on some layers only")
        up_attn.append(bool(ds[0]))
        up_depth.append(ds if ds[0] else [1] * per)
    if f"output_blocks.{n * per}" in by_block or f"output_blocks.{n * per - 1}" not in by_block:
        raise UnrecognisedArchitecture(f"{where}: the UNet's output blocks do not mirror its input blocks")
    cfg["up_block_types"] = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn]
    mid = len({k.split(".")[1] for k in by_block.get("middle_block.1", ()) if k.startswith("transformer_blocks.")})
    if not mid:
        raise UnrecognisedArchitecture(f"{where}: the UNet's middle block has no transformer (not an SD layout)")
    if attn[-1] and tdepth[-1] != mid:
        raise UnrecognisedArchitecture(f"{where}: middle transformer depth {mid} differs from the deepest level's "
                                       f"({tdepth[-1]}); diffusers cannot build that")
    depths = {d for d, a in zip(tdepth, attn) if a} | {mid}
    if len(depths) == 1:
        cfg["transformer_layers_per_block"] = mid
        tdepth = [mid] * n
    else:
        tdepth = [d if a else 1 for d, a in zip(tdepth, attn)]
        tdepth[-1] = mid  # diffusers takes the middle block's depth from the last entry
        cfg["transformer_layers_per_block"] = tdepth
    rev_default = list(reversed(tdepth))
    if any(a and d != [rev_default[i]] * per for i, (a, d) in enumerate(zip(up_attn, up_depth))):
        cfg["reverse_transformer_layers_per_block"] = [list(d) for d in up_depth]
    else:
        cfg.pop("reverse_transformer_layers_per_block", None)
    if linear is None:
        raise UnrecognisedArchitecture(f"{where}: the UNet has no cross-attention at all")
    cfg["use_linear_projection"] = linear
    cfg["cross_attention_dim"] = cross
    cfg["mid_block_type"] = "UNetMidBlock2DCrossAttn"

    temb = u.get("time_embed.0.weight")
    if temb is not None and int(temb[0]) != 4 * c0:
        cfg["time_embedding_dim"] = int(temb[0])
    label = u.get("label_emb.0.0.weight")
    if label is not None:
        if family not in ("sdxl", "sdxl_refiner"):
            raise UnrecognisedArchitecture(f"{where}: a class/ADM embedding in a {family} UNet is not supported")
        cfg["addition_embed_type"] = "text_time"
        cfg["projection_class_embeddings_input_dim"] = int(label[1])
    else:
        cfg["addition_embed_type"] = None
        cfg["projection_class_embeddings_input_dim"] = None
        cfg["addition_time_embed_dim"] = None

    # Heads: published convention per family unless the metadata says.
    if family == "sd1":
        pass  # attention_head_dim (= heads in diffusers' legacy naming) from the template: 8
    else:
        cfg["attention_head_dim"] = [max(1, c // 64) for c in cfg["block_out_channels"]]
    cfg.update(meta)
    return cfg


def infer_vae(shapes: Mapping[str, tuple], base: dict, meta: dict, where: str = "checkpoint") -> dict:
    v = _sub(shapes, km.VAE_PREFIX)
    cfg = dict(base)
    try:
        levels = _indices(v, r"encoder\.down\.(\d+)\.")
        cfg["block_out_channels"] = [int(v[f"encoder.down.{i}.block.0.conv1.weight"][0]) for i in levels]
        cfg["layers_per_block"] = len(_indices(v, r"encoder\.down\.0\.block\.(\d+)\."))
        cfg["in_channels"] = int(v["encoder.conv_in.weight"][1])
        cfg["out_channels"] = int(v["decoder.conv_out.weight"][0])
        cfg["latent_channels"] = int(v["decoder.conv_in.weight"][1])
    except KeyError as exc:
        raise UnrecognisedArchitecture(f"{where}: the VAE lacks {exc.args[0]!r}; not an LDM autoencoder layout")
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
    t = _sub(shapes, prefix)
    cfg = dict(base)
    if kind == "clip_l":
        flat = {km.strip_text_model(k): s for k, s in t.items()}
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
