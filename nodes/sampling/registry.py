"""The one sampler registry: every sampler KSampler offers, in ComfyUI's order, with what each needs.

A :class:`SamplerSpec` names a sampling function of :mod:`nodes.sampling.samplers`, the options it runs with, the
per-step noise it draws (the noise contract in the README) and whether KSampler computes its schedule one step
longer and drops the penultimate sigma. KSampler's choices, ``KSamplerSelect``'s choices and the stochastic flag all
come from :data:`SAMPLERS`; adding a sampler is one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Callable, Mapping

import nodes.sampling.samplers as fn

__all__ = ["SamplerSpec", "SAMPLERS", "SAMPLER_NAMES", "STOCHASTIC_SAMPLERS", "NOISE_KINDS", "get_sampler"]

# How a sampler's per-step noise is drawn (see nodes.sampling.noise.step_noise_sampler):
#   "none"            - deterministic, draws nothing;
#   "seeded"          - torch.randn from a generator seeded with the run's seed, on the latent's device;
#   "brownian"        - a Brownian tree (torchsde) seeded with the seed, built on the CPU;
#   "brownian_device" - the same tree built on the latent's device (ComfyUI's "_gpu" variants).
NOISE_KINDS = ("none", "seeded", "brownian", "brownian_device")


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: ``spec(model, x, sigmas, **kw)`` runs its function with its options (kw wins)."""

    name: str
    function: Callable = field(repr=False)
    options: Mapping = field(default_factory=lambda: MappingProxyType({}))
    noise: str = "none"
    discard_penultimate_sigma: bool = False  # KSampler: steps + 1 sigmas, the penultimate dropped
    # ComfyUI's ddim re-noises the kept (unmasked) area of an inpainting run with noise of seed + 1, not the
    # starting noise; None for every other sampler.
    inpaint_noise_seed_offset: int | None = None
    # CFG++ samplers re-noise with the unconditional prediction: the guider then always runs the negative pass
    # (also at cfg 1) and the denoiser exposes ``denoise_with_uncond``
    needs_uncond: bool = False

    def __post_init__(self):
        if self.noise not in NOISE_KINDS:
            raise ValueError(f"sampler {self.name!r}: noise must be one of {NOISE_KINDS}, got {self.noise!r}")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @property
    def stochastic(self) -> bool:
        return self.noise != "none" and self.options.get("eta", 1.0) != 0.0

    def with_options(self, **options) -> "SamplerSpec":
        """The same sampler with some options changed (the custom-sampling sampler nodes)."""
        return replace(self, options={**self.options, **options})

    def __call__(self, model, x, sigmas, **kwargs):
        return self.function(model, x, sigmas, **{**self.options, **kwargs})


def _spec(name, function, noise="none", **kw) -> SamplerSpec:
    return SamplerSpec(name, function, noise=noise, **kw)


def _cfg_pp(name, function, noise="none", options=None) -> SamplerSpec:
    """A CFG++ variant (Chung et al. 2024): the sampler's ``cfg_pp`` option, with the unconditional pass."""
    return SamplerSpec(name, function, noise=noise, options={**(options or {}), "cfg_pp": True}, needs_uncond=True)


