"""KSampler's batched form: several prompts' sampling calls as one sampling run of the concatenated batch.

The calls must agree on everything but the seed, the conditionings' text features (their embeddings and pooled
outputs) and the latent's rows; anything else declines (None), and the engine runs the calls one by one. Each prompt
gets what it would get alone:

- its starting noise is :func:`prepare_noise` of its own latent and seed, drawn exactly as alone;
- its per-step noise (ancestral and SDE samplers) comes from its own seed, for its own rows
  (:class:`nodes.sampling.sample.Part`);
- its conditioning reaches only its own rows: each conditioning entry is stacked row by row ([B, T, D]), so the
  guidance's single UNet call per step holds every prompt's conditional and unconditional rows, each with its own
  text. Embeddings of different token lengths are repeated to a common length, as the guidance does for entries of
  one prompt (the attention over repeated tokens is the same, up to rounding);
- samplers act on each row independently, so the only difference from a run alone is the rounding of a larger
  UNet batch.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from nodes.sampling.guidance import Guider
from nodes.sampling.registry import get_sampler
from nodes.sampling.sample import Part, ksampler_sigmas, prepare_noise, sample_custom

# The inputs of one sampling call (KSampler's and KSamplerAdvanced's, by meaning) that must be the same in every
# call of a batch; seed, positive, negative and latent may differ.
SHARED = ("steps", "cfg", "sampler_name", "scheduler", "denoise", "add_noise", "start_step", "last_step",
          "force_full_denoise")
# conditioning options bound to one prompt's batch shape (ControlNet inputs, GLIGEN boxes): such prompts run alone
UNBATCHED_OPTIONS = ("unet_inputs", "gligen", "unclip_conditioning",  # unCLIP noise: seeded per run
                     "attention_bias")  # a per-token bias applied per UNet call
# samplers whose steps depend on the whole batch (dpm_adaptive's step size follows an error norm over all rows)
BATCH_COUPLED_SAMPLERS = ("dpm_adaptive",)


def sample_batch(ctxs: list[Any], calls: list[dict[str, Any]]) -> list[dict] | None:
    """Each call (``model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise, add_noise,
    start_step, last_step, force_full_denoise``) sampled in one run; each call's LATENT, or None to decline."""
    first = calls[0]
    if any(c["model"] is not first["model"] or any(c[k] != first[k] for k in SHARED) for c in calls[1:]):
        return None
    if first["sampler_name"] in BATCH_COUPLED_SAMPLERS:
        return None
    latents = [c["latent"] for c in calls]
    if not _latents_fit(latents):
        return None
    positive = stack_conditioning([c["positive"] for c in calls], [lat["samples"].shape[0] for lat in latents])
    negative = stack_conditioning([c["negative"] for c in calls], [lat["samples"].shape[0] for lat in latents])
    if positive is None or negative is None:
        return None
    model, sampler = first["model"], get_sampler(first["sampler_name"])
    sigmas = ksampler_sigmas(model, sampler, first["scheduler"], first["steps"], first["denoise"],
                             first["start_step"], first["last_step"], first["force_full_denoise"])
    noise = torch.cat([prepare_noise(lat, c["seed"]) if first["add_noise"] else
                       torch.zeros(lat["samples"].shape, dtype=torch.float32) for c, lat in zip(calls, latents)])
    batch = {"samples": torch.cat([lat["samples"] for lat in latents])}
    parts = [Part(lat["samples"].shape[0], c["seed"], ctx) for c, lat, ctx in zip(calls, latents, ctxs)]
    out, _ = sample_custom(Guider.cfg(model, positive, negative, first["cfg"]), sampler, sigmas, batch, noise,
                           first["seed"], None, parts=parts)
    results, start = [], 0
    for lat in latents:
        rows = lat["samples"].shape[0]
        one = dict(lat)
        one["samples"] = out["samples"][start:start + rows]
        results.append(one)
        start += rows
    return results


def _latents_fit(latents: list[dict]) -> bool:
    """Latents that can be one batch: no noise mask, the same shape past the batch, the same other keys."""
    first = latents[0]
    shape = tuple(first["samples"].shape[1:])
    keys = set(first) - {"samples", "batch_index"}
    for lat in latents:
        if "noise_mask" in lat or tuple(lat["samples"].shape[1:]) != shape:
            return False
        if set(lat) - {"samples", "batch_index"} != keys or any(not _same(lat[k], first[k]) for k in keys):
            return False
    return True


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a.cpu(), b.cpu())))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - incomparable values are not the same
        return False


def stack_conditioning(conds: list[list], rows: list[int]) -> list | None:
    """Several prompts' CONDITIONING as one whose entries hold a row per latent row (``rows[i]`` rows for prompt
    i): entry j's embedding is prompt i's entry j repeated over its rows, and the same for the pooled output. The
    prompts' conditionings must have the same entries with the same options (area, mask, strength, ...); only the
    text features may differ. An entry that is the same object in every prompt stays as it is. None when they do
    not fit."""
    first = conds[0]
    if any(len(c) != len(first) for c in conds):
        return None
    stacked = []
    for j in range(len(first)):
        entries = [c[j] for c in conds]
        embs = [e[0] for e in entries]
        opts = [dict(e[1] or {}) for e in entries]
        if any(k in o for o in opts for k in UNBATCHED_OPTIONS):
            return None
        keys = set(opts[0])
        if any(set(o) != keys for o in opts) or any(not _same(o[k], opts[0][k]) for o in opts for k in keys
                                                    if k != "pooled_output"):
            return None
        if all(e is embs[0] for e in embs) and all(_same(o.get("pooled_output"), opts[0].get("pooled_output"))
                                                   for o in opts):
            stacked.append([embs[0], opts[0]])
            continue
        if any(e.ndim != 3 or e.shape[0] != 1 or e.shape[2] != embs[0].shape[2] for e in embs):
            return None
        length = math.lcm(*(int(e.shape[1]) for e in embs))
        emb = torch.cat([e.repeat(1, length // e.shape[1], 1).expand(n, -1, -1) for e, n in zip(embs, rows)])
        merged = dict(opts[0])
        pooled = [o.get("pooled_output") for o in opts]
        if pooled[0] is not None:
            if any(p is None or p.reshape(1, -1).shape != pooled[0].reshape(1, -1).shape for p in pooled):
                return None
            merged["pooled_output"] = torch.cat([p.reshape(1, -1).expand(n, -1) for p, n in zip(pooled, rows)])
        stacked.append([emb, merged])
    return stacked
