"""Sampling a LATENT with a MODEL: the schedule, the starting noise and the per-step noise (the README's noise and
schedule contract, ComfyUI's), LoRA patches for the run, the guided denoiser (:mod:`nodes.sampling.guidance`), the
sampler (:mod:`nodes.sampling.registry`), progress (:mod:`nodes.sampling.preview`).

:func:`sample` is KSampler's path; :func:`sample_custom` the custom-sampling nodes' (given sigmas, sampler, guider
and noise). Sigmas stay Python floats on the host: samplers read them once, so the per-step path never reads a
device tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nodes.patches.lora import patched
from nodes.sampling.guidance import Guider
from nodes.sampling.noise import initial_noise, step_noise_sampler
from nodes.sampling.preview import Previewer
from nodes.sampling.registry import SamplerSpec, get_sampler
from nodes.sampling.schedulers import calculate_sigmas

_SEED_MOD = 1 << 64


def prepare_noise(latent: dict, seed: int) -> torch.Tensor:
    """The starting noise of a LATENT (ComfyUI's rule): float32 on the CPU from a generator seeded with ``seed``.

    Without ``batch_index`` the whole batch is one draw. With it (an entry picked by LatentFromBatch), one draw of
    one entry's shape is made per index 0 .. max(batch_index) and each entry gets the draw of its index. One draw
    per entry equals the whole batch's draw only when an entry has a multiple of 16 values (4·h·w for SD latents):
    torch fills larger tensors in blocks of 16, so elsewhere a picked entry's noise is not its slice of the batch's.
    """
    samples = latent["samples"]
    idx = latent.get("batch_index")
    if idx is None:
        return initial_noise(samples.shape, seed)
    gen = torch.Generator("cpu").manual_seed(int(seed))
    shape = (1,) + tuple(samples.shape[1:])
    draws = {}
    for i in range(max(idx) + 1):
        n = torch.randn(shape, generator=gen, dtype=torch.float32, device="cpu")
        if i in idx:
            draws[i] = n
    return torch.cat([draws[i] for i in idx], 0)


@dataclass(frozen=True)
class SeededNoise:
    """A NOISE value (RandomNoise): the starting noise of :func:`prepare_noise` for ``seed``; the seed also seeds
    the per-step noise."""

    seed: int

    def generate(self, latent: dict) -> torch.Tensor:
        return prepare_noise(latent, self.seed)


@dataclass(frozen=True)
class NoNoise:
    """A NOISE value (DisableNoise): zeros (the latent already holds its noise); per-step noise uses seed 0."""

    seed: int = 0

    def generate(self, latent: dict) -> torch.Tensor:
        return torch.zeros(latent["samples"].shape, dtype=torch.float32)


def ksampler_sigmas(model, sampler: SamplerSpec, scheduler: str, steps: int, denoise: float,
                    start_step: int | None = None, last_step: int | None = None,
                    force_full_denoise: bool = False) -> torch.Tensor:
    """KSampler's schedule: ``scheduler`` with ``denoise``, one step longer with the penultimate sigma dropped for
    the samplers that ask for it, then the step window of KSamplerAdvanced (a window starting at or past the end is
    empty)."""
    sigmas = calculate_sigmas(model.model_sampling, scheduler, steps, denoise,
                              discard_penultimate_sigma=sampler.discard_penultimate_sigma)
    if start_step is not None and last_step is not None and start_step > last_step:
        raise ValueError(f"start_at_step {start_step} is after end_at_step {last_step}: nothing to sample "
                         "(the start must not come after the end)")
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[:last_step + 1]
        if force_full_denoise:
            sigmas = sigmas.clone()
            sigmas[-1] = 0.0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return sigmas[:0]
        sigmas = sigmas[start_step:]
    return sigmas


def sample(model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive: list,
           negative: list, latent: dict, denoise: float = 1.0, ctx=None, *, add_noise: bool = True,
           start_step: int | None = None, last_step: int | None = None, force_full_denoise: bool = False) -> dict:
    """KSampler / KSamplerAdvanced: sample a LATENT with a MODEL. Returns a new LATENT dict (float32, CPU)."""
    sampler = get_sampler(sampler_name)
    sigmas = ksampler_sigmas(model, sampler, scheduler, steps, denoise, start_step, last_step, force_full_denoise)
    noise = prepare_noise(latent, seed) if add_noise else torch.zeros(latent["samples"].shape, dtype=torch.float32)
    return sample_custom(Guider.cfg(model, positive, negative, cfg), sampler, sigmas, latent, noise, seed, ctx)[0]


@dataclass(frozen=True)
class Part:
    """One prompt's rows in a sampling run that serves several prompts at once (:mod:`nodes.sampling.batch`): how
    many rows, the seed of its per-step noise, and the context its progress and previews go to."""

    rows: int
    seed: int
    ctx: Any = None


def sample_custom(guider: Guider, sampler: SamplerSpec, sigmas: torch.Tensor, latent: dict, noise: torch.Tensor,
                  seed: int, ctx=None, parts: list[Part] | None = None) -> tuple[dict, dict]:
    """Run ``sampler`` over ``sigmas`` from ``latent`` plus ``noise`` (scaled to the first sigma), guided by
    ``guider``; ``seed`` seeds the per-step noise. Returns (the sampled LATENT, the LATENT of the last step's
    denoised prediction); with fewer than two sigmas nothing runs and both are the input.

    With ``parts`` the batch's rows belong to several prompts, in order: each part's per-step noise comes from its
    own seed exactly as in a run of its rows alone, and its progress and previews go to its own context (``seed``
    and ``ctx`` are then unused)."""
    out = dict(latent)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).flatten().cpu()
    if len(sigmas) < 2:
        return out, out
    model = guider.model
    samples = latent["samples"]
    if samples.shape[1] != model.latent_format.channels:
        raise ValueError(f"the latent has {samples.shape[1]} channels; this model works on "
                         f"{model.latent_format.channels}")
    if tuple(noise.shape) != tuple(samples.shape):
        raise ValueError(f"the noise has shape {tuple(noise.shape)}; the latent has {tuple(samples.shape)}")
    ms = model.model_sampling
    seed = int(seed) % _SEED_MOD
    # LoRAs are added to the shared weights for this run only (restored on exit, also on errors and interrupts)
    with model.manager.use(model.unet), patched(model.unet, model.lora_for("unet")), torch.inference_mode():
        dev = model.unet.device
        lat = model.latent_format.process_in(samples.to(dev, torch.float32))
        noise_d = noise.to(dev, torch.float32)
        s0 = float(sigmas[0])
        x = ms.noise_scaling(torch.tensor(s0), noise_d, lat, max_denoise=s0 >= ms.sigma_max * (1 - 1e-5))
        mask = latent.get("noise_mask")
        if parts is not None and (mask is not None or sum(p.rows for p in parts) != samples.shape[0]):
            raise ValueError("a sampling run of several prompts takes no noise mask, and its parts must cover "
                             "the batch")
        kept_area_noise = noise_d
        if mask is not None and sampler.inpaint_noise_seed_offset is not None:
            kept_area_noise = initial_noise(samples.shape, (seed + sampler.inpaint_noise_seed_offset) % _SEED_MOD)
            kept_area_noise = kept_area_noise.to(dev)
        image_size = (samples.shape[-2] * 8, samples.shape[-1] * 8)
        den = guider.denoiser(lat, kept_area_noise, mask, image_size, sigmas, need_uncond=sampler.needs_uncond,
                              seed=seed)
        if parts is None:
            previewer = Previewer(ctx, model, len(sigmas) - 1)
            noise_sampler = step_noise_sampler(sampler.noise, x, sigmas, seed)
        else:
            previewer = _parts_previewer(parts, model, len(sigmas) - 1)
            noise_sampler = _parts_noise_sampler(parts, sampler.noise, x, sigmas)
        last = {}

        def callback(info):
            last["denoised"] = info["denoised"]
            previewer(info)

        # sigmas stay on the host: samplers read them once as Python floats (no per-step device reads)
        result = sampler(den, x, sigmas, extra_args={}, callback=callback, noise_sampler=noise_sampler)
        result = ms.inverse_noise_scaling(sigmas[-1], result)
        out["samples"] = model.latent_format.process_out(result).float().cpu()
        denoised = dict(out)
        if "denoised" in last:
            denoised["samples"] = model.latent_format.process_out(last["denoised"]).float().cpu()
    return out, denoised


def _spans(parts: list[Part]) -> list[slice]:
    out, start = [], 0
    for p in parts:
        out.append(slice(start, start + p.rows))
        start += p.rows
    return out


def _parts_noise_sampler(parts: list[Part], kind: str, x: torch.Tensor, sigmas: torch.Tensor):
    """Per-step noise of a batch of prompts: each part's rows drawn from its own seed, as alone."""
    samplers = [step_noise_sampler(kind, x[span], sigmas, int(p.seed) % _SEED_MOD)
                for p, span in zip(parts, _spans(parts))]
    if any(s is None for s in samplers):
        return None

    def noise_sampler(sigma=None, sigma_next=None) -> torch.Tensor:
        return torch.cat([s(sigma, sigma_next) for s in samplers])

    return noise_sampler


def _parts_previewer(parts: list[Part], model, total: int):
    """Progress and previews of a batch of prompts: each part's own rows, to its own context."""
    previewers = [(Previewer(p.ctx, model, total), span) for p, span in zip(parts, _spans(parts))]

    def previewer(info: dict) -> None:
        for prev, span in previewers:
            prev({**info, "denoised": info["denoised"][span], "x": info["x"][span] if "x" in info else None})

    return previewer