# ComfyUI's KSampler names, in ComfyUI's order, for the samplers Chisel implements.
_ENTRIES = (
    _spec("euler", fn.sample_euler),
    _cfg_pp("euler_cfg_pp", fn.sample_euler),
    _spec("euler_ancestral", fn.sample_euler_ancestral, "seeded"),
    _cfg_pp("euler_ancestral_cfg_pp", fn.sample_euler_ancestral, "seeded"),
    _spec("heun", fn.sample_heun),
    _spec("dpm_2", fn.sample_dpm_2, discard_penultimate_sigma=True),
    _spec("dpm_2_ancestral", fn.sample_dpm_2_ancestral, "seeded", discard_penultimate_sigma=True),
    _spec("lms", fn.sample_lms),
    _spec("dpm_fast", fn.sample_dpm_fast),
    _spec("dpm_adaptive", fn.sample_dpm_adaptive),
    _spec("dpmpp_2s_ancestral", fn.sample_dpmpp_2s_ancestral, "seeded"),
    _cfg_pp("dpmpp_2s_ancestral_cfg_pp", fn.sample_dpmpp_2s_ancestral, "seeded"),
    _spec("dpmpp_sde", fn.sample_dpmpp_sde, "brownian"),
    _spec("dpmpp_sde_gpu", fn.sample_dpmpp_sde, "brownian_device"),
    _spec("dpmpp_2m", fn.sample_dpmpp_2m),
    _cfg_pp("dpmpp_2m_cfg_pp", fn.sample_dpmpp_2m),
    _spec("dpmpp_2m_sde", fn.sample_dpmpp_2m_sde, "brownian"),
    _spec("dpmpp_2m_sde_gpu", fn.sample_dpmpp_2m_sde, "brownian_device"),
    _spec("dpmpp_2m_sde_heun", fn.sample_dpmpp_2m_sde, "brownian", options={"solver_type": "heun"}),
    _spec("dpmpp_2m_sde_heun_gpu", fn.sample_dpmpp_2m_sde, "brownian_device", options={"solver_type": "heun"}),
    _spec("dpmpp_3m_sde", fn.sample_dpmpp_3m_sde, "brownian"),
    _spec("dpmpp_3m_sde_gpu", fn.sample_dpmpp_3m_sde, "brownian_device"),
    _spec("ddpm", fn.sample_ddpm, "seeded"),
    _spec("lcm", fn.sample_lcm, "seeded"),
    _spec("ipndm", fn.sample_ipndm),
    _spec("ipndm_v", fn.sample_ipndm_v),
    _spec("deis", fn.sample_deis),
    _spec("res_multistep", fn.sample_res_multistep),
    _cfg_pp("res_multistep_cfg_pp", fn.sample_res_multistep),
    _spec("res_multistep_ancestral", fn.sample_res_multistep, "seeded", options={"eta": 1.0}),
    _cfg_pp("res_multistep_ancestral_cfg_pp", fn.sample_res_multistep, "seeded", options={"eta": 1.0}),
    _spec("gradient_estimation", fn.sample_gradient_estimation),
    _cfg_pp("gradient_estimation_cfg_pp", fn.sample_gradient_estimation),
    _spec("er_sde", fn.sample_er_sde, "seeded"),
    _spec("seeds_2", fn.sample_seeds_2, "brownian"),
    _spec("seeds_3", fn.sample_seeds_3, "brownian"),
    _spec("sa_solver", fn.sample_sa_solver, "seeded"),
    _spec("sa_solver_pece", fn.sample_sa_solver, "seeded", options={"use_pece": True}),
    # DDIM (eta = 0) in sigma space is exactly Euler's step, which is what ComfyUI runs for it
    _spec("ddim", fn.sample_euler, inpaint_noise_seed_offset=1),
    _spec("uni_pc", fn.sample_uni_pc, discard_penultimate_sigma=True),
    _spec("uni_pc_bh2", fn.sample_uni_pc, options={"variant": "bh2"}, discard_penultimate_sigma=True),
)

SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in _ENTRIES}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
STOCHASTIC_SAMPLERS = frozenset(name for name, s in SAMPLERS.items() if s.stochastic)


def get_sampler(sampler) -> SamplerSpec:
    """A spec by name (or the spec itself); an unknown name is a ValueError listing the choices."""
    if isinstance(sampler, SamplerSpec):
        return sampler
    try:
        return SAMPLERS[sampler]
    except KeyError:
        raise ValueError(f"sampler {sampler!r} is not available in Chisel; available: "
                         f"{', '.join(SAMPLER_NAMES)}") from None
