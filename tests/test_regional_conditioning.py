"""Regional conditioning (ConditioningSetArea, ConditioningSetMask, ConditioningCombine) against a formula written
out here: the guided denoiser's output for a tiny case, computed by hand from the source UNet's noise predictions.

The reference does not use Chisel's guidance code: it calls the diffusers UNet the tiny checkpoint was written from,
on the whole latent or on the area's crop, and combines the denoised predictions by the regional rule (each entry's
prediction weighted by its strength x mask x edge ramp, divided by the summed weights, then classifier-free
guidance against the negative).
"""
from __future__ import annotations

import torch
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import assert_close_to_scale, tiny_file, tiny_model

from nodes.library.conditioning import ConditioningCombine, ConditioningSetArea, ConditioningSetMask, CLIPTextEncode
from nodes.memory.manager import ModelManager
from nodes.sampling.guidance import Guider

H = W = 32  # latent cells (256 x 256 pixels): areas of >= 16 cells get the full 8-cell edge ramp
T = 500  # a training timestep: sigma is the schedule's own value there, so the UNet sees timestep 500 exactly


def _sd1_sigma(t: int) -> float:
    """SD1's discrete schedule (scaled_linear betas 0.00085..0.012 over 1000 steps), computed here in float64."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    return float(((1 - ac[t]) / ac[t]) ** 0.5)


def _ramp(h: int, w: int, right_edge_inner: bool) -> torch.Tensor:
    """The area's weight: 1 inside, a linear ramp (k/8 for the k-th cell, k = 1..8) towards an edge that lies inside
    the image (edges on the image border are not ramped)."""
    f = torch.ones(h, w, dtype=torch.float64)
    if right_edge_inner:
        for k in range(1, 9):
            f[:, w - k] *= k / 8
    return f


def test_area_and_mask_regions_combine_as_weighted_average_of_unet_predictions():
    mgr = ModelManager("cpu")
    bundle = mgr.load_checkpoint(tiny_file("sd1", "fp32"))
    enc = CLIPTextEncode()
    a = enc.run(None, text="a blue sky", clip=bundle.clip)[0]
    b = enc.run(None, text="a red house", clip=bundle.clip)[0]
    c = enc.run(None, text="green grass", clip=bundle.clip)[0]
    n = enc.run(None, text="blurry", clip=bundle.clip)[0]

    s_area, s_mask, cfg = 1.7, 0.6, 4.0
    # area B: the left half of the image (x 0..127 px, full height); its right edge lies inside the image
    area_b = ConditioningSetArea().run(None, conditioning=b, width=128, height=256, x=0, y=0, strength=s_area)[0]
    # mask C at latent resolution (no resampling involved): a ramp over x, zero in the top quarter
    mask = torch.linspace(0.0, 1.0, W).repeat(H, 1)
    mask[: H // 4] = 0.0
    mask_c = ConditioningSetMask().run(None, conditioning=c, mask=mask[None], strength=s_mask,
                                       set_cond_area="default")[0]
    positive = ConditioningCombine().run(None, conditioning_1=ConditioningCombine().run(
        None, conditioning_1=a, conditioning_2=area_b)[0], conditioning_2=mask_c)[0]

    x = torch.randn(1, 4, H, W, generator=torch.Generator().manual_seed(1)) * 3.0
    sigma = _sd1_sigma(T)
    den = Guider.cfg(bundle.model, positive, n, cfg).denoiser(torch.zeros(1, 4, H, W), None, None, (H * 8, W * 8))
    with torch.inference_mode():
        got = den(x, torch.tensor([sigma], dtype=torch.float32))
    assert den.model.model_sampling.timestep(torch.tensor([sigma])).item() == T

    # -- the reference, by hand -----------------------------------------------------------------------------------
    unet = tiny_model("sd1").unet.float()
    x64 = x.double()

    def denoised(xs: torch.Tensor, cond) -> torch.Tensor:
        """D(x) = x - sigma * eps(x / sqrt(sigma^2 + 1), t): epsilon prediction in k-diffusion's sigma space."""
        emb = cond[0][0].float()
        with torch.no_grad():
            eps = unet((xs / (sigma ** 2 + 1) ** 0.5).float(), torch.tensor([float(T)]),
                       encoder_hidden_states=emb).sample
        return xs - sigma * eps.double()

    d_a, d_n, d_c = denoised(x64, a), denoised(x64, n), denoised(x64, c)
    d_b = denoised(x64[:, :, :, : W // 2], b)
    w_b = torch.zeros(H, W, dtype=torch.float64)
    w_b[:, : W // 2] = s_area * _ramp(H, W // 2, right_edge_inner=True)
    w_c = s_mask * mask.double()
    sum_b = torch.zeros_like(x64)
    sum_b[:, :, :, : W // 2] = d_b
    positive_pred = (d_a + w_b * sum_b + w_c * d_c) / (1.0 + w_b + w_c)
    expected = d_n + cfg * (positive_pred - d_n)

    # float32 UNet passes batched differently (one batch of 3 full-frame entries + 1 crop vs single calls): a few
    # float32 ulp per accumulated operation relative to the magnitudes (assert_close_to_scale's 1e-4 x scale)
    assert_close_to_scale(got.double(), expected, rel=1e-4)
    scale = expected.abs().max().item()

    # controls: each ingredient of the rule moves the result far beyond the tolerance, so the check can fail
    flat_b = torch.zeros(H, W, dtype=torch.float64)
    flat_b[:, : W // 2] = s_area  # no edge ramp
    no_ramp = d_n + cfg * ((d_a + flat_b * sum_b + w_c * d_c) / (1.0 + flat_b + w_c) - d_n)
    no_mask = d_n + cfg * ((d_a + w_b * sum_b + s_mask * d_c) / (1.0 + w_b + s_mask) - d_n)
    whole_frame_b = d_n + cfg * ((d_a + w_b * denoised(x64, b) + w_c * d_c) / (1.0 + w_b + w_c) - d_n)
    for name, wrong in (("no edge ramp", no_ramp), ("mask ignored", no_mask), ("area not cropped", whole_frame_b)):
        off = (got.double() - wrong).abs().max().item()
        assert off > 1e-2 * scale, f"{name}: {off:.3g} vs scale {scale:.3g}"
