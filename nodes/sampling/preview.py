"""Per-step progress with cheap latent->RGB previews: on CUDA copied asynchronously into pinned memory and shown a
step later, so the sampler never waits on the device."""
from __future__ import annotations

import math

import torch

from nodes.memory.handles import ModelHandle

PREVIEW_MAX_STEPS = 10  # about this many previews per run


class Previewer:
    """Per-step progress with a latent->RGB thumbnail every few steps, never blocking on the device."""

    def __init__(self, ctx, model: ModelHandle, total: int, enabled: bool = True):
        self.ctx = ctx
        self.fmt = model.latent_format
        self.total = total
        self.every = max(1, math.ceil(total / PREVIEW_MAX_STEPS))
        self.enabled = enabled and ctx is not None
        self.pending = None  # (pinned uint8 buffer, cuda event)

    def _to_pil(self, arr: torch.Tensor):
        from PIL import Image

        return Image.fromarray(arr.numpy())

    def __call__(self, info: dict) -> None:
        i = int(info["i"])
        preview = None
        if self.enabled:
            preview = self._collect(block=False)
            if i % self.every == 0 or i == self.total - 1:
                rgb = self.fmt.to_rgb(info["denoised"][:1].float())[0]
                if rgb.device.type == "cuda":
                    buf = torch.empty(rgb.shape, dtype=torch.uint8, pin_memory=True)
                    buf.copy_(rgb, non_blocking=True)
                    ev = torch.cuda.Event()
                    ev.record()
                    self.pending = (buf, ev)
                else:
                    preview = self._to_pil(rgb.cpu())
        if self.ctx is not None:
            # a sampler that makes its own steps (dpm_fast) reports its own total
            self.ctx.progress(i + 1, int(info.get("total", self.total)), preview=preview)

    def _collect(self, block: bool):
        if self.pending is None:
            return None
        buf, ev = self.pending
        if not block and not ev.query():
            return None
        ev.synchronize()
        self.pending = None
        return self._to_pil(buf)
