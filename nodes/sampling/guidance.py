"""Classifier-free guidance over a MODEL: the denoiser a sampler calls each step.

Every conditioning entry that covers the same latent area goes through the UNet in one batched call (plain txt2img:
the conditional and unconditional passes are one call of batch 2B); with ``cfg == 1`` the unconditional pass is
skipped. Regional conditioning (areas, masks with strengths), inpainting channels and SDXL's size conditioning are
applied here. Nothing in the per-step path reads a device tensor on the host.

Extension point: a conditioning entry's ``"unet_inputs"`` option may hold an object with
``bind(model, (batch, h, w), input_name) -> fn``, bound once per run (its checks fail before the first step);
``fn(x, sigma, t, context, added_cond_kwargs)`` is then called on that entry's rows of each UNet call and returns extra
UNet keyword arguments (batch-first tensors, or tuples or lists of them; rows of entries without one get zeros).
ControlNets and T2I-Adapters use it (:mod:`nodes.controlnet.apply`). A ``"gligen"`` option (GLIGEN boxes,
:mod:`nodes.gligen.apply`) is bound the same way; its entries run in UNet calls of their own, with the GLIGEN layers
attached for those calls only.

A conditioning entry with ``"start_percent"``/``"end_percent"`` (ConditioningSetTimestepRange) takes part only while
sigma lies between the two percents' sigmas (the model's ``percent_to_sigma``, ends included); entries out of range
are left out of their conditioning's weighted average. A conditioning with no entry in range at some sigma of the
schedule is refused before the first step (it would have no prediction there).

Guidance patches on the MODEL (RescaleCFG, PerpNeg, SelfAttentionGuidance: ``options["guidance"]``) change how the
predictions combine: :mod:`nodes.sampling.guidance_patches`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nodes.gligen.apply import grounding
from nodes.patches.attention_bias import cross_attention_bias, entry_bias
from nodes.memory.handles import ModelHandle


@dataclass
class _Entry:
    group: int  # index of its conditioning in the guider's plan (0 = positive)
    emb: torch.Tensor  # [1, T, D] on device, unet dtype; [B, T, D] when stacked from several prompts
    area: tuple[int, int, int, int] | None  # (h, w, y, x) latent cells, None = full frame
    mult: torch.Tensor | float  # [1 or B, 1, h, w] or a scalar
    pooled: torch.Tensor | None  # [1, P]
    adm: torch.Tensor | None  # [1, n] time ids
    concat: torch.Tensor | None  # [B, k, H, W] inpainting channels over the full frame
    extra: Any = None  # the bound "unet_inputs" option (see the module docstring), shared by entries that share it
    labels: torch.Tensor | None = None  # [1, n] class input of unCLIP UNets (nodes.vision.unclip)
    gligen: Any = None  # the bound "gligen" option (nodes.gligen.apply.BoundGligen)
    sigma_range: tuple[float, float] | None = None  # (low, high): the entry applies while low <= sigma <= high
    attn_bias: torch.Tensor | None = None  # [1, T] cross-attention logit bias per token (nodes.patches.attention_bias)


def _lcm(values) -> int:
    out = 1
    for v in values:
        out = out * v // math.gcd(out, v)
    return out


def check_mask_fits(mask: torch.Tensor, h: int, w: int, what: str = "mask") -> None:
    """A mask must cover the latent's frame: the same aspect ratio (any resolution, e.g. pixels or latent cells)."""
    mh, mw = int(mask.shape[-2]), int(mask.shape[-1])
    if (mh, mw) in ((h, w), (h * 8, w * 8)):
        return
    if mh == 0 or mw == 0 or abs(mh / mw - h / w) > 0.02 * (h / w):
        raise ValueError(f"the {what} is {mw}x{mh} but the image is {w * 8}x{h * 8} pixels ({w}x{h} latent cells): "
                         "its aspect ratio differs; resize the mask to the image size")


