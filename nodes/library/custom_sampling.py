"""Custom sampling (ComfyUI's sampling/custom_sampling): KSampler taken apart into its pieces, wired by links.

SIGMAS (a 1-D float32 CPU tensor of descending noise levels) come from the scheduler nodes and the sigma tools;
SAMPLER (a registered sampler with its options, :class:`nodes.sampling.registry.SamplerSpec`) from KSamplerSelect
and the sampler nodes; NOISE (the starting noise and the per-step seed) from RandomNoise / DisableNoise; GUIDER (how
conditionings combine, :class:`nodes.sampling.guidance.Guider`) from the guider nodes. SamplerCustom and
SamplerCustomAdvanced run them. KSampler(seed, steps, cfg, sampler, scheduler, denoise) is SamplerCustomAdvanced with
RandomNoise(seed), CFGGuider(cfg), KSamplerSelect(sampler) and BasicScheduler(scheduler, steps, denoise) (except the
samplers whose KSampler schedule drops the penultimate sigma: BasicScheduler never does).
"""
from __future__ import annotations

import torch

from graph.node import Input, Node, Output
from graph.types import BOOLEAN, COMBO, CONDITIONING, FLOAT, INT, LATENT, MAX_SEED, MODEL
from nodes.library.sampling import SCHEDULER_CHOICES
from nodes.sampling import SAMPLER_NAMES, SAMPLERS, calculate_sigmas, get_sigmas_exponential, get_sigmas_karras
from nodes.sampling.guidance import Guider
from nodes.sampling.sample import NoNoise, SeededNoise, sample_custom
from nodes.sampling.schedulers import beta_scheduler, get_sigmas_polyexponential, sd_turbo_sigmas

SIGMAS = "SIGMAS"
SAMPLER = "SAMPLER"
NOISE = "NOISE"
GUIDER = "GUIDER"

_CATEGORY = "sampling/custom_sampling"
# SD1.x's sigma range, ComfyUI's defaults for the model-free schedulers
_SIGMA_MAX, _SIGMA_MIN = 14.614642, 0.0291675


def _sigma_inputs():
    return (
        Input("sigma_max", FLOAT, default=_SIGMA_MAX, min=0.0, max=5000.0, step=0.01),
        Input("sigma_min", FLOAT, default=_SIGMA_MIN, min=0.0, max=5000.0, step=0.01),
    )


def _check_sigmas(sigmas, what: str = "sigmas") -> torch.Tensor:
    s = torch.as_tensor(sigmas, dtype=torch.float32).flatten().cpu()
    if not torch.isfinite(s).all():
        raise ValueError(f"the {what} hold a non-finite value")
    return s


def _check_range(sigma_max: float, sigma_min: float) -> None:
    if not sigma_min > 0 or not sigma_max >= sigma_min:
        raise ValueError(f"sigma_min must be > 0 and at most sigma_max (got sigma_min={sigma_min}, "
                         f"sigma_max={sigma_max})")


# -- samplers -------------------------------------------------------------------------------------------------------


class KSamplerSelect(Node):
    type = "KSamplerSelect"
    display_name = "KSamplerSelect"
    category = _CATEGORY + "/samplers"
    description = "A sampler by name (KSampler's list), with its default options."
    inputs = (Input("sampler_name", COMBO, default="euler", choices=SAMPLER_NAMES),)
    outputs = (Output("SAMPLER", SAMPLER),)

    def run(self, ctx, sampler_name):
        return (SAMPLERS[sampler_name],)


class SamplerEulerAncestral(Node):
    type = "SamplerEulerAncestral"
    display_name = "SamplerEulerAncestral"
    category = _CATEGORY + "/samplers"
    description = "Euler ancestral: eta scales the fresh noise of each step (0 = plain Euler), s_noise its size."
    inputs = (
        Input("eta", FLOAT, default=1.0, min=0.0, max=100.0, step=0.01),
        Input("s_noise", FLOAT, default=1.0, min=0.0, max=100.0, step=0.01),
    )
    outputs = (Output("SAMPLER", SAMPLER),)

    def run(self, ctx, eta, s_noise):
        return (SAMPLERS["euler_ancestral"].with_options(eta=eta, s_noise=s_noise),)


