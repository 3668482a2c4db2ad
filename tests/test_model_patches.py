"""Model patches: FreeU/FreeU_V2 change each decoder resnet's input exactly as the published rule says (checked
with NumPy's FFT on a UNet with 1x/2x/4x channel levels), only while the patched MODEL runs (the shared UNet and
the unpatched MODEL are untouched); ModelSamplingDiscrete switches the prediction type and rescales the schedule to
zero terminal SNR per Lin et al.'s Algorithm 1."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import FakeContext, assert_close_to_scale, tiny_file

from nodes.library.model_patches import FreeU, FreeU_V2, ModelSamplingDiscrete
from nodes.library.sampling import KSampler
from nodes.memory.manager import ModelManager
from nodes.patches.freeu import FreeUPatch, decoder_steps, fourier_filter
from nodes.patches.lora import patched


def _np_fourier(x: np.ndarray, scale: float) -> np.ndarray:
    f = np.fft.fftshift(np.fft.fft2(x, axes=(-2, -1)), axes=(-2, -1))
    h, w = x.shape[-2:]
    f[..., h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1] *= scale
    return np.fft.ifft2(np.fft.ifftshift(f, axes=(-2, -1)), axes=(-2, -1)).real


def test_fourier_filter_matches_numpy():
    x = torch.randn(2, 3, 8, 6, generator=torch.Generator().manual_seed(0))
    assert np.abs(fourier_filter(x, 1, 0.3).numpy() - _np_fourier(x.numpy(), 0.3)).max() < 1e-5


def _np_freeu(h: np.ndarray, skip: np.ndarray, b: float, s: float, v2: bool) -> np.ndarray:
    h = h.copy()
    half = h.shape[1] // 2
    if v2:
        m = h.mean(1, keepdims=True)
        m = (m - m.min(axis=(2, 3), keepdims=True)) / (m.max(axis=(2, 3), keepdims=True) -
                                                        m.min(axis=(2, 3), keepdims=True))
        h[:, :half] *= (b - 1) * m + 1
    else:
        h[:, :half] *= b
    return np.concatenate([h, _np_fourier(skip, s)], axis=1)


@pytest.mark.parametrize("v2", [False, True])
def test_freeu_changes_each_decoder_input_by_the_rule(v2):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 32),
                                down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                                layers_per_block=1, cross_attention_dim=8, norm_num_groups=4).eval()
    patch = FreeUPatch(1.3, 1.6, 0.7, 0.4, v2=v2)
    seen: dict[int, list] = {}
    steps = decoder_steps(unet)
    handles = [r.register_forward_pre_hook(lambda m, a, i=i: seen.setdefault(i, []).append(a[0].clone()))
               for i, (r, _) in enumerate(steps)]
    mm = SimpleNamespace(module=unet)
    args = (torch.randn(1, 4, 16, 16), torch.tensor([10.0]), torch.randn(1, 1, 8))
    with torch.no_grad():
        plain = unet(*args).sample
        with patched(mm, [patch]):
            after = [r.register_forward_pre_hook(lambda m, a, i=i: seen.setdefault(100 + i, []).append(
                a[0].clone())) for i, (r, _) in enumerate(steps)]
            freeu = unet(*args).sample
        again = unet(*args).sample
    for h in handles + after:
        h.remove()
    assert torch.equal(plain, again) and not torch.equal(plain, freeu)
    used = {32: (1.3, 0.7), 16: (1.6, 0.4)}
    assert {h for _, h in steps} >= {32, 16}
    for i, (_, h_ch) in enumerate(steps):
        original, modified = seen[i][1], seen[100 + i][0]  # [0] is the unpatched run
        if h_ch in used:
            b, s = used[h_ch]
            ref = _np_freeu(original[:, :h_ch].double().numpy(), original[:, h_ch:].double().numpy(), b, s, v2)
            assert np.abs(modified.double().numpy() - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
        else:
            assert torch.equal(modified, original)


@pytest.fixture(scope="module")
def sd1():
    return ModelManager("cpu").load_checkpoint(tiny_file("sd1", "fp32"))


def _sample(model, clip):
    from nodes.library.conditioning import CLIPTextEncode

    cond = CLIPTextEncode().run(FakeContext(), "a cat", clip)[0]
    return KSampler().run(FakeContext(), model, 3, 2, 5.0, "euler", "normal", cond, cond,
                          {"samples": torch.zeros(1, 4, 8, 8)}, 1.0)[0]["samples"]


def test_freeu_acts_only_on_the_patched_model_while_it_samples(sd1):
    base = _sample(sd1.model, sd1.clip)
    neutral = FreeU().run(None, sd1.model, 1.0, 1.0, 1.0, 1.0)[0]
    assert_close_to_scale(_sample(neutral, sd1.clip), base)  # b = s = 1: the identity, up to FFT rounding
    strong = FreeU_V2().run(None, sd1.model, 1.3, 1.4, 0.9, 0.2)[0]
    assert "FreeU" in repr(strong) and "FreeU" not in repr(sd1.model)
    assert strong.unet is sd1.model.unet
    out = _sample(strong, sd1.clip)
    assert (out - base).abs().max() > 1e-3
    assert torch.equal(_sample(sd1.model, sd1.clip), base)  # nothing left behind on the shared UNet


def test_model_sampling_discrete_sets_prediction_and_zero_terminal_snr(sd1):
    v = ModelSamplingDiscrete().run(None, sd1.model, "v_prediction", False)[0]
    assert v.model_sampling.prediction_type == "v_prediction"
    assert torch.equal(v.model_sampling.sigmas, sd1.model.model_sampling.sigmas)
    assert sd1.model.model_sampling.prediction_type == "epsilon"
    z = ModelSamplingDiscrete().run(None, sd1.model, "eps", True)[0].model_sampling
    ac = sd1.model.model_sampling.alphas_cumprod.double().numpy()
    root = np.sqrt(ac)
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])  # Lin et al. 2023, Algorithm 1
    want = root ** 2
    got = z.alphas_cumprod.double().numpy()
    assert np.abs(got[:-1] - want[:-1]).max() < 1e-6 and got[-1] < 1e-6 and z.zero_terminal_snr
    assert z.prediction_type == "epsilon"
    assert not torch.equal(_sample(ModelSamplingDiscrete().run(None, sd1.model, "v_prediction", False)[0],
                                   sd1.clip), _sample(sd1.model, sd1.clip))


def test_a_hooked_unet_runs_eagerly_while_the_patch_is_attached():
    """torch.compile does not guard on module hooks: a compiled UNet would silently skip FreeU's."""
    from nodes.memory.manager import ModelManager as Manager

    mgr = Manager("cpu", compile="on", compile_backend="eager")
    model = mgr.load_checkpoint(tiny_file("sd1", "fp32")).model
    with mgr.use(model.unet):
        assert model.unet.runner() is not model.unet.module  # compiled form
        with patched(model.unet, [FreeUPatch(1.1, 1.2, 0.9, 0.2)]):
            assert model.unet.runner() is model.unet.module
        assert model.unet.runner() is not model.unet.module