def _resize_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, H, W] or [H, W] -> [B, 1, h, w] float."""
    m = mask.float()
    if m.ndim == 2:
        m = m[None]
    m = m.reshape(-1, 1, m.shape[-2], m.shape[-1])
    if m.shape[-2:] != (h, w):
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    return m.clamp(0, 1)


def _feather(mult: torch.Tensor, area, full_h: int, full_w: int, rr: int = 8) -> torch.Tensor:
    """Ramp an area's weight over its inner edges (not those on the image border) so regions blend."""
    h, w, y, x = area
    mult = mult.clone()
    for t in range(min(rr, h // 2, w // 2)):
        f = (t + 1) / rr
        if y != 0:
            mult[:, :, t, :] *= f
        if y + h < full_h:
            mult[:, :, h - 1 - t, :] *= f
        if x != 0:
            mult[:, :, :, t] *= f
        if x + w < full_w:
            mult[:, :, :, w - 1 - t] *= f
    return mult


GUIDER_STYLES = ("basic", "cfg", "dual_regular", "dual_nested")


@dataclass(frozen=True)
class Guider:
    """How a MODEL's predictions under several conditionings combine into one denoised prediction (ComfyUI's
    GUIDER; KSampler's guidance is ``Guider.cfg``). Combinations, on the x0 predictions D_c:

    - ``basic``: D_positive;
    - ``cfg``: D_neg + cfg (D_pos - D_neg); with cfg = 1 just D_pos (the negative pass is skipped);
    - ``dual_regular`` (conds cond1, cond2, negative; scales cfg_conds, cfg_cond2_negative):
      D_neg + cfg2 (D_2 - D_neg) + cfg1 (D_1 - D_2); with cfg2 = 1 the negative pass is skipped, and with both 1
      only D_1 remains;
    - ``dual_nested``: D_neg + cfg2 (D_2 + cfg1 (D_1 - D_2) - D_neg).
    """

    model: ModelHandle
    conds: tuple
    scales: tuple = ()
    style: str = "cfg"

    def __post_init__(self):
        if self.style not in GUIDER_STYLES:
            raise ValueError(f"unknown guidance style {self.style!r}; expected one of {GUIDER_STYLES}")

    @classmethod
    def basic(cls, model, conditioning) -> "Guider":
        return cls(model, (conditioning,), (), "basic")

    @classmethod
    def cfg(cls, model, positive, negative, cfg: float) -> "Guider":
        return cls(model, (positive, negative), (float(cfg),), "cfg")

    @classmethod
    def dual(cls, model, cond1, cond2, negative, cfg_conds: float, cfg_cond2_negative: float,
             nested: bool = False) -> "Guider":
        return cls(model, (cond1, cond2, negative), (float(cfg_conds), float(cfg_cond2_negative)),
                   "dual_nested" if nested else "dual_regular")

    def plan(self, need_uncond: bool = False):
        """(the conditionings that go through the UNet, combine(list of their predictions) -> denoised, the index of
        the unconditional (negative) prediction or None). ``need_uncond`` (CFG++ samplers) keeps the negative pass
        where a scale of 1 would skip it."""
        if self.style == "basic":
            return [self.conds[0]], lambda d: d[0], None
        if self.style == "cfg":
            (cfg,), (pos, neg) = self.scales, self.conds
            if cfg == 1.0 and not need_uncond:
                return [pos], lambda d: d[0], None
            return [pos, neg], lambda d: d[1] + (d[0] - d[1]) * cfg, 1
        (cfg1, cfg2), (c1, c2, neg) = self.scales, self.conds
        if self.style == "dual_nested":
            return [c1, c2, neg], lambda d: d[2] + ((d[1] + (d[0] - d[1]) * cfg1) - d[2]) * cfg2, 2
        if math.isclose(cfg2, 1.0) and not need_uncond:
            if math.isclose(cfg1, 1.0):
                return [c1], lambda d: d[0], None
            return [c1, c2], lambda d: d[1] + (d[0] - d[1]) * cfg1, None
        return [c1, c2, neg], lambda d: d[2] + (d[1] - d[2]) * cfg2 + (d[0] - d[1]) * cfg1, 2

    @property
    def input_names(self) -> tuple[str, ...]:
        """The conditionings' input names (ComfyUI's), in the order of :attr:`conds` (for messages)."""
        if self.style == "basic":
            return ("conditioning",)
        return ("positive", "negative") if self.style == "cfg" else ("cond1", "cond2", "negative")

    def denoiser(self, latent_in: torch.Tensor, noise: torch.Tensor | None, noise_mask: torch.Tensor | None,
                 image_size: tuple[int, int], sigmas: torch.Tensor | None = None,
                 need_uncond: bool = False, seed: int = 0) -> "CFGDenoiser":
        """The per-run denoiser; given the schedule ``sigmas``, conditioning timestep ranges are checked against it
        before the first step. ``need_uncond`` (CFG++ samplers) keeps the negative pass at scale 1; ``seed`` seeds
        the noise augmentation of unCLIP image embeddings."""
        patches = tuple(self.model.options.get("guidance", ()))
        if patches:
            from nodes.sampling.guidance_patches import PatchedGuidance

            rule = PatchedGuidance.plan(self, patches, need_uncond)
            groups, combine, names = rule.groups, None, rule.group_names
            uncond = None if rule.skip_negative else 1
        else:
            rule = None
            groups, combine, uncond = self.plan(need_uncond)
            names = self.input_names[:len(groups)]
        return CFGDenoiser(self.model, groups, combine, latent_in, noise, noise_mask, image_size, names,
                           uncond_index=uncond, rule=rule, sigmas=sigmas, seed=seed)


class CFGDenoiser:
    """``denoiser(x, sigma_batch) -> denoised`` for the samplers in :mod:`nodes.sampling`: the UNet's predictions
    under each conditioning group, combined by ``combine`` (see :class:`Guider`).
    ``denoiser.denoise_with_uncond(x, sigma_batch) -> (denoised, uncond_denoised)`` also returns the unconditional
    (negative) prediction, for the CFG++ samplers (the denoised prediction again when there is no negative)."""

    def __init__(self, model: ModelHandle, groups: list, combine, latent_in: torch.Tensor,
                 noise: torch.Tensor | None, noise_mask: torch.Tensor | None, image_size: tuple[int, int],
                 group_names: tuple[str, ...] = ("positive", "negative"), uncond_index: int | None = None,
                 rule=None, sigmas: torch.Tensor | None = None, seed: int = 0):
        self.model = model
        self.uncond_index = uncond_index
        self.seed = int(seed)  # seeds the noise augmentation of unCLIP image embeddings
        self.ms = model.model_sampling
        self.unet = model.unet.runner()  # the module, or its compiled form (nodes.memory.compile)
        self.device = model.unet.device
        self.dtype = model.unet.dtype
        self.combine = combine
        b, _, h, w = latent_in.shape
        self.shape = (b, h, w)
        self.latent = latent_in
        self.noise = noise
        self.mask = None
        if noise_mask is not None:
            check_mask_fits(noise_mask, h, w, "noise mask")
            m = _resize_mask(noise_mask.to(self.device), h, w)
            if m.shape[0] not in (1, b):
                raise ValueError(f"the noise mask has a batch of {m.shape[0]}; the latent batch is {b}")
            self.mask = m.expand(b, -1, -1, -1)
        self.image_size = image_size
        self._bound: dict[int, Any] = {}
        extra_names = (f"conditioning {i}" for i in range(len(group_names), len(groups)))
        self.group_names = tuple(group_names) + tuple(extra_names)
        self.entries: list[_Entry] = []
        for g, conds in enumerate(groups):
            if not conds:
                raise ValueError("a conditioning input is empty")
            for emb, opts in conds:
                self.entries.append(self._prepare(g, emb, opts or {}))
        self.n_groups = len(groups)
        self.ranged = any(e.sigma_range is not None for e in self.entries)
        self._buckets: dict[tuple, dict] = {}
        if sigmas is not None and self.ranged:
            self._check_ranges_cover(sigmas)
        self.unet_observers: list = []  # fn(entries, b) after each UNet call (guidance patches that read activations)
        if any(e.gligen is not None or e.attn_bias is not None for e in self.entries):
            # GLIGEN layers and attention-bias processors are attached per call: a compiled graph would not see them
            self.unet = model.unet.module
        self.calls = 0
        self.rule = rule.bind(self) if rule is not None else None

    def _bucketed(self, active: tuple[int, ...]) -> dict[tuple, list[_Entry]]:
        """The entries ``active`` (indices) grouped by the latent size they see (and their GLIGEN boxes): one UNet call
        each."""
        if active not in self._buckets:
            _, h, w = self.shape
            buckets: dict[tuple, list[_Entry]] = {}
            for i in active:
                e = self.entries[i]
                key = ((e.area[0], e.area[1]) if e.area else (h, w), e.gligen.key if e.gligen is not None else None)
                buckets.setdefault(key, []).append(e)
            self._buckets[active] = buckets
        return self._buckets[active]

    def _check_ranges_cover(self, sigmas: torch.Tensor) -> None:
        """Every conditioning must have an entry in range wherever the sampler may evaluate: from the schedule's
        first sigma down to its last nonzero one."""
        values = [float(s) for s in torch.as_tensor(sigmas).flatten().tolist() if float(s) > 0.0]
        if not values:
            return
        lo, hi = min(values), max(values)
        for g in range(self.n_groups):
            spans = sorted((e.sigma_range or (0.0, math.inf)) for e in self.entries if e.group == g)
            reach = lo
            for a, b in spans:
                if a > reach:
                    break
                reach = max(reach, b)
            if reach < hi:
                gap_hi = next((a for a, _ in spans if a > reach), hi)
                raise ValueError(
                    f"the {self.group_names[g]} conditioning has no entry whose timestep range "
                    f"(ConditioningSetTimestepRange) covers sampling progress {self._percent(min(gap_hi, hi)):.3f} to "
                    f"{self._percent(reach):.3f} of this schedule: combine it with one that covers the rest")

    def _percent(self, sigma: float) -> float:
        t = float(self.ms.timestep(torch.tensor([sigma], dtype=torch.float64))[0])
        return max(0.0, min(1.0, 1.0 - t / (self.ms.num_timesteps - 1)))

    # -- preparation (once per sampling run; host syncs allowed here) -----------------------------------------
    def _prepare(self, group: int, emb: torch.Tensor, opts: dict) -> _Entry:
        b, h, w = self.shape
        emb = emb.to(self.device, self.dtype)
        if emb.ndim == 2:
            emb = emb[None]
        ctx_dim = self.model.config.get("cross_attention_dim")
        if ctx_dim and emb.shape[-1] != ctx_dim:
            raise ValueError(f"the conditioning has {emb.shape[-1]}-wide text features but this model's "
                             f"cross-attention takes {ctx_dim}: was it encoded with another model's CLIP?")
        area = None
        mult: Any = float(opts.get("strength", 1.0))
        if opts.get("area") is not None:
            ah, aw, ay, ax = (int(v) for v in opts["area"])
            if ay >= h or ax >= w or ah <= 0 or aw <= 0:
                raise ValueError(f"a conditioning area of {aw * 8}x{ah * 8} pixels at x={ax * 8}, y={ay * 8} lies "
                                 f"outside the {w * 8}x{h * 8} image")
            area = (min(ah, h - ay), min(aw, w - ax), ay, ax)  # clipped to the frame
        mask = opts.get("mask")
        if mask is not None:
            check_mask_fits(mask, h, w, "conditioning mask")
            m = _resize_mask(mask.to(self.device), h, w) * float(opts.get("mask_strength", 1.0))
            if opts.get("set_area_to_bounds"):
                nz = torch.nonzero(m.amax(dim=(0, 1)) > 0)
                if len(nz):
                    y0, x0 = nz.min(0).values.tolist()
                    y1, x1 = nz.max(0).values.tolist()
                    area = (y1 - y0 + 1, x1 - x0 + 1, y0, x0)
            if area is not None:
                ah, aw, ay, ax = area
                m = m[:, :, ay:ay + ah, ax:ax + aw]
            mult = m * mult
        if area is not None and (area[0], area[1]) != (h, w):
            base = mult if isinstance(mult, torch.Tensor) else torch.full((1, 1, area[0], area[1]), mult,
                                                                          device=self.device)
            mult = _feather(base, area, h, w)
        elif area is not None:
            area = None
        pooled = opts.get("pooled_output")
        unclip = opts.get("unclip_conditioning")
        labels = None
        if self.model.config.get("class_embed_type") == "projection":
            labels = self._unclip_labels(unclip, group)
        elif unclip and self.model.adm is None:
            raise ValueError(f"the {self.group_names[group]} conditioning carries an unCLIP image (unCLIPConditioning) "
                             f"but this {self.model.family} model takes no image embedding: use an unCLIP checkpoint "
                             "(unCLIPCheckpointLoader) or an SDXL model")
        adm = None
        if self.model.adm is not None:
            proj = int(self.model.config.get("projection_class_embeddings_input_dim") or 0)
            n_time = 5 if self.model.adm == "refiner" else 6
            tdim = int(self.model.config.get("addition_time_embed_dim") or 256)
            pdim = proj - n_time * tdim
            if unclip:
                pooled = self._revision_pooled(unclip, pdim, group)
            if pooled is None:
                pooled = torch.zeros(1, pdim)
            pooled = pooled.to(self.device, self.dtype)
            # one row, or one per latent row (a conditioning stacked from several prompts: nodes.sampling.batch)
            pooled = pooled.reshape(b if pooled.ndim > 1 and pooled.shape[0] == b else 1, -1)
            if pooled.shape[-1] != pdim:
                raise ValueError(f"the conditioning's pooled output is {pooled.shape[-1]} wide; this model needs "
                                 f"{pdim}")
            H, W = self.image_size
            height, width = float(opts.get("height", H)), float(opts.get("width", W))
            crop_h, crop_w = float(opts.get("crop_h", 0)), float(opts.get("crop_w", 0))
            if self.model.adm == "refiner":
                score = float(opts.get("aesthetic_score", 6.0 if group == 0 else 2.5))
                ids = [height, width, crop_h, crop_w, score]
            else:
                ids = [height, width, crop_h, crop_w, float(opts.get("target_height", height)),
                       float(opts.get("target_width", width))]
            adm = torch.tensor([ids], device=self.device, dtype=self.dtype)
        concat = None
        if self.model.is_inpaint:
            src = opts.get("concat_latent_image")
            lat = self.model.latent_format.process_in(src.to(self.device).float()) if src is not None else self.latent
            cm = opts.get("concat_mask")
            if cm is not None:
                m = _resize_mask(cm.to(self.device), h, w)
            elif self.mask is not None:
                m = self.mask
            else:
                m = torch.ones(1, 1, h, w, device=self.device)
            concat = torch.cat([m.expand(b, -1, -1, -1), lat.expand(b, -1, -1, -1)], 1)
        sigma_range = None
        start, end = float(opts.get("start_percent", 0.0)), float(opts.get("end_percent", 1.0))
        if start > 0.0 or end < 1.0:
            sigma_range = (self.ms.percent_to_sigma(end), self.ms.percent_to_sigma(start))
        extra = opts.get("unet_inputs")
        if extra is not None and area is not None:
            held = extra.describe() if hasattr(extra, "describe") else "extra UNet inputs"
            raise ValueError(f"the {self.group_names[group]} conditioning is limited to an area and carries {held}: "
                             "ControlNets and T2I-Adapters on area conditioning are not supported yet")
        if extra is not None:
            if id(extra) not in self._bound:
                self._bound[id(extra)] = extra.bind(self.model, self.shape, self.group_names[group])
            extra = self._bound[id(extra)]
        gligen = opts.get("gligen")
        if gligen is not None:
            if area is not None:
                raise ValueError(f"the {self.group_names[group]} conditioning is limited to an area and carries GLIGEN "
                                 "boxes: GLIGEN on area conditioning is not supported")
            if id(gligen) not in self._bound:
                self._bound[id(gligen)] = gligen.bind(self.model, self.shape, self.group_names[group])
            gligen = self._bound[id(gligen)]
        bias = entry_bias(opts, emb.shape[1], f"{self.group_names[group]} conditioning")
        if bias is not None:
            bias = bias.reshape(1, -1).to(self.device)
        return _Entry(group, emb, area, mult, pooled, adm, concat, extra, labels=labels, gligen=gligen,
                      sigma_range=sigma_range, attn_bias=bias)

    def _unclip_labels(self, unclip, group: int) -> torch.Tensor:
        """The class input of an SD2.1-unCLIP UNet: the noise-augmented image embeddings, or zeros without any."""
        from nodes.vision.unclip import SD21_MERGE_LEVEL, adm_vector

        width = int(self.model.config.get("projection_class_embeddings_input_dim") or 0)
        if not unclip:
            return torch.zeros(1, width, device=self.device, dtype=self.dtype)
        aug = getattr(self.model, "noise_augmentor", None)
        if aug is None:
            raise ValueError(f"the {self.group_names[group]} conditioning carries an unCLIP image but this unCLIP "
                             "model was loaded without its image-embedding statistics: load the checkpoint with "
                             "unCLIPCheckpointLoader")
        try:
            vec = adm_vector(unclip, aug, self.seed, SD21_MERGE_LEVEL)
        except ValueError as exc:
            raise ValueError(f"the {self.group_names[group]} conditioning: {exc}") from None
        if vec.shape[-1] != width:
            raise ValueError(f"the {self.group_names[group]} conditioning's unCLIP image embedding is "
                             f"{vec.shape[-1] - aug.timestep_dim} wide but this unCLIP model takes "
                             f"{width - aug.timestep_dim}: encode the image with the CLIP vision model that came with "
                             "the checkpoint")
        return vec.to(self.device, self.dtype)

    def _revision_pooled(self, unclip, pdim: int, group: int) -> torch.Tensor:
        """SDXL "revision": the noise-augmented image embedding in place of the pooled text embedding."""
        from nodes.vision.unclip import SDXL_MERGE_LEVEL, NoiseAugmentor, adm_vector

        widths = {int(i["clip_vision_output"].image_embeds.shape[-1]) for i in unclip
                  if getattr(i["clip_vision_output"], "image_embeds", None) is not None}
        if widths and widths != {pdim}:
            raise ValueError(f"the {self.group_names[group]} conditioning's unCLIP image embedding is "
                             f"{'/'.join(map(str, sorted(widths)))} wide but this SDXL model's pooled embedding is "
                             f"{pdim} wide: encode the image with OpenCLIP ViT-bigG (clip_vision_g)")
        try:
            vec = adm_vector(unclip, NoiseAugmentor(timestep_dim=pdim), self.seed, SDXL_MERGE_LEVEL)
        except ValueError as exc:
            raise ValueError(f"the {self.group_names[group]} conditioning: {exc}") from None
        return vec[:, :pdim]

    # -- the per-step call ------------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.denoise_with_uncond(x, sigma)[0]

    def denoise_with_uncond(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any):
        m = self.mask
        if m is not None:
            s = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
            x = x * m + (self.latent + self.noise * s) * (1.0 - m)
        preds = self.predict(x, sigma)
        den = self.combine(preds) if self.rule is None else self.rule(x, sigma, preds)
        uncond = None if self.uncond_index is None else preds[self.uncond_index]
        if m is not None:
            den = den * m + self.latent * (1.0 - m)
            if uncond is not None:
                uncond = uncond * m + self.latent * (1.0 - m)
        return den, den if uncond is None else uncond

    def predict(self, x: torch.Tensor, sigma: torch.Tensor, groups: tuple[int, ...] | None = None) -> list:
        """Each conditioning group's prediction (the weighted average of its entries' denoised x0) at ``x``; with
        ``groups``, only those (the others' places hold None)."""
        wanted = range(self.n_groups) if groups is None else groups
        active = tuple(i for i, e in enumerate(self.entries) if e.group in wanted)
        if self.ranged:
            s = float(sigma.reshape(-1)[0])  # one host read per step, only with timestep ranges
            active = tuple(i for i in active
                           if self.entries[i].sigma_range is None
                           or self.entries[i].sigma_range[0] <= s <= self.entries[i].sigma_range[1])
            for g in wanted:
                if not any(self.entries[i].group == g for i in active):
                    raise ValueError(f"the {self.group_names[g]} conditioning has no entry whose timestep range "
                                     f"(ConditioningSetTimestepRange) covers sampling progress "
                                     f"{self._percent(s):.3f}")
        sums = [torch.zeros_like(x) if g in wanted else None for g in range(self.n_groups)]
        counts = [torch.full_like(x, 1e-37) if g in wanted else None for g in range(self.n_groups)]
        for entries in self._bucketed(active).values():
            self._run_bucket(x, sigma, entries, sums, counts)
        return [None if s is None else s / c for s, c in zip(sums, counts)]

    def _run_bucket(self, x, sigma, entries: list[_Entry], sums, counts) -> None:
        b = x.shape[0]
        xs, sig, ctx, pooled, adm, concat, labels = [], [], [], [], [], [], []
        length = _lcm(e.emb.shape[1] for e in entries)
        for e in entries:
            if e.area is None:
                xs.append(x)
                cc = e.concat
            else:
                h, w, y, x0 = e.area
                xs.append(x[:, :, y:y + h, x0:x0 + w])
                cc = e.concat[:, :, y:y + h, x0:x0 + w] if e.concat is not None else None
            sig.append(sigma)
            emb = e.emb.repeat(1, length // e.emb.shape[1], 1) if e.emb.shape[1] != length else e.emb
            ctx.append(emb.expand(b, -1, -1))
            if e.pooled is not None:
                pooled.append(e.pooled.expand(b, -1))
                adm.append(e.adm.expand(b, -1))
            if cc is not None:
                concat.append(cc)
            if e.labels is not None:
                labels.append(e.labels.expand(b, -1))
        x_in = torch.cat(xs) if len(xs) > 1 else xs[0]
        s_in = torch.cat(sig) if len(sig) > 1 else sig[0]
        net_in = self.ms.calculate_input(s_in, x_in)
        if concat:
            net_in = torch.cat([net_in, torch.cat(concat) if len(concat) > 1 else concat[0]], 1)
        kwargs = {}
        if pooled:
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.cat(pooled), "time_ids": torch.cat(adm)}
        if labels:
            kwargs["class_labels"] = torch.cat(labels)
        t = self.ms.network_timestep(s_in.float())  # the UNet gets integer timesteps (as ComfyUI)
        if any(e.extra is not None for e in entries):
            kwargs.update(_extra_inputs(entries, b, net_in[:, :x_in.shape[1]], s_in, t, torch.cat(ctx),
                                        kwargs.get("added_cond_kwargs")))
        bias = None
        if any(e.attn_bias is not None for e in entries):
            rows = [(e.attn_bias if e.attn_bias is not None else x.new_zeros(1, e.emb.shape[1])) for e in entries]
            bias = torch.cat([r.repeat(1, length // r.shape[1]).expand(b, -1) for r in rows])
        with grounding([e.gligen for e in entries], b, kwargs), cross_attention_bias(self.model.unet.module, bias):
            out = self.unet(net_in.to(self.dtype), t, encoder_hidden_states=torch.cat(ctx), return_dict=False,
                            **kwargs)[0]
        self.calls += 1
        for observe in self.unet_observers:
            observe(entries, b)
        den = self.ms.calculate_denoised(s_in, out.float(), x_in)
        for i, e in enumerate(entries):
            d = den[i * b:(i + 1) * b]
            if e.area is None:
                sums[e.group] += d * e.mult
                counts[e.group] += e.mult
            else:
                h, w, y, x0 = e.area
                sums[e.group][:, :, y:y + h, x0:x0 + w] += d * e.mult
                counts[e.group][:, :, y:y + h, x0:x0 + w] += e.mult


def _extra_inputs(entries: list[_Entry], b: int, x, sigma, t, context, added: dict | None) -> dict:
    """Each distinct bound ``unet_inputs`` called on the rows of its entries; results merged into full-batch UNet
    keyword arguments (zeros for the rows of entries without one)."""
    rows: dict[int, list[int]] = {}
    fns: dict[int, Any] = {}
    for i, e in enumerate(entries):
        if e.extra is not None:
            rows.setdefault(id(e.extra), []).extend(range(i * b, (i + 1) * b))
            fns[id(e.extra)] = e.extra
    n = len(entries) * b
    merged: dict[str, list] = {}
    for key, idx in rows.items():
        whole = idx == list(range(n))
        sel = slice(None) if whole else torch.tensor(idx, device=x.device)
        part_added = None if added is None else {k: v[sel] for k, v in added.items()}
        got = fns[key](x[sel], sigma[sel], t[sel], context[sel], part_added)
        for name, value in got.items():
            merged.setdefault(name, []).append((whole, sel, value))
    out = {}
    for name, parts in merged.items():
        if len(parts) == 1 and parts[0][0]:
            out[name] = parts[0][2]
            continue
        seq = isinstance(parts[0][2], (tuple, list))
        first = parts[0][2] if seq else [parts[0][2]]
        full = [v.new_zeros((n,) + tuple(v.shape[1:])) for v in first]
        for _, sel, value in parts:
            for f, v in zip(full, value if seq else [value]):
                f[sel] = v
        out[name] = (list(full) if isinstance(parts[0][2], list) else tuple(full)) if seq else full[0]
    return out
