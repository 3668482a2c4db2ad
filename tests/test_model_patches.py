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