def _deep_shrink_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    return UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16),
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                                layers_per_block=2, cross_attention_dim=8, attention_head_dim=2,
                                norm_num_groups=4).eval()


@pytest.mark.parametrize("after_skip", [True, False])
def test_deep_shrink_runs_the_blocks_after_n_at_the_smaller_size_inside_its_window(sd1, after_skip):
    from nodes.patches.deep_shrink import DeepShrinkPatch, input_blocks

    unet = _deep_shrink_unet()
    ms = sd1.model.model_sampling
    blocks = input_blocks(unet)
    assert len(blocks) == 1 + 3 + 3 + 2  # conv_in; 2 layers + downsampler per level but the last
    n = 3  # the first level's downsampler: 32 -> 16, then shrunk to 8
    patch = DeepShrinkPatch(n, 2.0, ms.percent_to_sigma(0.0), ms.percent_to_sigma(0.35), after_skip, "bicubic",
                            "bicubic", ms)
    sizes: dict[str, list] = {"next": [], "skips": []}
    x, ctx = torch.randn(1, 4, 32, 32), torch.randn(1, 1, 8)
    early, late = ms.timestep(torch.tensor(ms.percent_to_sigma(0.1))), ms.timestep(torch.tensor(0.3))
    with torch.no_grad():
        plain_early, plain_late = unet(x, early, ctx).sample, unet(x, late, ctx).sample
        with patched(SimpleNamespace(module=unet), [patch]):
            # registered after the patch's hooks: they see what the blocks are given
            spy = [blocks[n][1].register_forward_pre_hook(lambda m, a: sizes["next"].append(tuple(a[0].shape[-2:]))),
                   unet.up_blocks[1].register_forward_pre_hook(lambda m, a, k: sizes["skips"].append(
                       [tuple(s.shape[-2:]) for s in k["res_hidden_states_tuple"]]), with_kwargs=True)]
            shrunk = unet(x, early, ctx).sample
            outside = unet(x, late, ctx).sample
            for h in spy:
                h.remove()
        again = unet(x, early, ctx).sample
    assert sizes["next"] == [(8, 8), (16, 16)]  # inside the window the next block runs at half size, outside not
    # the skips the decoder joins at that level: block n's (full size after the skip, shrunk before it), then the
    # two layers after it, which ran shrunk
    assert sizes["skips"][0] == [(16, 16) if after_skip else (8, 8), (8, 8), (8, 8)]
    assert sizes["skips"][1] == [(16, 16)] * 3
    assert shrunk.shape == x.shape and (shrunk - plain_early).abs().max() > 1e-3
    assert torch.equal(outside, plain_late) and torch.equal(again, plain_early)


