"""A bias on the cross-attention logits of chosen conditioning tokens (StyleModelApply's strength_type "attn_bias").

A conditioning entry may carry ``opts["attention_bias"]``: one float per token of its embedding, added to the
attention logits of that token's column in every cross-attention of the UNet:

    attention = softmax(q k^T / sqrt(d) + bias) v

A bias of ``log(s)`` on a token multiplies its unnormalised attention weight by ``s`` (the token counts as if it were
there ``s`` times); 0 leaves a token as it is. Tokens appended after the bias was set (ConditioningConcat) get 0.

:func:`cross_attention_bias` wraps the processors of the UNet's cross-attention modules (``attn2``) for one call so
that they get the bias as their additive attention mask (diffusers' processors add a float mask to the logits).
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

__all__ = ["OPTION", "append_bias", "entry_bias", "cross_attention_bias"]

OPTION = "attention_bias"


def append_bias(opts: dict, tokens_before: int, new_tokens: int, strength: float) -> torch.Tensor:
    """The bias of an entry whose ``tokens_before`` tokens get ``new_tokens`` more with ``log(strength)`` each."""
    old = entry_bias(opts, tokens_before, "conditioning")
    if old is None:
        old = torch.zeros(tokens_before)
    return torch.cat([old, torch.full((new_tokens,), math.log(strength))])


def entry_bias(opts: dict, tokens: int, what: str) -> torch.Tensor | None:
    """An entry's bias as a float32 vector of ``tokens`` values (zeros for tokens appended after it was set), or
    None when it has none."""
    bias = opts.get(OPTION)
    if bias is None:
        return None
    bias = torch.as_tensor(bias, dtype=torch.float32).flatten()
    if bias.numel() > tokens:
        raise ValueError(f"the {what} has an attention bias for {bias.numel()} tokens but only {tokens} tokens")
    return torch.nn.functional.pad(bias, (0, tokens - bias.numel()))


class _BiasedCrossAttention:
    """A diffusers attention processor: ``inner`` with ``bias`` ([batch, 1, keys]) added to its attention mask."""

    def __init__(self, inner, bias: torch.Tensor):
        self.inner = inner
        self.bias = bias

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        bias = self.bias.to(device=hidden_states.device, dtype=hidden_states.dtype)
        mask = bias if attention_mask is None else attention_mask + bias
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask=mask, temb=temb, **kwargs)


def _cross_attentions(unet: torch.nn.Module) -> list:
    from diffusers.models.attention_processor import Attention

    return [m for name, m in unet.named_modules()
            if isinstance(m, Attention) and getattr(m, "is_cross_attention", False) and name.endswith("attn2")]


@contextmanager
def cross_attention_bias(unet: torch.nn.Module, bias: torch.Tensor | None):
    """While the block runs, every cross-attention of ``unet`` adds ``bias`` ([batch, keys]) to its logits."""
    if bias is None:
        yield
        return
    mods = _cross_attentions(unet)
    saved = [m.processor for m in mods]
    try:
        for m, inner in zip(mods, saved):
            m.processor = _BiasedCrossAttention(inner, bias[:, None, :])
        yield
    finally:
        for m, inner in zip(mods, saved):
            m.processor = inner
