"""Self-attention guidance (Hong et al. 2023, "Improving Sample Quality of Diffusion Models Using Self-Attention
Guidance"): each step, the regions the UNet's middle block attends to most are blurred in the predicted clean image,
the result is noised back to the current level and predicted again, and the difference steers the sample away from
the blurred version.

With classifier-free guidance the map and the prediction are the negative (unconditional) pass's (the paper's
eq. 25): at sigma, with D_u the negative prediction at x,

    A      = the middle block's first self-attention probabilities on the negative pass, averaged over heads
    M      = [sum over queries of A > 1], per key position, upsampled (nearest) to the latent
    x0_deg = M * blur(D_u) + (1 - M) * D_u                  Gaussian blur, std blur_sigma latent cells
    x_deg  = x0_deg + (x - D_u)                              noised again with the negative's own noise
    D      = D_cfg + scale * (x0_deg - D_u(x_deg))           i.e. eps_cfg + scale * (eps_u - eps_deg)

The attention probabilities are read by an attention processor (:class:`AttentionMapCapture`, diffusers' processor
interface) set on the middle block's first ``attn1`` only while the patched MODEL samples, beside the patch's
guidance rule. The blur kernel covers about +-3 sigma (the odd size of ceil(6 sigma) or one more, ComfyUI's size)
with reflected edges. The negative pass is never skipped (also at cfg 1).
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from nodes.sampling.guidance_patches import GuidanceStep


def kernel_size_for(sigma: float) -> int:
    """The odd kernel size covering about 6 sigma: ceil(6 sigma), plus one when that is even."""
    k = math.ceil(6.0 * sigma)
    return k + 1 - k % 2


def gaussian_blur(x: torch.Tensor, sigma: float, kernel_size: int) -> torch.Tensor:
    """Blur [B, C, H, W] with a normalised ``kernel_size`` Gaussian of std ``sigma`` cells (reflected edges)."""
    if sigma <= 0.0 or kernel_size <= 1:
        return x
    half = (kernel_size - 1) / 2
    taps = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    k = torch.exp(-0.5 * (taps / sigma) ** 2)
    k = (k / k.sum()).to(x.device, x.dtype)
    b, c, h, w = x.shape
    pad = kernel_size // 2
    y = F.pad(x.reshape(b * c, 1, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(F.conv2d(y, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def attention_mask(probs: torch.Tensor, batch: int, map_hw: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """[batch * heads, queries, keys] self-attention probabilities -> [batch, 1, H, W] mask (1 where the summed
    attention a position receives, averaged over heads, exceeds 1)."""
    heads = probs.shape[0] // batch
    received = probs.reshape(batch, heads, probs.shape[1], probs.shape[2]).mean(1).sum(1)
    mask = (received > 1.0).to(torch.float32).reshape(batch, 1, *map_hw)
    return F.interpolate(mask, size=size, mode="nearest")


class AttentionMapCapture:
    """A diffusers attention processor for self-attention that computes what diffusers' ``AttnProcessor`` does
    (explicit softmax probabilities) and keeps the probabilities of the last call in ``probs``."""

    def __init__(self):
        self.probs: torch.Tensor | None = None
        self.map_hw: tuple[int, int] | None = None  # the spatial size of the block's input

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        residual = hidden_states
        batch, length, _ = hidden_states.shape
        mask = attn.prepare_attention_mask(attention_mask, length, batch)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(attn.head_to_batch_dim(query), key, mask)
        self.probs = probs
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _mid_attention(unet):
    mid = getattr(unet, "mid_block", None)
    attns = getattr(mid, "attentions", None)
    if not attns or not getattr(attns[0], "transformer_blocks", None):
        raise ValueError("SelfAttentionGuidance needs a UNet whose middle block has self-attention; this one has none")
    return attns[0], attns[0].transformer_blocks[0].attn1


class SelfAttentionGuidancePatch:
    name = "SelfAttentionGuidance"
    strength = 1.0
    needs_negative = True

    def __init__(self, scale: float, blur_sigma: float, kernel_size: int | None = None):
        self.scale = float(scale)
        self.blur_sigma = float(blur_sigma)
        self.kernel_size = int(kernel_size) if kernel_size is not None else kernel_size_for(self.blur_sigma)

    def describe(self) -> str:
        return f"SelfAttentionGuidance(scale={self.scale:g}, blur_sigma={self.blur_sigma:g})"

    @contextmanager
    def attach(self, unet: torch.nn.Module):
        """While sampling: the capture processor on the middle block's first attn1, and its input size read."""
        block, attn = _mid_attention(unet)
        if attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError("SelfAttentionGuidance: this UNet's middle attention normalises spatially; not supported")
        capture = AttentionMapCapture()
        original = attn.processor

        def read_size(mod, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            capture.map_hw = tuple(int(v) for v in hidden.shape[-2:])

        handle = block.register_forward_pre_hook(read_size, with_kwargs=True)
        attn.set_processor(capture)
        try:
            yield
        finally:
            handle.remove()
            attn.set_processor(original)

    def bind(self, denoiser) -> "_SagRun":
        return _SagRun(self, denoiser)


class _SagRun:
    """One sampling run of the patch: follows the negative entry's rows through the UNet calls."""

    def __init__(self, patch: SelfAttentionGuidancePatch, denoiser):
        self.patch = patch
        self.denoiser = denoiser
        _, attn = _mid_attention(denoiser.model.unet.module)
        self.capture = attn.processor
        if not isinstance(self.capture, AttentionMapCapture):
            raise ValueError("SelfAttentionGuidance: the attention capture is not attached (sample through KSampler "
                             "or SamplerCustom with the patched MODEL)")
        self.target = next((e for e in denoiser.entries if e.group == 1 and e.area is None), None)
        if self.target is None:
            raise ValueError("SelfAttentionGuidance needs a negative conditioning entry that covers the whole image "
                             "(its attention map is read); the negative input has only area-limited entries")
        _, h, w = denoiser.shape
        pad = patch.kernel_size // 2
        if patch.blur_sigma > 0 and pad >= min(h, w):
            raise ValueError(f"SelfAttentionGuidance: input 'blur_sigma' {patch.blur_sigma:g} blurs over "
                             f"{patch.kernel_size} latent cells; the latent is only {w}x{h} cells: use a smaller "
                             f"blur_sigma or a larger image")
        self.map: torch.Tensor | None = None
        denoiser.unet_observers.append(self._observe)

    def _observe(self, entries, b: int) -> None:
        for i, e in enumerate(entries):
            if e is self.target and self.capture.probs is not None:
                heads = self.capture.probs.shape[0] // (len(entries) * b)
                self.map = self.capture.probs[i * b * heads:(i + 1) * b * heads]
                self.map_hw = self.capture.map_hw
                return

    def post_cfg(self, step: GuidanceStep, den: torch.Tensor) -> torch.Tensor:
        probs, self.map = self.map, None
        if probs is None or step.uncond is None:  # the negative entry was out of its timestep range this step
            return den
        x, uncond = step.x, step.uncond
        b = x.shape[0]
        mask = attention_mask(probs.float(), b, self.map_hw, tuple(x.shape[-2:])).to(x.dtype)
        blurred = gaussian_blur(uncond, self.patch.blur_sigma, self.patch.kernel_size)
        degraded = blurred * mask + uncond * (1.0 - mask)
        again = step.denoiser.predict(degraded + (x - uncond), step.sigma, (1,))[1]
        self.map = None  # the degraded pass's own map is not this step's
        return den + self.patch.scale * (degraded - again)