class SamplerDPMPP_SDE(Node):
    type = "SamplerDPMPP_SDE"
    display_name = "SamplerDPMPP_SDE"
    category = _CATEGORY + "/samplers"
    description = ("DPM-Solver++ SDE (single step, second order at the intermediate point r): Brownian-tree noise, "
                   "built on the GPU (the latent's device) or on the CPU.")
    inputs = (
        Input("eta", FLOAT, default=1.0, min=0.0, max=100.0, step=0.01),
        Input("s_noise", FLOAT, default=1.0, min=0.0, max=100.0, step=0.01),
        Input("r", FLOAT, default=0.5, min=0.0, max=100.0, step=0.01),
        Input("noise_device", COMBO, default="gpu", choices=("gpu", "cpu")),
    )
    outputs = (Output("SAMPLER", SAMPLER),)

    def run(self, ctx, eta, s_noise, r, noise_device):
        if r <= 0:
            raise ValueError("r must be > 0 (the intermediate point of the step, as a fraction of it)")
        name = "dpmpp_sde_gpu" if noise_device == "gpu" else "dpmpp_sde"
        return (SAMPLERS[name].with_options(eta=eta, s_noise=s_noise, r=r),)


class SamplerDPMPP_2M_SDE(Node):
    type = "SamplerDPMPP_2M_SDE"
    display_name = "SamplerDPMPP_2M_SDE"
    category = _CATEGORY + "/samplers"
    description = "DPM-Solver++(2M) SDE with the midpoint or heun second-order weighting; Brownian-tree noise."
    inputs = (
        Input("solver_type", COMBO, default="midpoint", choices=("midpoint", "heun")),
        Input("eta", FLOAT, default=1.0, min=0.0, max=100.0, step=0.01),
        Input("s_noise", FLOAT, default=1.0, min=0.0, max=100.0, step=0.01),
        Input("noise_device", COMBO, default="gpu", choices=("gpu", "cpu")),
    )
    outputs = (Output("SAMPLER", SAMPLER),)

    def run(self, ctx, solver_type, eta, s_noise, noise_device):
        name = "dpmpp_2m_sde_gpu" if noise_device == "gpu" else "dpmpp_2m_sde"
        return (SAMPLERS[name].with_options(eta=eta, s_noise=s_noise, solver_type=solver_type),)


class SamplerLMS(Node):
    type = "SamplerLMS"
    display_name = "SamplerLMS"
    category = _CATEGORY + "/samplers"
    description = "Linear multistep over the last `order` steps."
    inputs = (Input("order", INT, default=4, min=1, max=100),)
    outputs = (Output("SAMPLER", SAMPLER),)

    def run(self, ctx, order):
        return (SAMPLERS["lms"].with_options(order=order),)


# -- schedulers -----------------------------------------------------------------------------------------------------


class BasicScheduler(Node):
    type = "BasicScheduler"
    display_name = "BasicScheduler"
    category = _CATEGORY + "/schedulers"
    description = ("KSampler's schedules for a model: `steps` steps; denoise < 1 takes the last steps of a longer "
                   "schedule (img2img).")
    inputs = (
        Input("model", MODEL),
        Input("scheduler", COMBO, default="simple", choices=SCHEDULER_CHOICES),
        Input("steps", INT, default=20, min=1, max=10000),
        Input("denoise", FLOAT, default=1.0, min=0.0, max=1.0, step=0.01),
    )
    outputs = (Output("SIGMAS", SIGMAS),)

    def run(self, ctx, model, scheduler, steps, denoise):
        return (calculate_sigmas(model.model_sampling, scheduler, steps, denoise),)


class KarrasScheduler(Node):
    type = "KarrasScheduler"
    display_name = "KarrasScheduler"
    category = _CATEGORY + "/schedulers"
    description = "Karras et al. (2022): sigma_max^(1/rho) to sigma_min^(1/rho) in even steps, to the power rho."
    inputs = (
        Input("steps", INT, default=20, min=1, max=10000),
        *_sigma_inputs(),
        Input("rho", FLOAT, default=7.0, min=0.0, max=100.0, step=0.01),
    )
    outputs = (Output("SIGMAS", SIGMAS),)

    def run(self, ctx, steps, sigma_max, sigma_min, rho):
        _check_range(sigma_max, sigma_min)
        if rho <= 0:
            raise ValueError("rho must be > 0")
        return (get_sigmas_karras(steps, sigma_min, sigma_max, rho),)


class ExponentialScheduler(Node):
    type = "ExponentialScheduler"
    display_name = "ExponentialScheduler"
    category = _CATEGORY + "/schedulers"
    description = "Sigmas evenly spaced in log sigma from sigma_max to sigma_min."
    inputs = (Input("steps", INT, default=20, min=1, max=10000), *_sigma_inputs())
    outputs = (Output("SIGMAS", SIGMAS),)

    def run(self, ctx, steps, sigma_max, sigma_min):
        _check_range(sigma_max, sigma_min)
        return (get_sigmas_exponential(steps, sigma_min, sigma_max),)


