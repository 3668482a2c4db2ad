"""Which model a state dict holds, from its key names and tensor shapes alone (no tensor data is read).

Families: ``sd1`` (SD1.x, OpenAI CLIP-L text encoder), ``sd2`` (SD2.x, OpenCLIP-H), ``sdxl`` (SDXL base, CLIP-L +
OpenCLIP-bigG), ``sdxl_refiner`` (OpenCLIP-bigG only). Variants: 4 UNet input channels (base) or 9 (inpainting).
Prediction type (epsilon / v): chisel metadata or ``modelspec.prediction_type`` when present; a ``v_pred`` key;
otherwise for SD2 a weight-statistics heuristic applied by the loader once tensors are read.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from nodes.loading import keymaps as km
from nodes.loading.errors import IncompleteCheckpoint, UnrecognisedArchitecture, WrongFileKind

Shapes = Mapping[str, tuple]

FAMILY_NAMES = {
    "sd1": "Stable Diffusion 1.x",
    "sd2": "Stable Diffusion 2.x",
    "sdxl": "Stable Diffusion XL base",
    "sdxl_refiner": "Stable Diffusion XL refiner",
}


@dataclass
class TextEncoderSpec:
    name: str  # text_encoder | text_encoder_2 (diffusers component names)
    kind: str  # clip_l | open_clip
    prefix: str  # file prefix of the component
    with_projection: bool = False


@dataclass
class Detection:
    family: str
    in_channels: int
    text_encoders: list[TextEncoderSpec] = field(default_factory=list)
    prediction_type: str | None = None  # None: not decided from keys/metadata (the loader decides)
    unet_prefix: str = km.UNET_PREFIX
    vae_prefix: str = km.VAE_PREFIX

    @property
    def variant(self) -> str:
        return "inpaint" if self.in_channels == 9 else "base"

    @property
    def description(self) -> str:
        name = FAMILY_NAMES[self.family]
        if self.variant == "inpaint":
            name += " inpainting"
        if self.prediction_type == "v_prediction":
            name += " (v-prediction)"
        return name


def _prefix_summary(shapes: Shapes, depth: int = 2, limit: int = 8) -> str:
    counts = Counter(".".join(k.split(".")[:depth]) for k in shapes)
    parts = [f"{p} ({n})" for p, n in counts.most_common(limit)]
    more = len(counts) - limit
    return ", ".join(parts) + (f", and {more} more groups" if more > 0 else "")


def _is_lora(keys) -> bool:
    for k in keys:
        if k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")):
            return True
        if any(t in k for t in (".lora_up.", ".lora_down.", ".lora_A.", ".lora_B.", ".lora.up.", ".lora.down.",
                                ".hada_w1_", ".lokr_w1", "lora_mid.")):
            return True
    return False


def not_a_checkpoint(shapes: Shapes, path=None) -> None:
    """Raise :class:`WrongFileKind` for well-known non-checkpoint files."""
    keys = list(shapes)
    if _is_lora(keys):
        raise WrongFileKind(
            f"{path or 'this file'} is a LoRA (low-rank adapter: {len(keys)} tensors such as {keys[0]!r}), not a "
            "checkpoint. Put it in models/loras and apply it with a LoraLoader node on top of a checkpoint.",
            path, kind="lora")
    has_unet = any(k.startswith(km.UNET_PREFIX) for k in keys)
    if has_unet:
        return
    if any(k.startswith(("control_model.", "controlnet_cond_embedding.")) for k in keys) or \
            "input_hint_block.0.weight" in shapes:
        raise WrongFileKind(f"{path or 'this file'} is a ControlNet, not a checkpoint: load it with a ControlNet "
                            "loader.", path, kind="controlnet")
    if "encoder.conv_in.weight" in shapes and "decoder.conv_in.weight" in shapes or (
            keys and all(k.startswith(km.VAE_PREFIX) for k in keys)):
        raise WrongFileKind(f"{path or 'this file'} holds only a VAE (autoencoder), not a full checkpoint: put it "
                            "in models/vae and use a VAELoader node.", path, kind="vae")
    if "conv_in.weight" in shapes and any(k.startswith("down_blocks.") for k in keys):
        raise WrongFileKind(f"{path or 'this file'} is a diffusers-format UNet weights file, not a single-file "
                            "checkpoint: load the whole diffusers folder (with its model_index.json) instead.",
                            path, kind="diffusers_unet")
    if any(k in shapes for k in ("emb_params", "string_to_param.*", "clip_l", "clip_g")) or \
            any(k.startswith("string_to_param") for k in keys):
        raise WrongFileKind(f"{path or 'this file'} is a textual-inversion embedding, not a checkpoint: put it in "
                            "models/embeddings.", path, kind="embedding")
    if any(".self_attn.q_proj." in k for k in keys) and not any(k.startswith("model.") for k in keys):
        raise WrongFileKind(f"{path or 'this file'} holds only a text encoder, not a full checkpoint.", path,
                            kind="text_encoder")


def detect(shapes: Shapes, metadata: Mapping[str, str] | None = None, path=None) -> Detection:
    """Family, variant and components of an LDM/SGM single-file checkpoint, from key names and shapes."""
    not_a_checkpoint(shapes, path)
    where = path or "this file"
    in_channels = _unet_in_channels(shapes, where, path)
    family, tes = _text_encoders(shapes, where, path)
    _check_vae(shapes, family, where, path)
    if in_channels not in (4, 9):
        raise UnrecognisedArchitecture(
            f"{where}: a {FAMILY_NAMES[family]} UNet with {in_channels} input channels; Chisel knows 4 (text to "
            "image) and 9 (inpainting).", path)
    _check_context_width(shapes, family, tes, where, path)
    return Detection(family=family, in_channels=in_channels, text_encoders=tes,
                     prediction_type=_prediction_type(shapes, metadata or {}, family, in_channels))


def _unet_in_channels(shapes: Shapes, where, path) -> int:
    """The input channels of the UNet's first convolution (4: text to image, 9: inpainting)."""
    conv_in = shapes.get(km.UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        raise UnrecognisedArchitecture(
            f"{where} is not a Stable Diffusion checkpoint Chisel recognises: it has no "
            f"'{km.UNET_PREFIX}input_blocks.0.0.weight' (the UNet's first convolution). It holds {len(shapes)} "
            f"tensors grouped as: {_prefix_summary(shapes)}.", path)
    if len(conv_in) != 4:
        raise UnrecognisedArchitecture(f"{where}: the UNet's first convolution has shape {list(conv_in)}, "
                                       "expected a 4-d convolution kernel.", path)
    return int(conv_in[1])


def _family_markers() -> list[tuple[tuple[str, ...], str, list[TextEncoderSpec]]]:
    """(keys that must all be present, family, its text encoders), first match wins."""
    return [
        ((km.SDXL_CLIP_G_PREFIX + "transformer.resblocks.0.ln_1.weight",
          km.SDXL_CLIP_L_PREFIX + "embeddings.token_embedding.weight"), "sdxl",
         [TextEncoderSpec("text_encoder", "clip_l", km.SDXL_CLIP_L_PREFIX),
          TextEncoderSpec("text_encoder_2", "open_clip", km.SDXL_CLIP_G_PREFIX, with_projection=True)]),
        ((km.SDXL_REFINER_CLIP_G_PREFIX + "transformer.resblocks.0.ln_1.weight",), "sdxl_refiner",
         [TextEncoderSpec("text_encoder_2", "open_clip", km.SDXL_REFINER_CLIP_G_PREFIX, with_projection=True)]),
        ((km.SD2_CLIP_PREFIX + "transformer.resblocks.0.ln_1.weight",), "sd2",
         [TextEncoderSpec("text_encoder", "open_clip", km.SD2_CLIP_PREFIX)]),
        ((km.SD1_CLIP_PREFIX + "embeddings.token_embedding.weight",), "sd1",
         [TextEncoderSpec("text_encoder", "clip_l", km.SD1_CLIP_PREFIX)]),
        (("cond_stage_model.transformer.embeddings.token_embedding.weight",), "sd1",
         [TextEncoderSpec("text_encoder", "clip_l", "cond_stage_model.transformer.")]),
    ]


def _text_encoders(shapes: Shapes, where, path) -> tuple[str, list[TextEncoderSpec]]:
    """The family and its text encoders, told apart by the text encoders' keys."""
    for keys, family, tes in _family_markers():
        if all(k in shapes for k in keys):
            return family, tes
    raise UnrecognisedArchitecture(
        f"{where} has a Stable Diffusion UNet but no text encoder Chisel recognises (looked for OpenAI CLIP "
        f"under 'cond_stage_model.transformer.', OpenCLIP under 'cond_stage_model.model.', SDXL's under "
        f"'conditioner.embedders.'). It holds: {_prefix_summary(shapes)}. A UNet-only file cannot be loaded "
        "with CheckpointLoaderSimple.", path)


def _check_vae(shapes: Shapes, family: str, where, path) -> None:
    if not any(k.startswith(km.VAE_PREFIX) for k in shapes):
        raise UnrecognisedArchitecture(f"{where} is a {FAMILY_NAMES[family]} checkpoint without VAE weights "
                                       f"(no '{km.VAE_PREFIX}*' tensors); Chisel needs a checkpoint with its VAE.",
                                       path)


def _check_context_width(shapes: Shapes, family: str, tes: list[TextEncoderSpec], where, path) -> None:
    """The UNet's cross-attention width must be the text encoders' (both together for SDXL)."""
    ctx_key = next((k for k in shapes if k.startswith(km.UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None)
    ctx_dim = _dim(shapes, ctx_key, 1, where, path, "unet") if ctx_key is not None else None
    widths = [_dim(shapes, te.prefix + ("embeddings.token_embedding.weight" if te.kind == "clip_l"
                                        else "token_embedding.weight"), 1, where, path, te.name) for te in tes]
    expected = widths[0] + widths[1] if family == "sdxl" else widths[0]
    if ctx_dim is not None and ctx_dim != expected:
        raise UnrecognisedArchitecture(
            f"{where}: the UNet's cross-attention takes {ctx_dim}-wide text features, but the text encoder(s) give "
            f"{'+'.join(map(str, widths))}; this is not a {FAMILY_NAMES[family]} layout Chisel knows.", path)


def _dim(shapes: Shapes, key: str, index: int, where, path, component: str) -> int:
    """Dimension ``index`` of tensor ``key``: a loader error naming the tensor when the file lacks it, or when it
    has too few dimensions."""
    shape = shapes.get(key)
    if shape is None:
        raise IncompleteCheckpoint(f"{where}: the {component.replace('_', ' ')} has no tensor "
                                   f"{key!r}, which its layout needs; the file is incomplete or not a layout Chisel "
                                   "reads.", path, missing={component: [key]})
    if len(shape) <= index:
        raise UnrecognisedArchitecture(f"{where}: tensor {key} has shape {list(shape)}; its role in the layout needs "
                                       f"at least {index + 1} dimensions (the file is corrupt or not a layout Chisel "
                                       "reads).", path)
    return int(shape[index])


def _prediction_type(shapes: Shapes, metadata: Mapping[str, str], family: str, in_channels: int) -> str | None:
    """From metadata, else a ``v_pred`` key, else epsilon for every family but SD2 base (None: the loader decides
    from the weights)."""
    found = prediction_type_from_metadata(metadata)
    if found is None and "v_pred" in shapes:
        found = "v_prediction"
    if found is None and (family in ("sd1", "sdxl", "sdxl_refiner") or in_channels == 9):
        found = "epsilon"  # SD2 inpainting is epsilon too
    return found


def prediction_type_from_metadata(metadata: Mapping[str, str]) -> str | None:
    sched = metadata.get("chisel.scheduler")
    if sched:
        try:
            pt = json.loads(sched).get("prediction_type")
        except (ValueError, AttributeError):
            pt = None
        if pt:
            return _norm_pred(pt)
    pt = metadata.get("modelspec.prediction_type")
    return _norm_pred(pt) if pt else None


def _norm_pred(value: str) -> str:
    v = value.strip().lower()
    if v in ("v", "v_prediction", "v-prediction", "vpred", "v_pred"):
        return "v_prediction"
    if v in ("eps", "epsilon", "noise"):
        return "epsilon"
    return v
