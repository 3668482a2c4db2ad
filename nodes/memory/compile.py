"""Compiled model calls on CUDA: ``torch.compile`` of the UNet and of the VAE's decoder and encoder, optionally with
CUDA graphs.

Modes (``--compile`` on ``chisel run`` and ``chisel serve``):

- ``off``: eager PyTorch (the default on the CPU, where compiling costs minutes and runs slower);
- ``on``: ``torch.compile`` with inductor's default mode, channels-last weights (the default on CUDA);
- ``max``: ``mode="reduce-overhead"``: the same, replayed through CUDA graphs (least launch overhead; uses a few
  hundred MB more device memory).

Correctness never depends on the compiled path: every call is guarded by dynamo (a new batch size, image size,
number of conditionings or dtype re-specialises; past ``torch._dynamo``'s recompile limit it runs eager), LoRA
patches change weights in place so a compiled graph reads them as it would eagerly, a module whose weights are
streamed (low-VRAM), hooked by a module patch or stored in fp8 is never compiled, and any failure to compile turns
the module back to eager for good, with one warning (running out of memory is not a compile failure: it reaches
the caller, e.g. the VAE's fall-back to tiles). The VAE's decoder and encoder are compiled for whole images (its
parts ``vae_decode`` and ``vae_encode``, :data:`PARTS`); tiled decoding and encoding run eagerly (each tile size
would be a new specialisation). Compiled artifacts persist in ``<root>/.cache/torch-compile`` (PyTorch's own FX-graph and
AOT-autograd caches, keyed by graph, shapes, device and torch version), so a restart reuses them.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("chisel.compile")

MODES = ("auto", "off", "on", "max")


def resolve_mode(mode: str | None, device: torch.device) -> str:
    """``auto`` (or None) is ``on`` on CUDA and ``off`` elsewhere; compiling is for CUDA only."""
    mode = mode or "auto"
    if mode not in MODES:
        raise ValueError(f"compile mode {mode!r} is not one of {', '.join(MODES)}")
    if device.type != "cuda":
        return "off"
    return "on" if mode == "auto" else mode


def use_persistent_cache(folder: Path) -> None:
    """Have PyTorch keep its compile artifacts in ``folder`` across processes (unless the user chose a folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


class VaeDecode(torch.nn.Module):
    """A diffusers VAE's decode path as a module: latents -> decoded image tensor (what ``vae.decode(z).sample``
    gives)."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample


class VaeEncode(torch.nn.Module):
    """A diffusers VAE's encode path as a module: images in -1..1 -> the latent distribution's mean (what
    ``vae.encode(x).latent_dist.mean`` gives)."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mean


# pieces of a managed module that can be called (and compiled) on their own: name -> module factory
PARTS = {"vae_decode": VaeDecode, "vae_encode": VaeEncode}


class CompiledModule:
    """Calls ``module`` through ``torch.compile``; eager for good after the first failure to compile."""

    def __init__(self, module: torch.nn.Module, mode: str, backend: Any = "inductor"):
        self.module = module
        self.mode = mode
        self.failed = False
        options: dict[str, Any] = {"backend": backend, "dynamic": False}
        if backend == "inductor":
            options["mode"] = "reduce-overhead" if mode == "max" else None
        self._compiled = torch.compile(module, **options)

    def __call__(self, *args, **kwargs):
        if self.failed:
            return self.module(*args, **kwargs)
        try:
            if self.mode == "max":
                torch.compiler.cudagraph_mark_step_begin()  # the previous replay's outputs are consumed
            out = self._compiled(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise  # not a compile failure: the caller may retry smaller (tiles), compiled next time
        except Exception as exc:  # noqa: BLE001 - a compiler failure must never fail the prompt
            log.warning("compiling %s failed, running it eagerly from now on: %s: %s",
                        type(self.module).__name__, type(exc).__name__, exc)
            self.failed = True
            return self.module(*args, **kwargs)
        if self.mode == "max":  # CUDA-graph outputs live in memory the next replay overwrites
            out = tuple(o.clone() if isinstance(o, torch.Tensor) else o for o in out) if isinstance(out, tuple) \
                else out.clone()
        return out


def prepare_for_compile(module: torch.nn.Module) -> None:
    """Channels-last weights: what convolutions want on tensor cores."""
    module.to(memory_format=torch.channels_last)
