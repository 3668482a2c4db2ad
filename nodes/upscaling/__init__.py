"""Upscale models (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT ... through spandrel): loading them (:mod:`.model`) and
running them tile by tile within a memory budget (:mod:`.tiles`)."""
