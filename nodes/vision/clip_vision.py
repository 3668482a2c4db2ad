"""Read a CLIP vision encoder into transformers' ``CLIPVisionModelWithProjection``, completely and offline, and
encode images with it.

Layouts read (published key names):

- transformers' (ComfyUI's ``clip_vision`` files, e.g. ``clip_vision_h``/``clip_vision_g``): ``vision_model.*`` and
  ``visual_projection.weight``;
- OpenCLIP's ``visual.*`` (``conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
  ``transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_post``,
  ``proj``), bare or under a prefix: ``embedder.model.`` inside SD2.1-unCLIP checkpoints,
  ``conditioner.embedders.0.open_clip.model.`` inside image-to-video checkpoints.

The architecture comes from the shapes (width, depth, MLP width, patch and image size, projection width). What shapes
cannot tell follows the published models unless the file's ``chisel.clip_vision`` metadata says otherwise: 16
attention heads for widths 1024, 1280 and 1664 (ViT-L, ViT-H, ViT-bigG), 12 for 768 (ViT-B), else one per 64
channels; quick-GELU for OpenAI's widths (768, 1024), GELU for OpenCLIP's larger models; layer-norm epsilon 1e-5.
Every parameter must come from the file, and every vision tensor must find a parameter.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodes.loading.configs import metadata_fields
from nodes.loading.errors import (
    IncompleteCheckpoint,
    UnrecognisedArchitecture,
    WrongFileKind,
    check_parameters_match,
)
from nodes.loading.progress import READING, Report, Stages
from nodes.vision.preprocess import clip_preprocess

META_KEY = "chisel.clip_vision"
META_FIELDS = ("num_attention_heads", "hidden_act", "layer_norm_eps")
HF_PREFIX = "vision_model."
OPEN_CLIP_MARK = "visual.class_embedding"
PUBLISHED_HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}
QUICK_GELU_WIDTHS = (768, 1024)
NAMES = {768: "ViT-B", 1024: "ViT-L", 1280: "ViT-H", 1664: "ViT-bigG"}


@dataclass
class ClipVisionOutput:
    """CLIP_VISION_OUTPUT: what an image encoder gives for a batch of images (float32, on the CPU)."""

    last_hidden_state: torch.Tensor  # [B, tokens, width]: the last layer's output (no final norm)
    penultimate_hidden_states: torch.Tensor  # [B, tokens, width]: the layer before
    image_embeds: torch.Tensor | None  # [B, projection]: the projected, normalised class token (None: no projection)
    source: str = ""

    def __chisel_nbytes__(self) -> dict[str, int]:
        n = sum(t.nbytes for t in (self.last_hidden_state, self.penultimate_hidden_states, self.image_embeds)
                if t is not None)
        return {"ram": n}

    def __len__(self) -> int:
        return int(self.last_hidden_state.shape[0])


# ----------------------------------------------------------------------------------------------------- layouts


def find_layout(keys) -> tuple[str, str] | None:
    """``("transformers", "")`` or ``("open_clip", prefix)`` for the vision tower in ``keys``; None if there is none."""
    keys = list(keys)
    if any(k.startswith(HF_PREFIX) for k in keys):
        return "transformers", ""
    for k in keys:
        if k.endswith(OPEN_CLIP_MARK):
            return "open_clip", k[:-len(OPEN_CLIP_MARK)]
    return None


def _what_else(keys: list[str], path: Path) -> WrongFileKind:
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in keys):
        what = ("a Stable Diffusion checkpoint without an image encoder: use Load Checkpoint, or "
                "unCLIPCheckpointLoader for an unCLIP checkpoint")
    elif "style_embedding" in keys:
        what = "a T2I style adapter: put it in models/style_models and use Load Style Model"
    elif any(k.startswith(("text_model.", "encoder.layers.")) or ".self_attn.q_proj." in k for k in keys):
        what = "a CLIP text encoder, not an image encoder: use Load CLIP"
    else:
        what = f"not a CLIP vision model Chisel recognises ({len(keys)} tensors such as {', '.join(keys[:3])})"
    return WrongFileKind(f"{path.name} is {what}.", path, kind="not_clip_vision")


def open_clip_to_transformers(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """OpenCLIP ``{prefix}visual.*`` tensors renamed (and split, transposed) to transformers' vision layout; tensors
    outside ``{prefix}visual.`` are left out."""
    p = prefix + "visual."
    out: dict[str, torch.Tensor] = {}
    top = {"class_embedding": "embeddings.class_embedding",
           "positional_embedding": "embeddings.position_embedding.weight",
           "conv1.weight": "embeddings.patch_embedding.weight", "ln_pre.weight": "pre_layrnorm.weight",
           "ln_pre.bias": "pre_layrnorm.bias", "ln_post.weight": "post_layernorm.weight",
           "ln_post.bias": "post_layernorm.bias"}
    layer = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "mlp.c_fc.": "mlp.fc1.", "mlp.c_proj.": "mlp.fc2.",
             "attn.out_proj.": "self_attn.out_proj."}
    for key, value in state.items():
        if not key.startswith(p):
            continue
        name = key[len(p):]
        if name in top:
            out[HF_PREFIX + top[name]] = value
        elif name == "proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", name):
            base, rest = f"{HF_PREFIX}encoder.layers.{m.group(1)}.", m.group(2)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[-1]
                for part, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                    out[f"{base}self_attn.{part}_proj.{kind}"] = chunk.contiguous()
            else:
                for old, new in layer.items():
                    if rest.startswith(old):
                        out[base + new + rest[len(old):]] = value
                        break
                else:
                    out[key] = value  # unknown: reported as unused
        else:
            out[key] = value
    return out


def infer_config(state: Mapping[str, torch.Tensor], meta: Mapping | None = None, where: str = "CLIP vision") -> dict:
    """A transformers ``CLIPVisionConfig`` (as a dict) from transformers-layout tensor shapes."""
    s = {k: tuple(v.shape) for k, v in state.items()}
    try:
        width = s[HF_PREFIX + "embeddings.class_embedding"][0]
        patch = s[HF_PREFIX + "embeddings.patch_embedding.weight"]
        positions = s[HF_PREFIX + "embeddings.position_embedding.weight"][0]
        mlp = s[HF_PREFIX + "encoder.layers.0.mlp.fc1.weight"][0]
    except KeyError as exc:
        raise UnrecognisedArchitecture(f"{where}: no {exc.args[0]} tensor; not a CLIP vision layout Chisel reads")
    layers = sorted({int(m.group(1)) for k in s if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))})
    if layers != list(range(len(layers))):
        raise UnrecognisedArchitecture(f"{where}: the vision layers are not numbered 0..n-1")
    grid = round((positions - 1) ** 0.5)
    if grid * grid != positions - 1:
        raise UnrecognisedArchitecture(f"{where}: {positions} position embeddings are not a square grid plus a class "
                                       "token")
    cfg: dict[str, Any] = {
        "hidden_size": int(width), "intermediate_size": int(mlp), "num_hidden_layers": len(layers),
        "num_channels": int(patch[1]), "patch_size": int(patch[-1]), "image_size": int(grid * patch[-1]),
        "num_attention_heads": PUBLISHED_HEADS.get(int(width), max(1, int(width) // 64)),
        "hidden_act": "quick_gelu" if int(width) in QUICK_GELU_WIDTHS else "gelu", "layer_norm_eps": 1e-5,
    }
    proj = s.get("visual_projection.weight")
    cfg["projection_dim"] = int(proj[0]) if proj is not None else int(width)
    cfg.update(meta or {})
    return cfg


# ------------------------------------------------------------------------------------------------------ loading


@dataclass
class LoadedClipVision:
    module: torch.nn.Module  # transformers CLIPVisionModelWithProjection (or CLIPVisionModel), eval, no grad
    config: dict
    layout: str  # transformers | open_clip

    @property
    def description(self) -> str:
        w = int(self.config["hidden_size"])
        return f"CLIP vision {NAMES.get(w, f'width {w}')}"


def load_clip_vision_state(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None, path: Path,
                           prefix: str | None = None) -> LoadedClipVision:
    """The vision tower among ``state``'s tensors (a whole file, or a checkpoint holding one under ``prefix``)."""
    from accelerate import init_empty_weights
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        CLIPVisionModelWithProjection,
    )

    found = find_layout(state) if prefix is None else ("open_clip", prefix)
    if found is None:
        raise _what_else(list(state), path)
    layout, pre = found
    if layout == "open_clip":
        tensors = open_clip_to_transformers(state, pre)
    else:
        tensors = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    cfg = infer_config(tensors, metadata_fields(metadata or {}, META_KEY, META_FIELDS), where=path.name)
    config = CLIPVisionConfig(**cfg)
    config._attn_implementation = "sdpa"
    cls = CLIPVisionModelWithProjection if "visual_projection.weight" in tensors else CLIPVisionModel
    with init_empty_weights(include_buffers=False):
        module = cls(config)
    own = {k: v for k, v in module.state_dict().items() if not k.endswith("position_ids")}
    check_parameters_match(own, tensors, path, "CLIP vision", "clip_vision")
    module.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False, assign=True)
    left = [n for n, p in module.named_parameters() if p.is_meta]
    if left:
        raise IncompleteCheckpoint(f"{path.name}: CLIP vision parameters left unset: {left[:4]}", path)
    module.requires_grad_(False).eval()
    return LoadedClipVision(module, cfg, layout)


