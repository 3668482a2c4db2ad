"""Standalone VAE files (models/vae): LDM layout (``encoder.down.0.block.0...``, optionally under
``first_stage_model.``/``vae.``) or diffusers layout (``encoder.down_blocks.0.resnets.0...``), loaded completely."""
from __future__ import annotations

from pathlib import Path

from nodes.loading import keymaps as km
from nodes.loading.checkpoint import BUILDING, LOADING, _assign, build_checked, build_vae
from nodes.loading.configs import VAE_META, _indices, infer_vae, layout, metadata_fields, template
from nodes.loading.detect import _is_lora
from nodes.loading.errors import (
    CorruptCheckpoint,
    IncompleteCheckpoint,
    UnrecognisedArchitecture,
    WrongFileKind,
)
from nodes.loading.libraries import import_model_libraries
from nodes.loading.progress import IMPORTING, READING, Report, Stages
from nodes.loading.weights import WeightFile

VAE_STAGES = (IMPORTING, READING, BUILDING["vae"], LOADING["vae"])


def load_vae_file(path: str | Path, allow_pickle: bool | None = None, progress: Report | None = None):
    """``(AutoencoderKL, config)`` from a VAE file; every parameter must come from the file. ``progress`` (a node's
    ``ctx.progress``) hears each of :data:`VAE_STAGES` start."""
    stages = Stages(VAE_STAGES, progress)
    stages.enter(IMPORTING)
    import_model_libraries()
    from diffusers.loaders import single_file_utils as sfu

    path = Path(path)
    stages.enter(READING)
    source = WeightFile(path, allow_pickle)
    shapes, metadata = source.shapes, source.metadata
    if not shapes:
        raise CorruptCheckpoint(f"{path} contains no tensors.", path)
    if _is_lora(shapes):
        raise WrongFileKind(f"{path} is a LoRA, not a VAE: put it in models/loras and use a LoraLoader node.",
                            path, kind="lora")
    if any(k.startswith(km.UNET_PREFIX) for k in shapes):
        raise WrongFileKind(f"{path} is a full checkpoint, not a VAE: load it with CheckpointLoaderSimple (its "
                            "VAE output is the VAE).", path, kind="checkpoint")
    prefix = ""
    for p in (km.VAE_PREFIX, "vae."):
        if any(k.startswith(p + "encoder.") for k in shapes):
            prefix = p
            break
    rel = layout(shapes, prefix, str(path), "vae")  # a tensor the layout needs but lacks is a loader error
    ldm = "encoder.down.0.block.0.conv1.weight" in rel
    diff = "encoder.down_blocks.0.resnets.0.conv1.weight" in rel
    if not (ldm or diff):
        raise UnrecognisedArchitecture(f"{path} is not a VAE Chisel recognises (no encoder.down.0.block.0 or "
                                       f"encoder.down_blocks.0.resnets.0 tensors; {len(shapes)} tensors).", path)
    with source as src:
        if ldm:
            full = {km.VAE_PREFIX + k: s for k, s in rel.items()}
            cfg = infer_vae(full, template("sd15", "vae"), metadata_fields(metadata, "chisel.vae", VAE_META), str(path))
            stages.enter(BUILDING["vae"])
            vae = build_checked("vae", build_vae, cfg, path, metadata)
            stages.enter(LOADING["vae"])
            own = [k for k in vae.state_dict()]
            expected = {v: k for k, v in km.vae_key_map(cfg, own).items()}
            missing = sorted(k for k in expected if k not in rel)
            if missing:
                raise IncompleteCheckpoint(f"{path} lacks {len(missing)} VAE tensors ({', '.join(missing[:5])}).",
                                           path, missing={"vae": missing})
            sub = {km.VAE_PREFIX + k: src.get(prefix + k) for k in expected}
            converted = sfu.convert_ldm_vae_checkpoint(sub, cfg)
        else:
            cfg = dict(template("sd15", "vae"))
            levels = _indices(rel, r"encoder\.down_blocks\.(\d+)\.")
            cfg["block_out_channels"] = [int(rel[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0])
                                         for i in levels]
            cfg["down_block_types"] = ["DownEncoderBlock2D"] * len(levels)
            cfg["up_block_types"] = ["UpDecoderBlock2D"] * len(levels)
            cfg["layers_per_block"] = len(_indices(rel, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."))
            cfg["latent_channels"] = int(rel["decoder.conv_in.weight"][1])
            cfg.update(metadata_fields(metadata, "chisel.vae", VAE_META))
            stages.enter(BUILDING["vae"])
            vae = build_checked("vae", build_vae, cfg, path, metadata)
            stages.enter(LOADING["vae"])
            converted = {k: src.get(prefix + k) for k in rel}
            for k, v in list(converted.items()):
                if k.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")) and v.ndim == 4:
                    converted[k] = v[:, :, 0, 0]
        _assign(vae, converted, "vae", path)
    return vae, dict(vae.config)