def test_deep_shrink_by_one_is_the_identity(sd1):
    from nodes.patches.deep_shrink import DeepShrinkPatch

    unet = _deep_shrink_unet()
    ms = sd1.model.model_sampling
    patch = DeepShrinkPatch(2, 1.0, ms.percent_to_sigma(0.0), 0.0, True, "bilinear", "bilinear", ms)
    x, ctx, t = torch.randn(1, 4, 32, 32), torch.randn(1, 1, 8), torch.tensor([500.0])
    with torch.no_grad():
        plain = unet(x, t, ctx).sample
        with patched(SimpleNamespace(module=unet), [patch]):
            same = unet(x, t, ctx).sample
    assert torch.allclose(same, plain, atol=1e-6)


def test_patch_model_add_downscale_node_samples_a_large_latent(sd1):
    from nodes.library.model_patches import PatchModelAddDownscale

    shrunk = PatchModelAddDownscale().run(None, sd1.model, 1, 2.0, 0.0, 0.5, True, "bicubic", "bicubic")[0]
    assert "DeepShrink" in repr(shrunk)
    from nodes.library.conditioning import CLIPTextEncode

    cond = CLIPTextEncode().run(FakeContext(), "a cat", sd1.clip)[0]
    run = [KSampler().run(FakeContext(), m, 3, 2, 5.0, "euler", "normal", cond, cond,
                          {"samples": torch.zeros(1, 4, 16, 16)}, 1.0)[0]["samples"] for m in (sd1.model, shrunk)]
    assert run[1].shape == run[0].shape and (run[1] - run[0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="outside this UNet"):
        bad = PatchModelAddDownscale().run(None, sd1.model, 30, 2.0, 0.0, 0.5, True, "bicubic", "bicubic")[0]
        KSampler().run(FakeContext(), bad, 3, 1, 5.0, "euler", "normal", cond, cond,
                       {"samples": torch.zeros(1, 4, 16, 16)}, 1.0)
