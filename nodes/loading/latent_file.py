"""LATENT files in ComfyUI's ``.latent`` layout: a safetensors file holding ``latent_tensor`` (the VAE's latents,
[B, C, h, w]) and an empty ``latent_format_version_0`` marker; files without the marker come from older ComfyUI
versions, which stored latents multiplied by SD's 0.18215. The workflow and prompt travel as metadata, as in PNGs.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from graph.atomic_files import write_atomically
from nodes.loading.errors import CorruptCheckpoint
from nodes.loading.weights import WeightFile

LATENT_EXTENSIONS = (".latent",)
TENSOR_KEY = "latent_tensor"
VERSION_KEY = "latent_format_version_0"
OLD_FORMAT_SCALE = 0.18215


def read_latent(path: str | Path) -> dict[str, torch.Tensor]:
    """A LATENT (``{"samples": ...}``) from a ``.latent`` file; a file that is not one says so."""
    path = Path(path)
    with WeightFile(path, allow_pickle=False) as wf:
        if wf.kind != "safetensors" or TENSOR_KEY not in wf.shapes:
            raise CorruptCheckpoint(f"{path} is not a .latent file: it has no {TENSOR_KEY!r} tensor "
                                    f"(tensors: {', '.join(sorted(wf.shapes)[:5]) or 'none'}).", path)
        samples = wf.get(TENSOR_KEY).float()
        old = VERSION_KEY not in wf.shapes
    if samples.ndim != 4:
        raise CorruptCheckpoint(f"{path}: {TENSOR_KEY} has shape {list(samples.shape)}, not [batch, channels, "
                                "height, width].", path)
    return {"samples": samples / OLD_FORMAT_SCALE if old else samples}


def write_latent(latent: dict, folder: Path, prefix: str, ctx: Any = None) -> dict[str, str]:
    """Write ``latent`` as ``<prefix>_00001_.latent`` (the next free number) inside ``folder``; returns the
    ``{filename, subfolder, type}`` entry for the UI. The file appears under its name only when complete."""
    from safetensors.torch import save

    from nodes.imaging.files import run_metadata

    base = folder.resolve()
    sub, _, name = (prefix or "latents/ComfyUI").replace("\\", "/").rpartition("/")
    target = (base / sub).resolve() if sub else base
    if target != base and base not in target.parents:
        raise ValueError(f"filename_prefix {prefix!r} points outside the output folder")
    name = name or "ComfyUI"
    target.mkdir(parents=True, exist_ok=True)
    data = save({TENSOR_KEY: latent["samples"].detach().float().cpu().contiguous(),
                 VERSION_KEY: torch.tensor([])}, metadata=run_metadata(ctx))
    pattern = re.compile(re.escape(name) + r"_(\d+)_?\.latent$")
    counter = 1 + max((int(m.group(1)) for f in os.listdir(target) if (m := pattern.match(f))), default=0)
    while True:
        fname = f"{name}_{counter:05}_.latent"
        try:
            write_atomically(target / fname, lambda tmp: tmp.write_bytes(data))  # fails if the name is taken
            break
        except FileExistsError:
            counter += 1
    return {"filename": fname, "subfolder": target.relative_to(base).as_posix() if target != base else "",
            "type": "output"}
