"""Checkpoint loading, export and model memory for Stable Diffusion (SD1.x, SD2.x, SDXL base/refiner, inpainting).

Public API:
- :func:`nodes.models.loader.load_checkpoint` (single-file LDM/SGM ``.safetensors`` or a diffusers folder) ->
  :class:`nodes.models.loader.LoadedCheckpoint` with a :class:`nodes.models.loader.LoadReport`.
- :func:`nodes.models.export.write_sd1_checkpoint` and friends: diffusers/transformers modules -> a single file in
  the real key layout.
- :mod:`nodes.models.detect` (family from keys/shapes), :mod:`nodes.models.configs` (configs from shapes + metadata),
  :mod:`nodes.models.tiny` (tiny random models of each family), :mod:`nodes.models.errors`.

Chisel never talks to the Hugging Face hub: the environment is set offline here, before diffusers/transformers are
imported by any node module.
"""
import os as _os

_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_os.environ.setdefault("DISABLE_TELEMETRY", "1")