class PolyexponentialScheduler(Node):
    type = "PolyexponentialScheduler"
    display_name = "PolyexponentialScheduler"
    category = _CATEGORY + "/schedulers"
    description = "log sigma a polynomial of degree rho in the step (rho = 1: exponential)."
    inputs = (
        Input("steps", INT, default=20, min=1, max=10000),
        *_sigma_inputs(),
        Input("rho", FLOAT, default=1.0, min=0.0, max=100.0, step=0.01),
    )
    outputs = (Output("SIGMAS", SIGMAS),)

    def run(self, ctx, steps, sigma_max, sigma_min, rho):
        _check_range(sigma_max, sigma_min)
        return (get_sigmas_polyexponential(steps, sigma_min, sigma_max, rho),)


class SDTurboScheduler(Node):
    type = "SDTurboScheduler"
    display_name = "SDTurboScheduler"
    category = _CATEGORY + "/schedulers"
    description = ("SD-Turbo / SDXL-Turbo's schedule: timesteps 999, 899, ... 99; 1 to 10 steps; denoise < 1 starts "
                   "further down.")
    inputs = (
        Input("model", MODEL),
        Input("steps", INT, default=1, min=1, max=10),
        Input("denoise", FLOAT, default=1.0, min=0, max=1.0, step=0.01),
    )
    outputs = (Output("SIGMAS", SIGMAS),)

    def run(self, ctx, model, steps, denoise):
        return (sd_turbo_sigmas(model.model_sampling, steps, denoise),)


class BetaSamplingScheduler(Node):
    type = "BetaSamplingScheduler"
    display_name = "BetaSamplingScheduler"
    category = _CATEGORY + "/schedulers"
    description = "Timesteps at the quantiles of a Beta(alpha, beta) distribution (Lee et al. 2024)."
    inputs = (
        Input("model", MODEL),
        Input("steps", INT, default=20, min=1, max=10000),
        Input("alpha", FLOAT, default=0.6, min=0.0, max=50.0, step=0.01),
        Input("beta", FLOAT, default=0.6, min=0.0, max=50.0, step=0.01),
    )
    outputs = (Output("SIGMAS", SIGMAS),)

    def run(self, ctx, model, steps, alpha, beta):
        if alpha <= 0 or beta <= 0:
            raise ValueError("alpha and beta must be > 0")
        return (beta_scheduler(model.model_sampling, steps, alpha, beta),)


# -- sigma tools ----------------------------------------------------------------------------------------------------


class SplitSigmas(Node):
    type = "SplitSigmas"
    display_name = "SplitSigmas"
    category = _CATEGORY + "/sigmas"
    description = "Split a schedule at a step: high = sigmas 0..step, low = step..end (they share sigma[step])."
    inputs = (Input("sigmas", SIGMAS), Input("step", INT, default=0, min=0, max=10000))
    outputs = (Output("high_sigmas", SIGMAS), Output("low_sigmas", SIGMAS))

    def run(self, ctx, sigmas, step):
        s = _check_sigmas(sigmas)
        return (s[:step + 1], s[step:])


