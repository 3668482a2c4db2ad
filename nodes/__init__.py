"""Chisel's node library and the Stable Diffusion machinery behind it.

- :mod:`nodes.library`: node declarations only, one module per ComfyUI category (registered through the
  ``chisel.nodes`` entry point).
- :mod:`nodes.loading`: weight files, family detection, configs, key maps, checkpoint and VAE loading.
- :mod:`nodes.memory`: the model manager (device placement by byte budget) and the MODEL/CLIP/VAE handles.
- :mod:`nodes.text`: tokenizing prompts, emphasis, textual-inversion embeddings.
- :mod:`nodes.patches`: weight patches applied only while a patched model runs (LoRA).
- :mod:`nodes.sampling`: schedules, samplers, noise, guidance, previews, and ``sample()`` that ties them together.
- :mod:`nodes.imaging`: image files, resizing, masks.
- :mod:`nodes.testing`: tiny models, checkpoint export and analytic denoisers for tests and scripts (never
  registered as nodes).
- :mod:`nodes.services`: what the executor hands every node as ``ctx.services``.

Chisel never talks to the Hugging Face hub: the environment is set offline here, before diffusers/transformers are
imported by any node module.
"""
import os as _os

_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_os.environ.setdefault("DISABLE_TELEMETRY", "1")