CLIP_VISION_STAGES = (READING, "building the CLIP vision model")


def load_clip_vision(path: str | Path, allow_pickle: bool | None = None, progress: Report | None = None
                     ) -> LoadedClipVision:
    """A CLIP vision model file; ``progress`` hears each of :data:`CLIP_VISION_STAGES` start."""
    from nodes.loading.weights import read_tensors

    stages = Stages(CLIP_VISION_STAGES, progress)
    stages.enter(READING)
    path = Path(path)
    state, metadata = read_tensors(path, allow_pickle)
    stages.enter(CLIP_VISION_STAGES[1])
    if not state:
        raise WrongFileKind(f"{path.name} contains no tensors.", path, kind="empty")
    return load_clip_vision_state(state, metadata, path)


# -------------------------------------------------------------------------------------------------- the handle


@dataclass(eq=False)
class ClipVisionHandle:
    """CLIP_VISION: an image encoder under the model manager."""

    manager: Any  # nodes.memory.manager.ModelManager
    module: Any  # ManagedModule
    config: dict
    source: str
    layout: str

    @property
    def name(self) -> str:
        return Path(self.source).name

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def has_projection(self) -> bool:
        return hasattr(self.module.module, "visual_projection")

    def __chisel_nbytes__(self) -> dict[str, int]:
        return {}  # the manager accounts for model memory

    def __repr__(self) -> str:
        return f"<CLIP_VISION {self.source}>"

    @torch.no_grad()
    def encode(self, image: torch.Tensor, crop: bool = True) -> ClipVisionOutput:
        """Encode an IMAGE batch ``[B, H, W, C]`` (0..1) after CLIP's preprocessing (:mod:`nodes.vision.preprocess`)."""
        with self.manager.use(self.module):
            module = self.module.module
            pixels = clip_preprocess(image.to(self.module.device), self.image_size, crop)
            out = module(pixel_values=pixels.to(self.module.dtype), output_hidden_states=True)
            embeds = getattr(out, "image_embeds", None)
            return ClipVisionOutput(out.last_hidden_state.float().cpu(), out.hidden_states[-2].float().cpu(),
                                    embeds.float().cpu() if embeds is not None else None, self.source)


