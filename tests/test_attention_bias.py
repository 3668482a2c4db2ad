"""Cross-attention bias (StyleModelApply's strength_type "attn_bias"): the biased processor computes
softmax(q k^T / sqrt(d) + bias) v (written out here), and through the whole sampler a bias of log(s) on tokens is the
same as those tokens being there s times (log 2: the tokens twice; log(1/2): every other token twice)."""
from __future__ import annotations

import math

import pytest
import torch
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import FakeContext, assert_close_to_scale, tiny_file

from nodes.patches.attention_bias import OPTION, append_bias, cross_attention_bias, entry_bias


class _Holder(torch.nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.attn2 = attn


def test_biased_cross_attention_matches_the_formula():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8).double().eval()
    h, c = torch.randn(3, 5, 16, dtype=torch.float64), torch.randn(3, 7, 8, dtype=torch.float64)
    bias = torch.randn(3, 7, dtype=torch.float64)
    with torch.no_grad(), cross_attention_bias(_Holder(attn), bias):
        got = attn(h, encoder_hidden_states=c)
    processor = attn.processor
    with torch.no_grad():
        split = lambda t: t.reshape(3, t.shape[1], 2, 8).transpose(1, 2)  # noqa: E731
        q, k, v = split(attn.to_q(h)), split(attn.to_k(c)), split(attn.to_v(c))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8) + bias[:, None, None, :], dim=-1)
        want = attn.to_out[0]((w @ v).transpose(1, 2).reshape(3, 5, 16))
        plain = attn(h, encoder_hidden_states=c)
    assert (got - want).abs().max().item() < 1e-12
    assert (plain - want).abs().max().item() > 1e-3  # the bias matters
    assert attn.processor is processor and type(processor).__name__ != "_BiasedCrossAttention"  # restored


def test_bias_option_pads_tokens_appended_later_and_refuses_too_long_ones():
    opts = {OPTION: append_bias({}, 3, 2, 0.5)}
    assert torch.allclose(entry_bias(opts, 5, "x"), torch.tensor([0, 0, 0, math.log(0.5), math.log(0.5)]))
    assert torch.allclose(entry_bias(opts, 7, "x")[5:], torch.zeros(2))  # e.g. ConditioningConcat after it
    chained = append_bias(opts, 7, 1, 2.0)
    assert chained.shape == (8,) and chained[-1] == pytest.approx(math.log(2.0)) and chained[3] == chained[4]
    with pytest.raises(ValueError, match="attention bias for 5 tokens but only 4"):
        entry_bias(opts, 4, "positive conditioning")


@pytest.fixture(scope="module")
def sd1():
    from nodes.memory.manager import ModelManager

    return ModelManager("cpu").load_checkpoint(tiny_file("sd1", "fp32"))


def _sample(model, positive, negative, cfg=1.0):
    from nodes.library.sampling import KSampler

    return KSampler().run(FakeContext(), model, 4, 2, cfg, "euler", "normal", positive, negative,
                          {"samples": torch.zeros(1, 4, 8, 8)}, 1.0)[0]["samples"]


def test_a_log_bias_counts_tokens_as_repeated_through_the_sampler(sd1):
    from nodes.library.conditioning import CLIPTextEncode

    text = CLIPTextEncode().run(FakeContext(), "a cat", sd1.clip)[0][0][0]
    negative = CLIPTextEncode().run(FakeContext(), "", sd1.clip)[0]
    style = 3.0 * torch.randn(1, 4, text.shape[-1], generator=torch.Generator().manual_seed(3))
    appended = torch.cat([text, style], 1)

    def biased(strength):
        return [[appended, {OPTION: append_bias({}, text.shape[1], 4, strength)}]]

    # with CFG the biased positive rows share a UNet call with the unbiased negative ones (of another token count)
    twice_cfg = _sample(sd1.model, [[torch.cat([text, style, style], 1), {}]], negative, cfg=3.0)
    assert_close_to_scale(_sample(sd1.model, biased(2.0), negative, cfg=3.0), twice_cfg)
    twice = _sample(sd1.model, [[torch.cat([text, style, style], 1), {}]], negative)
    assert_close_to_scale(_sample(sd1.model, biased(2.0), negative), twice)
    half = _sample(sd1.model, [[torch.cat([text, text, style], 1), {}]], negative)  # the text twice: style halved
    assert_close_to_scale(_sample(sd1.model, biased(0.5), negative), half)
    once = _sample(sd1.model, [[appended, {}]], negative)
    assert (twice - once).abs().max() > 1e-3 and (half - once).abs().max() > 1e-3
    assert_close_to_scale(_sample(sd1.model, biased(1.0), negative), once)  # log 1 = 0: no change