class SplitSigmasDenoise(Node):
    type = "SplitSigmasDenoise"
    display_name = "SplitSigmasDenoise"
    category = _CATEGORY + "/sigmas"
    description = ("Split a schedule so that low_sigmas holds the last round(steps * denoise) steps and high_sigmas "
                   "the rest (they share the boundary sigma).")
    inputs = (Input("sigmas", SIGMAS), Input("denoise", FLOAT, default=1.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output("high_sigmas", SIGMAS), Output("low_sigmas", SIGMAS))

    def run(self, ctx, sigmas, denoise):
        s = _check_sigmas(sigmas)
        steps = max(len(s) - 1, 0)
        low = round(steps * denoise)
        return (s[:len(s) - low], s[-(low + 1):])


class FlipSigmas(Node):
    type = "FlipSigmas"
    display_name = "FlipSigmas"
    category = _CATEGORY + "/sigmas"
    description = "Reverse a schedule (ascending noise, for inversion); a leading 0 becomes 0.0001."
    inputs = (Input("sigmas", SIGMAS),)
    outputs = (Output("SIGMAS", SIGMAS),)

    def run(self, ctx, sigmas):
        s = _check_sigmas(sigmas).flip(0).clone()
        if len(s) and s[0] == 0:
            s[0] = 0.0001
        return (s,)


# -- noise ----------------------------------------------------------------------------------------------------------


class RandomNoise(Node):
    type = "RandomNoise"
    display_name = "RandomNoise"
    category = _CATEGORY + "/noise"
    description = "Seeded starting noise (KSampler's); the seed also seeds the samplers' per-step noise."
    inputs = (Input("noise_seed", INT, default=0, min=0, max=MAX_SEED, seed=True,
                    tooltip="The noise seed; -1 picks one at random (recorded with the outputs)."),)
    outputs = (Output("NOISE", NOISE),)

    def run(self, ctx, noise_seed):
        return (SeededNoise(noise_seed),)


class DisableNoise(Node):
    type = "DisableNoise"
    display_name = "DisableNoise"
    category = _CATEGORY + "/noise"
    description = "No starting noise: the latent already holds it (a hand-off between samplers)."
    inputs = ()
    outputs = (Output("NOISE", NOISE),)

    def run(self, ctx):
        return (NoNoise(),)


# -- guiders --------------------------------------------------------------------------------------------------------


class BasicGuider(Node):
    type = "BasicGuider"
    display_name = "BasicGuider"
    category = _CATEGORY + "/guiders"
    description = "One conditioning, no classifier-free guidance (guidance-distilled models, CFG 1)."
    inputs = (Input("model", MODEL), Input("conditioning", CONDITIONING))
    outputs = (Output("GUIDER", GUIDER),)

    def run(self, ctx, model, conditioning):
        return (Guider.basic(model, conditioning),)


class CFGGuider(Node):
    type = "CFGGuider"
    display_name = "CFGGuider"
    category = _CATEGORY + "/guiders"
    description = "Classifier-free guidance, as KSampler: negative + cfg * (positive - negative)."
    inputs = (
        Input("model", MODEL),
        Input("positive", CONDITIONING),
        Input("negative", CONDITIONING),
        Input("cfg", FLOAT, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
    )
    outputs = (Output("GUIDER", GUIDER),)

    def run(self, ctx, model, positive, negative, cfg):
        return (Guider.cfg(model, positive, negative, cfg),)


class DualCFGGuider(Node):
    type = "DualCFGGuider"
    display_name = "DualCFGGuider"
    category = _CATEGORY + "/guiders"
    description = ("Two conditionings and a negative. regular: neg + cfg_cond2_negative (cond2 - neg) + cfg_conds "
                   "(cond1 - cond2); nested: neg + cfg_cond2_negative (cond2 + cfg_conds (cond1 - cond2) - neg).")
    inputs = (
        Input("model", MODEL),
        Input("cond1", CONDITIONING),
        Input("cond2", CONDITIONING),
        Input("negative", CONDITIONING),
        Input("cfg_conds", FLOAT, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        Input("cfg_cond2_negative", FLOAT, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        Input("style", COMBO, default="regular", choices=("regular", "nested")),
    )
    outputs = (Output("GUIDER", GUIDER),)

    def run(self, ctx, model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative, style):
        return (Guider.dual(model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative, style == "nested"),)


# -- the samplers ---------------------------------------------------------------------------------------------------


class SamplerCustom(Node):
    type = "SamplerCustom"
    display_name = "SamplerCustom"
    category = _CATEGORY
    description = ("Sample with a SAMPLER over given SIGMAS and classifier-free guidance. Outputs the result and the "
                   "last step's denoised prediction.")
    inputs = (
        Input("model", MODEL),
        Input("add_noise", BOOLEAN, default=True),
        Input("noise_seed", INT, default=0, min=0, max=MAX_SEED, seed=True,
              tooltip="The noise seed; -1 picks one at random (recorded with the outputs)."),
        Input("cfg", FLOAT, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        Input("positive", CONDITIONING),
        Input("negative", CONDITIONING),
        Input("sampler", SAMPLER),
        Input("sigmas", SIGMAS),
        Input("latent_image", LATENT),
    )
    outputs = (Output("output", LATENT), Output("denoised_output", LATENT))

    def run(self, ctx, model, add_noise, noise_seed, cfg, positive, negative, sampler, sigmas, latent_image):
        noise = (SeededNoise(noise_seed) if add_noise else NoNoise()).generate(latent_image)
        return sample_custom(Guider.cfg(model, positive, negative, cfg), sampler, _check_sigmas(sigmas),
                             latent_image, noise, noise_seed, ctx)


class SamplerCustomAdvanced(Node):
    type = "SamplerCustomAdvanced"
    display_name = "SamplerCustomAdvanced"
    category = _CATEGORY
    description = ("Sample with a NOISE, a GUIDER, a SAMPLER and SIGMAS. Outputs the result and the last step's "
                   "denoised prediction.")
    inputs = (
        Input("noise", NOISE),
        Input("guider", GUIDER),
        Input("sampler", SAMPLER),
        Input("sigmas", SIGMAS),
        Input("latent_image", LATENT),
    )
    outputs = (Output("output", LATENT), Output("denoised_output", LATENT))

    def run(self, ctx, noise, guider, sampler, sigmas, latent_image):
        return sample_custom(guider, sampler, _check_sigmas(sigmas), latent_image, noise.generate(latent_image),
                             noise.seed, ctx)