def make_handle(manager, loaded: LoadedClipVision, source: str) -> ClipVisionHandle:
    dtype = manager.compute_dtype("clip_vision")
    mm = manager.register("clip_vision", loaded.module, source, dtype)
    return ClipVisionHandle(manager, mm, loaded.config, source, loaded.layout)


def load(manager, path: str | Path, progress: Report | None = None) -> ClipVisionHandle:
    """The CLIP vision model in a file, loaded once per file identity; ``progress`` hears the load's stages."""
    path = Path(path)
    return manager.load_once("clip_vision", path, lambda: make_handle(
        manager, load_clip_vision(path, manager.allow_pickle, progress), str(path)))


def load_embedded(manager, path: str | Path) -> ClipVisionHandle:
    """The image encoder inside a checkpoint (OpenCLIP's ``visual.*`` under ``embedder.model.`` in SD2.1-unCLIP files),
    loaded once per file identity; only its tensors are read."""
    from nodes.loading.weights import WeightFile

    path = Path(path)

    def factory():
        with WeightFile(path, manager.allow_pickle) as source:
            found = find_layout(source.shapes)
            if found is None:
                raise WrongFileKind(f"{path.name} holds no CLIP image encoder (no visual.* or vision_model.* tensors): "
                                    "it is not an unCLIP checkpoint; use Load Checkpoint, and Load CLIP Vision for "
                                    "an image encoder file.", path, kind="no_clip_vision")
            layout, prefix = found
            keys = [k for k in source.shapes if k.startswith(prefix + "visual." if layout == "open_clip" else
                                                              (HF_PREFIX, "visual_projection."))]
            state, metadata = source.many(keys), dict(source.metadata)
        loaded = load_clip_vision_state(state, metadata, path, prefix if layout == "open_clip" else None)
        return make_handle(manager, loaded, str(path))

    return manager.load_once("clip_vision_in_checkpoint", path, factory)
