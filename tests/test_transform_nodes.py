"""Latent, image and conditioning transform nodes (no model needed)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from nodes.library.conditioning import (
    ConditioningAverage,
    ConditioningCombine,
    ConditioningConcat,
    ConditioningSetArea,
    ConditioningSetMask,
    ConditioningZeroOut,
)
from nodes.library.image import (
    ImagePadForOutpaint,
    ImageScale,
    ImageScaleBy,
)
from nodes.library.mask import LoadImageMask
from nodes.library.latent import (
    LatentFromBatch,
    LatentUpscale,
    LatentUpscaleBy,
    RepeatLatentBatch,
    SetLatentNoiseMask,
)


def latent(b=2, h=8, w=12):
    return {"samples": torch.randn(b, 4, h, w, generator=torch.Generator().manual_seed(0))}


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"])
def test_latent_upscale_sizes(method):
    (out,) = LatentUpscale().run(None, latent(), method, 192, 128, "disabled")
    assert out["samples"].shape == (2, 4, 16, 24)
    (out,) = LatentUpscaleBy().run(None, latent(), method, 1.5)
    assert out["samples"].shape == (2, 4, 12, 18)
    assert torch.isfinite(out["samples"]).all()


def test_latent_upscale_keeps_aspect_when_a_side_is_zero_and_crops_center():
    (out,) = LatentUpscale().run(None, latent(), "bilinear", 0, 128, "disabled")
    assert out["samples"].shape[-2:] == (16, 24)
    (out,) = LatentUpscale().run(None, latent(), "nearest-exact", 64, 64, "center")
    assert out["samples"].shape[-2:] == (8, 8)


def test_noise_mask_checks_its_size():
    lat = latent(1, 8, 8)
    (out,) = SetLatentNoiseMask().run(None, lat, torch.ones(1, 64, 64))
    assert out["noise_mask"].shape == (1, 64, 64) and "noise_mask" not in lat
    with pytest.raises(ValueError, match="does not fit"):
        SetLatentNoiseMask().run(None, lat, torch.ones(1, 64, 128))


def test_batches_keep_their_indices():
    """LatentFromBatch and RepeatLatentBatch keep batch_index (the noise each entry gets is tested with the real
    prepare_noise in test_sampling_comfy_contract.py)."""
    lat = latent(3, 4, 4)
    (picked,) = LatentFromBatch().run(None, lat, 1, 2)
    assert picked["batch_index"] == [1, 2]
    (rep,) = RepeatLatentBatch().run(None, picked, 2)
    assert rep["samples"].shape[0] == 4 and rep["batch_index"] == [1, 2, 4, 5]
    with pytest.raises(ValueError, match="outside a batch"):
        LatentFromBatch().run(None, lat, 5, 1)


def test_image_scale_and_pad():
    img = torch.rand(1, 20, 30, 3)
    for method in ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]:
        (out,) = ImageScale().run(None, img, method, 60, 0, "disabled")
        assert out.shape == (1, 40, 60, 3) and 0 <= out.min() and out.max() <= 1
    (out,) = ImageScaleBy().run(None, img, "bilinear", 0.5)
    assert out.shape == (1, 10, 15, 3)
    padded, mask = ImagePadForOutpaint().run(None, img, 8, 0, 16, 0, 4)
    assert padded.shape == (1, 20, 54, 3) and mask.shape == (1, 20, 54)
    assert torch.equal(padded[:, :, 8:38], img)
    assert mask[0, :, :8].eq(1).all() and mask[0, :, 38:].eq(1).all()
    assert mask[0, 10, 20] == 0 and mask[0, 10, 8] == 1 and 0 < mask[0, 10, 9] < 1  # feathered edge


def test_load_image_mask(tmp_path: Path):
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    ctx = SimpleNamespace(file_path=lambda name: tmp_path / "m.png")
    (mask,) = LoadImageMask().run(ctx, "m.png", "alpha")
    assert mask.shape == (1, 4, 5) and mask[0, 0, 0] == 1 and mask[0, 1, 1] == 0
    (red,) = LoadImageMask().run(ctx, "m.png", "red")
    assert red.eq(1).all()
    (tmp_path / "bad.png").write_bytes(b"not a png")
    ctx = SimpleNamespace(file_path=lambda name: tmp_path / "bad.png")
    with pytest.raises(ValueError, match="not a readable image"):
        LoadImageMask().run(ctx, "bad.png", "alpha")


def cond(value, tokens=77, dim=8, pooled=False):
    opts = {"pooled_output": torch.full((1, 4), float(value))} if pooled else {}
    return [[torch.full((1, tokens, dim), float(value)), opts]]


def test_conditioning_ops():
    (both,) = ConditioningCombine().run(None, cond(1), cond(2))
    assert len(both) == 2
    (avg,) = ConditioningAverage().run(None, cond(1, pooled=True), cond(3, tokens=154, pooled=True), 0.25)
    assert avg[0][0].shape == (1, 77, 8) and torch.allclose(avg[0][0], torch.full((1, 77, 8), 2.5))
    assert torch.allclose(avg[0][1]["pooled_output"], torch.full((1, 4), 2.5))
    (cat,) = ConditioningConcat().run(None, cond(1), cond(2))
    assert cat[0][0].shape == (1, 154, 8)
    with pytest.raises(ValueError, match="width"):
        ConditioningConcat().run(None, cond(1), cond(2, dim=16))
    (area,) = ConditioningSetArea().run(None, cond(1), 128, 64, 32, 8, 0.7)
    assert area[0][1] == {"area": (8, 16, 1, 4), "strength": 0.7, "set_area_to_bounds": False}
    (masked,) = ConditioningSetMask().run(None, cond(1), torch.ones(8, 8), 0.5, "mask bounds")
    assert masked[0][1]["mask"].shape == (1, 8, 8) and masked[0][1]["set_area_to_bounds"] is True
    (zero,) = ConditioningZeroOut().run(None, cond(1, pooled=True))
    assert zero[0][0].abs().sum() == 0 and zero[0][1]["pooled_output"].abs().sum() == 0
