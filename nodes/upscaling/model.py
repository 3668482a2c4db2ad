"""UPSCALE_MODEL: an image-to-image model loaded by spandrel, under the model manager, and upscaling with it.

spandrel detects the architecture (ESRGAN and Real-ESRGAN, SwinIR, HAT, DAT, OmniSR, SPAN, Compact ...) and its
hyperparameters from the tensor names and shapes. Chisel reads the file itself (safetensors; pickles only when
allowed, as plain tensors) and hands spandrel the state dict. spandrel is an optional dependency
(``pip install 'chisel[upscale]'``).

Upscaling runs in tiles (:mod:`nodes.upscaling.tiles`) of ``TILE`` input pixels; when the device runs out of memory
the tile is halved and the image started again, down to ``MIN_TILE``. A model that tiles internally (spandrel says so)
gets the whole image.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nodes.loading.progress import IMPORTING, READING, Report, Stages
from nodes.loading.weights import read_tensors
from nodes.loading.errors import WrongFileKind
from nodes.memory.manager import ManagedModule, ModelManager
from nodes.upscaling.tiles import upscale_tiled

TILE = 512
OVERLAP = 32
MIN_TILE = 64


@dataclass(eq=False)
class UpscaleModel:
    manager: ModelManager
    module: ManagedModule
    scale: int
    source: str
    architecture: str
    call: Callable[[torch.Tensor], torch.Tensor]  # [1 or B, C, h, w] in 0..1 (module's device/dtype) -> upscaled
    input_channels: int = 3
    tiles: bool = True  # False: the model tiles internally (or needs the whole image)
    options: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.source).name

    def __chisel_nbytes__(self) -> dict[str, int]:
        return {}

    def __repr__(self) -> str:
        return f"<UPSCALE_MODEL {self.architecture} x{self.scale} {self.source}>"

    def upscale(self, image: torch.Tensor, tile: int = TILE, overlap: int = OVERLAP,
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """IMAGE [B, H, W, C] in 0..1 -> IMAGE [B, H*scale, W*scale, C'] float32 on the CPU."""
        if image.ndim != 4:
            raise ValueError(f"expected an IMAGE [batch, height, width, channels]; got shape {list(image.shape)}")
        c = self.input_channels
        if image.shape[-1] < c:
            raise ValueError(f"{self.name} takes {c}-channel images; this one has {image.shape[-1]}")
        pixels = image[..., :c].permute(0, 3, 1, 2).float()
        tile = max(pixels.shape[-2:]) if not self.tiles else int(tile)
        with self.manager.use(self.module):
            dev, dt = self.module.device, self.module.dtype

            def run(x: torch.Tensor) -> torch.Tensor:
                return self.call(x.to(dev, dt))

            while True:
                try:
                    with torch.inference_mode():
                        out = upscale_tiled(run, pixels, self.scale, tile, overlap, progress=progress)
                    break
                except torch.OutOfMemoryError:
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                    if tile // 2 < MIN_TILE:
                        raise
                    tile //= 2
        return out.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def _spandrel():
    try:
        import spandrel
    except Exception as exc:  # ImportError, or a torchvision build that does not fit the installed torch
        raise RuntimeError("upscale models need the optional spandrel package (pip install 'chisel[upscale]'); "
                           f"importing it failed: {type(exc).__name__}: {exc}") from exc
    return spandrel


def read_state(path: Path, allow_pickle: bool | None) -> dict[str, torch.Tensor]:
    """All tensors of an upscale-model file (through the one weight-file reader)."""
    return read_tensors(path, allow_pickle)[0]


def _what_else(keys: list[str]) -> str | None:
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "a Stable Diffusion checkpoint (models/checkpoints, Load Checkpoint)"
    if any(k.startswith(("control_model.", "controlnet_cond_embedding.", "input_hint_block.")) for k in keys):
        return "a ControlNet (models/controlnet, Load ControlNet Model)"
    if any(k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k for k in keys):
        return "a LoRA (models/loras, Load LoRA)"
    if any(k.startswith(("encoder.down.", "first_stage_model.")) for k in keys):
        return "a VAE (models/vae, Load VAE)"
    return None


UPSCALE_STAGES = (IMPORTING, READING, "building the upscale model")


def load(manager: ModelManager, path: str | Path, progress: Report | None = None) -> UpscaleModel:
    """The upscale model in a file, loaded once per file identity; ``progress`` (a node's ``ctx.progress``) hears
    each of :data:`UPSCALE_STAGES` start."""
    path = Path(path)

    def factory() -> UpscaleModel:
        stages = Stages(UPSCALE_STAGES, progress)
        stages.enter(IMPORTING)
        spandrel = _spandrel()
        stages.enter(READING)
        state = read_state(path, manager.allow_pickle)
        stages.enter(UPSCALE_STAGES[2])
        other = _what_else(list(state))
        if other:
            raise WrongFileKind(f"{path.name} is {other}, not an upscale model.", path, kind="not_upscale")
        try:
            desc = spandrel.ModelLoader().load_from_state_dict(state)
        except spandrel.UnsupportedModelError:
            raise WrongFileKind(f"{path.name} is not an upscale model architecture spandrel knows ({len(state)} "
                                f"tensors such as {', '.join(list(state)[:3])}).", path, kind="not_upscale")
        if not isinstance(desc, spandrel.ImageModelDescriptor):
            raise WrongFileKind(f"{path.name} is a {desc.architecture.name} model for {desc.purpose}, which needs a "
                                "mask; Upscale Image (using Model) takes image-to-image models.", path,
                                kind="not_upscale")
        dt = torch.float32
        if manager.device.type == "cuda":  # half precision where the architecture supports it
            dt = torch.float16 if desc.supports_half else torch.bfloat16 if desc.supports_bfloat16 else dt
        desc.model.requires_grad_(False).eval()
        mm = manager.register("upscale_model", desc.model, str(path), dt)
        tiles = desc.tiling != spandrel.ModelTiling.INTERNAL
        return UpscaleModel(manager, mm, int(desc.scale), str(path), desc.architecture.name, desc,
                            int(desc.input_channels), tiles)

    return manager.load_once("upscale", path, factory)
