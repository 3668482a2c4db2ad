"""Single components in their own files, as ComfyUI's UNETLoader, CLIPLoader and DualCLIPLoader take them:

- a diffusion model (UNet) in the original layout, with or without the ``model.diffusion_model.`` prefix
  (``models/unet``); its family comes from its own tensors: SDXL's ``label_emb`` (base or refiner by the width of
  its extra conditioning), otherwise linear transformer projections (SD2.x) or convolutional ones (SD1.x);
- a CLIP text encoder in the transformers layout (``text_model.*``; ``models/clip``): OpenAI CLIP-L (quick-GELU, no
  projection) or OpenCLIP (GELU; bigG with ``text_projection.weight``).

Hyperparameters shapes cannot tell come from the file's ``chisel.*`` metadata when present, else the published
ones. Every parameter must come from the file, as for checkpoints.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodes.loading import keymaps as km
from nodes.loading.checkpoint import BUILDING, LOADING, _assign, build_checked, build_text_encoder, build_unet
from nodes.loading.configs import (
    FAMILY_TEMPLATE,
    SCHEDULER_FIELDS,
    TEXT_META,
    UNET_META,
    metadata_fields,
    infer_text,
    infer_unet,
    layout,
    template,
)
from nodes.loading.errors import IncompleteCheckpoint, UnrecognisedArchitecture, WrongFileKind
from nodes.loading.libraries import import_model_libraries
from nodes.loading.progress import IMPORTING, READING, Report, Stages
from nodes.loading.weights import WeightFile

UNET_FILE_STAGES = (IMPORTING, READING, BUILDING["unet"], LOADING["unet"])
TEXT_FILE_STAGES = (IMPORTING, READING, "building the text encoder", "loading the text encoder weights")

REFINER_TIME_IDS = 5  # the refiner's extra conditioning: size, crop and aesthetic score


@dataclass
class LoadedUnet:
    module: Any
    family: str
    config: dict
    scheduler: dict


@dataclass
class LoadedTextEncoder:
    module: Any
    kind: str  # clip_l | open_clip
    with_projection: bool
    config: dict


def _unet_family(u: dict[str, tuple], meta: dict, path: Path) -> str:
    if "label_emb.0.0.weight" in u:
        adm = int(u["label_emb.0.0.weight"][1])
        ctx = next((int(s[1]) for k, s in u.items() if k.endswith("attn2.to_k.weight")), None)
        if ctx is None:
            raise UnrecognisedArchitecture(f"{path}: a UNet with SDXL's extra conditioning (label_emb) but no "
                                           "cross-attention; not a layout Chisel reads.", path)
        tdim = meta.get("addition_time_embed_dim", 256)
        if not isinstance(tdim, int) or isinstance(tdim, bool):
            raise UnrecognisedArchitecture(f"{path}: its chisel.unet metadata gives addition_time_embed_dim "
                                           f"{json.dumps(tdim)[:40]}, not a whole number.", path)
        return "sdxl_refiner" if adm - ctx == REFINER_TIME_IDS * tdim else "sdxl"
    proj = next((s for k, s in u.items() if k.endswith("proj_in.weight")), None)
    return "sd2" if proj is not None and len(proj) == 2 else "sd1"


def load_unet_file(path: str | Path, allow_pickle: bool | None = None, progress: Report | None = None) -> LoadedUnet:
    """A UNet file; ``progress`` (a node's ``ctx.progress``) hears each of :data:`UNET_FILE_STAGES` start."""
    stages = Stages(UNET_FILE_STAGES, progress)
    stages.enter(IMPORTING)
    import_model_libraries()
    from diffusers.loaders import single_file_utils as sfu

    path = Path(path)
    stages.enter(READING)
    with WeightFile(path, allow_pickle) as wf:
        keys = list(wf.shapes)
        if any(k.startswith(km.UNET_PREFIX) for k in keys):
            prefix = km.UNET_PREFIX
            if any(k.startswith(("cond_stage_model.", "conditioner.", km.VAE_PREFIX)) for k in keys):
                raise WrongFileKind(f"{path} is a full checkpoint: load it with Load Checkpoint.", path,
                                    kind="checkpoint")
        elif "input_blocks.0.0.weight" in wf.shapes:
            prefix = ""
        elif "conv_in.weight" in wf.shapes and any(k.startswith("down_blocks.") for k in keys):
            raise UnrecognisedArchitecture(f"{path} is a UNet in the diffusers layout; Chisel reads diffusers models "
                                           "as whole pipeline folders (with model_index.json) in models/checkpoints.",
                                           path)
        else:
            raise UnrecognisedArchitecture(f"{path} is not a Stable Diffusion UNet: it has no input_blocks.0.0 "
                                           f"convolution ({len(keys)} tensors, e.g. {', '.join(keys[:3])}).", path)
        shapes = {km.UNET_PREFIX + k[len(prefix):]: s for k, s in wf.shapes.items() if k.startswith(prefix)}
        u = layout(shapes, km.UNET_PREFIX, str(path), "unet")
        meta = metadata_fields(wf.metadata, "chisel.unet", UNET_META)
        family = _unet_family(u, meta, path)
        name = FAMILY_TEMPLATE[family]
        cfg = infer_unet(shapes, family, template(name, "unet"), meta, str(path))
        stages.enter(BUILDING["unet"])
        unet = build_checked("unet", build_unet, cfg, path, wf.metadata)
        expected = {km.UNET_PREFIX + v: k for k, v in km.unet_key_map(cfg, list(unet.state_dict())).items()}
        missing = sorted(k for k in expected if k not in shapes)
        if missing:
            raise IncompleteCheckpoint(f"{path} lacks {len(missing)} UNet tensors ({', '.join(missing[:4])}).", path,
                                       missing={"unet": missing})
        stages.enter(LOADING["unet"])
        sub = {k: wf.get(prefix + k[len(km.UNET_PREFIX):]) for k in expected}
        _assign(unet, sfu.convert_ldm_unet_checkpoint(sub, cfg), "unet", path)
        sched = template(name, "scheduler")
        sched = {k: sched[k] for k in SCHEDULER_FIELDS if k in sched}
        sched.update(metadata_fields(wf.metadata, "chisel.scheduler", SCHEDULER_FIELDS))
    return LoadedUnet(unet, family, dict(cfg), sched)


def _text_meta(metadata: dict[str, str]) -> dict:
    for key in ("chisel.text_encoder", "chisel.text_encoder_2", "chisel.text"):
        found = metadata_fields(metadata, key, TEXT_META)
        if found:
            return found
    return {}


def load_text_encoder_file(path: str | Path, allow_pickle: bool | None = None,
                           progress: Report | None = None) -> LoadedTextEncoder:
    """A CLIP text encoder file; ``progress`` hears each of :data:`TEXT_FILE_STAGES` start."""
    stages = Stages(TEXT_FILE_STAGES, progress)
    stages.enter(IMPORTING)
    import_model_libraries()
    path = Path(path)
    stages.enter(READING)
    with WeightFile(path, allow_pickle) as wf:
        flat = {km.strip_text_model(k): k for k in wf.shapes}
        if "embeddings.token_embedding.weight" not in flat or "encoder.layers.0.mlp.fc1.weight" not in flat:
            raise UnrecognisedArchitecture(
                f"{path} is not a CLIP text encoder in the transformers layout (text_model.embeddings..., "
                f"text_model.encoder.layers...); it holds {len(flat)} tensors, e.g. "
                f"{', '.join(list(wf.shapes)[:3])}.", path)
        with_projection = "text_projection.weight" in flat
        meta = _text_meta(wf.metadata)
        act = meta.get("hidden_act")
        kind = "open_clip" if with_projection or act == "gelu" else "clip_l"
        base = template("sdxl", "text_encoder_2") if kind == "open_clip" else template("sd15", "text_encoder")
        shapes = {"text_model." + f: wf.shapes[k] for f, k in flat.items()}
        cfg = infer_text(shapes, "clip_l", "", base, meta, False, str(path))
        if with_projection:
            shapes_here = layout(wf.shapes, "", str(path), "text encoder")
            cfg["projection_dim"] = int(shapes_here[flat["text_projection.weight"]][0])
        stages.enter(TEXT_FILE_STAGES[2])
        module = build_checked("text", build_text_encoder, cfg, path, wf.metadata, with_projection)
        own = [k for k in module.state_dict() if not k.endswith("position_ids")]
        missing = [k for k in own if km.strip_text_model(k) not in flat]
        if missing:
            raise IncompleteCheckpoint(f"{path} lacks {len(missing)} text encoder tensors ({', '.join(missing[:4])}).",
                                       path, missing={"text_encoder": missing})
        stages.enter(TEXT_FILE_STAGES[3])
        state = {k: wf.get(flat[km.strip_text_model(k)]) for k in own}
        _assign(module, state, "text encoder", path)
    return LoadedTextEncoder(module, kind, with_projection, json.loads(module.config.to_json_string()))
