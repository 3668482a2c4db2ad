"""Samplers and sigma schedules for Stable Diffusion, in the k-diffusion (sigma-space) formulation.

Pure torch math, no node or graph code:

- :class:`ModelSampling`: the discrete SD noise schedule (betas -> training sigmas), epsilon / v / x0 prediction,
  optional zero-terminal-SNR rescaling, and the conversions between the sampler's view (x, sigma) and the
  network's (scaled input, timestep, raw output); :class:`nodes.sampling.lcm_sampling.LCMModelSampling`, the same
  read as a Latent Consistency Model on its distilled timestep grid.
- :data:`SCHEDULERS`: ``name -> fn(model_sampling, steps) -> sigmas`` (descending, last 0, float32, CPU).
- :data:`SAMPLERS`: the sampler registry (:mod:`nodes.sampling.registry`), in ComfyUI's order: ``name ->``
  :class:`SamplerSpec`, callable as ``spec(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None)``.
- :func:`calculate_sigmas`: a scheduler applied with img2img ``denoise``.
- :func:`initial_noise`, :func:`step_noise_sampler`: the seeded starting and per-step noise.
"""

from nodes.sampling.model_sampling import (
    ModelSampling,
    make_betas,
    rescale_zero_terminal_snr,
)
from nodes.sampling.noise import (
    BrownianTreeNoiseSampler,
    default_noise_sampler,
    initial_noise,
    make_noise_sampler,
    seeded_noise_sampler,
    step_noise_sampler,
)
from nodes.sampling.registry import (
    SAMPLER_NAMES,
    SAMPLERS,
    STOCHASTIC_SAMPLERS,
    SamplerSpec,
    get_sampler,
)
from nodes.sampling.samplers import get_ancestral_step
from nodes.sampling.schedulers import (
    SCHEDULER_NAMES,
    SCHEDULERS,
    calculate_sigmas,
    get_sigmas_exponential,
    get_sigmas_karras,
)

__all__ = [
    "ModelSampling",
    "make_betas",
    "rescale_zero_terminal_snr",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "SamplerSpec",
    "get_sampler",
    "STOCHASTIC_SAMPLERS",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "calculate_sigmas",
    "get_sigmas_karras",
    "get_sigmas_exponential",
    "get_ancestral_step",
    "initial_noise",
    "make_noise_sampler",
    "seeded_noise_sampler",
    "step_noise_sampler",
    "BrownianTreeNoiseSampler",
    "default_noise_sampler",
]
