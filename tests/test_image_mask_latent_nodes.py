"""The image, mask and latent tool nodes, each checked against an independent statement of what it does: PIL's own
operations where PIL has them (crop, paste with a mask, transposes, channel ops, rank filters), and explicit
per-pixel NumPy formulas elsewhere. Float results compare to float32 rounding; results that go through PIL's
8-bit images compare to one or two 8-bit levels."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageChops, ImageFilter
from safetensors.torch import load_file, save_file
from sd_fixtures import FakeContext

from graph.paths import ModelPaths
from nodes.library import image as I
from nodes.library import image_postprocessing as P
from nodes.library import latent_files as LF
from nodes.library import latent_transform as LT
from nodes.library import mask as M

EPS = 1e-6
LEVEL = 1 / 255


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def to_pil(img: torch.Tensor) -> Image.Image:
    """[H, W, 3] 0..1 -> an 8-bit PIL image (the reference side)."""
    return Image.fromarray((img.numpy() * 255).round().astype(np.uint8))


def from_pil(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)


def quantised(img: torch.Tensor) -> torch.Tensor:
    return (img * 255).round() / 255


# -- latents ----------------------------------------------------------------------------------------------------

def test_latent_composite_with_feather_matches_the_per_cell_ramp():
    to, frm = rand(2, 4, 12, 16, seed=1), rand(1, 4, 5, 6, seed=2)
    x, y, f = 24, 16, 16  # cells 3, 2; feather 2 cells
    out = LT.LatentComposite().run(None, {"samples": to}, {"samples": frm}, x, y, f)[0]["samples"]
    ref = to.numpy().copy()
    cx, cy, cf, h, w = 3, 2, 2, 5, 6
    for i in range(h):
        for j in range(w):
            wgt = 1.0
            if i < cf:
                wgt *= (i + 1) / cf  # top edge is inside (y != 0)
            if i >= h - cf:
                wgt *= (h - i) / cf  # bottom edge inside (2 + 5 < 12)
            if j < cf:
                wgt *= (j + 1) / cf
            if j >= w - cf:
                wgt *= (w - j) / cf
            ref[:, :, cy + i, cx + j] = wgt * frm.numpy()[0, :, i, j] + (1 - wgt) * ref[:, :, cy + i, cx + j]
    assert np.abs(out.numpy() - ref).max() < EPS
    # at the corner and cut off at the far edge: no feather on the border edges, the overhang is dropped
    out2 = LT.LatentComposite().run(None, {"samples": to}, {"samples": rand(2, 4, 20, 20)}, 0, 0, 0)[0]["samples"]
    assert torch.equal(out2, rand(2, 4, 20, 20)[..., :12, :16])


def test_latent_composite_masked_blends_by_the_mask_at_the_source_size():
    dst, src = rand(1, 4, 8, 8, seed=3), rand(1, 4, 4, 4, seed=4)
    mask = rand(1, 4, 4, seed=5)
    out = LT.LatentCompositeMasked().run(None, {"samples": dst}, {"samples": src}, 48, 8, False,
                                         mask)[0]["samples"]
    ref = dst.numpy().copy()
    for i in range(4):
        for j in range(2):  # x = 6 cells: only two columns fit
            m = mask[0, i, j].item()
            ref[0, :, 1 + i, 6 + j] = m * src[0, :, i, j].numpy() + (1 - m) * ref[0, :, 1 + i, 6 + j]
    assert np.abs(out.numpy() - ref).max() < EPS
    whole = LT.LatentCompositeMasked().run(None, {"samples": dst}, {"samples": src}, 0, 0, True, None)[0]
    assert whole["samples"].shape == dst.shape and torch.allclose(whole["samples"].mean(), src.mean(), atol=0.05)


def test_latent_blend_crop_flip_rotate_and_batch():
    a, b = rand(2, 4, 6, 10, seed=6), rand(2, 4, 6, 10, seed=7)
    out = LT.LatentBlend().run(None, {"samples": a}, {"samples": b}, 0.3)[0]["samples"]
    assert np.abs(out.numpy() - (0.3 * a.numpy() + 0.7 * b.numpy())).max() < EPS
    assert LT.LatentBlend().run(None, {"samples": a}, {"samples": rand(1, 4, 3, 5)}, 0.5)[0]["samples"].shape == \
        a.shape

    crop = LT.LatentCrop().run(None, {"samples": a}, 64, 32, 16, 8)[0]["samples"]
    assert torch.equal(crop, a[:, :, 1:5, 2:10])
    far = LT.LatentCrop().run(None, {"samples": a}, 64, 64, 4096, 4096)[0]["samples"]
    assert torch.equal(far, a[:, :, 5:, 9:])

    for method, op in (("x-axis: vertically", Image.Transpose.FLIP_TOP_BOTTOM),
                       ("y-axis: horizontally", Image.Transpose.FLIP_LEFT_RIGHT)):
        got = LT.LatentFlip().run(None, {"samples": a}, method)[0]["samples"]
        ref = np.asarray(Image.fromarray(a[1, 2].numpy(), "F").transpose(op))
        assert np.array_equal(got[1, 2].numpy(), ref)
    for rotation, op in (("90 degrees", Image.Transpose.ROTATE_270), ("180 degrees", Image.Transpose.ROTATE_180),
                         ("270 degrees", Image.Transpose.ROTATE_90)):  # PIL's ROTATE_n turns counter-clockwise
        got = LT.LatentRotate().run(None, {"samples": a}, rotation)[0]["samples"]
        ref = np.asarray(Image.fromarray(a[0, 3].numpy(), "F").transpose(op))
        assert np.array_equal(got[0, 3].numpy(), ref), rotation
    assert torch.equal(LT.LatentRotate().run(None, {"samples": a}, "none")[0]["samples"], a)

    batch = LT.LatentBatch().run(None, {"samples": a}, {"samples": rand(3, 4, 12, 20, seed=8)})[0]
    assert batch["samples"].shape == (5, 4, 6, 10) and torch.equal(batch["samples"][:2], a)
    assert batch["batch_index"] == [0, 1, 0, 1, 2]  # each part keeps its own noise positions, as in ComfyUI
    masked = LT.LatentBatch().run(None, {"samples": a, "noise_mask": torch.zeros(1, 6, 10)}, {"samples": b})[0]
    assert masked["noise_mask"].shape == (4, 6, 10)
    assert masked["noise_mask"][:2].sum() == 0 and masked["noise_mask"][2:].min() == 1


def test_save_and_load_latent_round_trip_in_comfyuis_layout(tmp_path):
    paths = ModelPaths(root=tmp_path)
    ctx = FakeContext(services=SimpleNamespace(paths=paths))
    lat = rand(2, 4, 5, 7, seed=9)
    res = LF.SaveLatent().run(ctx, {"samples": lat}, "latents/test")
    entry = res.ui["latents"][0]
    assert entry == {"filename": "test_00001_.latent", "subfolder": "latents", "type": "output"}
    path = paths.dir("output") / "latents" / entry["filename"]
    raw = load_file(str(path))
    assert set(raw) == {"latent_tensor", "latent_format_version_0"} and torch.equal(raw["latent_tensor"], lat)
    assert LF.SaveLatent().run(ctx, {"samples": lat}, "latents/test").ui["latents"][0]["filename"] == \
        "test_00002_.latent"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]
    back = LF.LoadLatent().run(FakeContext(files={"latent": path}), "x.latent")[0]
    assert torch.equal(back["samples"], lat)
    old = tmp_path / "old.latent"  # ComfyUI's first format stored latents times 0.18215
    save_file({"latent_tensor": lat * 0.18215}, str(old))
    back_old = LF.LoadLatent().run(FakeContext(files={"latent": old}), "old.latent")[0]["samples"]
    assert (back_old - lat).abs().max() < 1e-6
    bad = tmp_path / "bad.latent"
    save_file({"other": lat}, str(bad))
    with pytest.raises(Exception, match="latent_tensor"):
        LF.LoadLatent().run(FakeContext(files={"latent": bad}), "bad.latent")


# -- images -----------------------------------------------------------------------------------------------------

def test_image_crop_batch_invert_and_empty():
    img = quantised(rand(2, 20, 30, 3, seed=10))
    got = I.ImageCrop().run(None, img, 12, 8, 5, 6)[0]
    ref = from_pil(to_pil(img[1]).crop((5, 6, 17, 14)))
    assert got.shape == (2, 8, 12, 3) and (got[1] - ref).abs().max() < EPS
    assert I.ImageCrop().run(None, img, 50, 50, 100, 100)[0].shape == (2, 1, 1, 3)
    inv = I.ImageInvert().run(None, img)[0]
    assert (inv[0] - from_pil(ImageChops.invert(to_pil(img[0])))).abs().max() < EPS
    batch = I.ImageBatch().run(None, img, rand(1, 40, 60, 3))[0]
    assert batch.shape == (3, 20, 30, 3) and torch.equal(batch[:2], img)
    empty = I.EmptyImage().run(None, 7, 5, 2, 0x1E90FF)[0]
    assert empty.shape == (2, 5, 7, 3)
    assert torch.equal((empty[1, 4, 6] * 255).round(), torch.tensor([30.0, 144.0, 255.0]))


def test_image_composite_masked_matches_pil_paste():
    dst, src = quantised(rand(1, 24, 32, 3, seed=11)), quantised(rand(1, 10, 12, 3, seed=12))
    mask = quantised(rand(1, 10, 12, seed=13))
    got = I.ImageCompositeMasked().run(None, dst, src, 25, 3, False, mask)[0]
    ref_im = to_pil(dst[0])
    ref_im.paste(to_pil(src[0]), (25, 3), Image.fromarray((mask[0].numpy() * 255).round().astype(np.uint8), "L"))
    assert (got[0] - from_pil(ref_im)).abs().max() <= 2 * LEVEL
    opaque = I.ImageCompositeMasked().run(None, dst, src, 4, 5, False, None)[0]
    ref_im = to_pil(dst[0])
    ref_im.paste(to_pil(src[0]), (4, 5))
    assert (opaque[0] - from_pil(ref_im)).abs().max() < EPS


def _np_gauss_blur(img: np.ndarray, r: int, sigma: float) -> np.ndarray:
    """Separable blur with weights exp(-t²/2σ²) at 2r+1 points evenly spaced over [-1, 1], reflected edges."""
    t = np.linspace(-1, 1, 2 * r + 1)
    k = np.exp(-t ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    p = np.pad(img, ((r, r), (r, r), (0, 0)), mode="reflect")
    rows = sum(k[i] * p[:, i:i + img.shape[1]] for i in range(2 * r + 1))
    return sum(k[i] * rows[i:i + img.shape[0]] for i in range(2 * r + 1))


@pytest.mark.parametrize("r, sigma", [(1, 1.0), (3, 0.5), (5, 2.0)])
def test_blur_and_sharpen_match_the_gaussian_formula(r, sigma):
    img = rand(2, 16, 14, 3, seed=14)
    got = P.ImageBlur().run(None, img, r, sigma)[0]
    ref = _np_gauss_blur(img[1].double().numpy(), r, sigma)
    assert np.abs(got[1].double().numpy() - ref).max() < 1e-5
    sharp = P.ImageSharpen().run(None, img, r, sigma, 0.4)[0]
    ref_s = np.clip(img[0].double().numpy() + 4.0 * (img[0].double().numpy() -
                                                      _np_gauss_blur(img[0].double().numpy(), r, sigma)), 0, 1)
    assert np.abs(sharp[0].double().numpy() - ref_s).max() < 1e-5


@pytest.mark.parametrize("mode", ["normal", "multiply", "screen", "overlay", "soft_light", "difference"])
def test_blend_modes_match_pil_or_the_w3c_formula(mode):
    a, b = quantised(rand(1, 9, 11, 3, seed=15)), quantised(rand(1, 9, 11, 3, seed=16))
    full = P.ImageBlend().run(None, a, b, 1.0, mode)[0][0]
    pa, pb = to_pil(a[0]), to_pil(b[0])
    if mode == "soft_light":  # PIL's soft light is another formula: state W3C's directly
        x, y = a[0].double().numpy(), b[0].double().numpy()
        g = np.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, np.sqrt(x))
        ref, tol = np.where(y <= 0.5, x - (1 - 2 * y) * x * (1 - x), x + (2 * y - 1) * (g - x)), 1e-5
    else:
        chops = {"normal": lambda p, q: q, "multiply": ImageChops.multiply, "screen": ImageChops.screen,
                 "overlay": ImageChops.overlay, "difference": ImageChops.subtract}[mode]  # ComfyUI: clamp(a - b)
        ref, tol = from_pil(chops(pa, pb)).double().numpy(), 1.01 * LEVEL
    assert np.abs(full.double().numpy() - ref).max() <= tol
    half = P.ImageBlend().run(None, a, b, 0.25, mode)[0][0]
    layer = a[0] - b[0] if mode == "difference" else full  # the clamp comes after the mix
    assert (half - (0.75 * a[0] + 0.25 * layer).clamp(0, 1)).abs().max() < 1e-5


# -- masks ------------------------------------------------------------------------------------------------------

def test_solid_invert_threshold_crop_and_conversions():
    assert torch.equal(M.SolidMask().run(None, 0.25, 5, 3)[0], torch.full((1, 3, 5), 0.25))
    m = rand(2, 6, 8, seed=17)
    assert torch.allclose(M.InvertMask().run(None, m)[0], 1 - m)
    assert np.array_equal(M.ThresholdMask().run(None, m, 0.5)[0].numpy(), (m.numpy() > 0.5).astype(np.float32))
    assert torch.equal(M.CropMask().run(None, m, 2, 1, 3, 10)[0], m[:, 1:, 2:5])
    img = M.MaskToImage().run(None, m)[0]
    assert img.shape == (2, 6, 8, 3) and all(torch.equal(img[..., c], m) for c in range(3))
    rgba = rand(1, 6, 8, 4, seed=18)
    pil = Image.fromarray((rgba[0].numpy() * 255).round().astype(np.uint8), "RGBA")
    for ch, band in zip(M.IMAGE_CHANNELS, "RGBA"):
        got = M.ImageToMask().run(None, quantised(rgba), ch)[0]
        assert (got[0] - from_pil(pil.getchannel(band))).abs().max() < EPS
    with pytest.raises(ValueError, match="alpha"):
        M.ImageToMask().run(None, rgba[..., :3], "alpha")


@pytest.mark.parametrize("op", M.MASK_OPERATIONS)
def test_mask_composite_matches_the_per_pixel_rule(op):
    d, s = rand(1, 7, 9, seed=19), rand(1, 4, 5, seed=20)
    got = M.MaskComposite().run(None, d, s, 6, 2, op)[0]
    ref = d[0].double().numpy().copy()
    for i in range(4):
        for j in range(3):  # columns 6..8 only
            a, b = ref[2 + i, 6 + j], s[0, i, j].item()
            v = {"multiply": a * b, "add": a + b, "subtract": a - b, "and": float(round(a) and round(b)),
                 "or": float(round(a) or round(b)), "xor": float(round(a) != round(b))}[op]
            ref[2 + i, 6 + j] = min(1.0, max(0.0, v))
    assert np.abs(got[0].double().numpy() - ref).max() < EPS


def _np_morph(m: np.ndarray, steps: int, tapered: bool) -> np.ndarray:
    offs = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)] if tapered else [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    h, w = m.shape
    for _ in range(abs(steps)):
        out = m.copy()
        for i in range(h):
            for j in range(w):
                vals = [m[min(h - 1, max(0, i + a)), min(w - 1, max(0, j + b))] for a, b in offs]
                out[i, j] = max(vals) if steps > 0 else min(vals)
        m = out
    return m


@pytest.mark.parametrize("expand, tapered", [(2, False), (3, True), (-2, False), (-1, True)])
def test_grow_mask_matches_rank_filters(expand, tapered):
    m = (rand(1, 12, 13, seed=21) > 0.8).float()
    if expand < 0:
        m = 1 - m
    got = M.GrowMask().run(None, m, expand, tapered)[0][0].numpy()
    if not tapered:  # PIL's 3x3 max/min filter, once per pixel of growth
        im = Image.fromarray(m[0].numpy(), "F")
        for _ in range(abs(expand)):
            im = im.filter(ImageFilter.MaxFilter(3) if expand > 0 else ImageFilter.MinFilter(3))
        assert np.array_equal(got, np.asarray(im))
    assert np.array_equal(got, _np_morph(m[0].numpy(), expand, tapered))


def test_feather_mask_scales_each_edge_band():
    m = torch.ones(1, 10, 12)
    got = M.FeatherMask().run(None, m, 3, 2, 0, 4)[0][0].numpy()
    ref = np.ones((10, 12))
    for i in range(10):
        for j in range(12):
            if j < 3:
                ref[i, j] *= (j + 1) / 3
            if i < 2:
                ref[i, j] *= (i + 1) / 2
            if i >= 10 - 4:
                ref[i, j] *= (10 - i) / 4
    assert np.abs(got - ref).max() < EPS


def test_load_image_output_reads_the_output_folder(tmp_path):
    img = quantised(rand(9, 7, 3, seed=22))
    out = ModelPaths(root=tmp_path).dir("output")
    to_pil(img).save(out / "done.png")
    image, mask = I.LoadImageOutput().run(FakeContext(files={"image": out / "done.png"}), "done.png")
    assert image.shape == (1, 9, 7, 3) and (image[0] - img).abs().max() < EPS and mask.abs().max() == 0


def test_save_latent_through_the_engine_carries_the_workflow_and_loads_back(tmp_path):
    import json

    from safetensors import safe_open
    from sd_fixtures import make_engine

    eng, _ = make_engine(tmp_path)
    wf = {"format": "chisel-workflow", "version": 1, "nodes": {
        "1": {"type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 2}},
        "2": {"type": "LatentFlip", "inputs": {"samples": {"node": "1", "output": "LATENT"}, "flip_method": "y-axis: horizontally"}},
        "3": {"type": "SaveLatent", "inputs": {"samples": {"node": "2", "output": "LATENT"}, "filename_prefix": "latents/run"}}}}
    result = eng.run(wf)
    assert result.status == "success", result.errors
    path = tmp_path / "output" / "latents" / "run_00001_.latent"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert f.get_tensor("latent_tensor").shape == (2, 4, 6, 8)
    assert json.loads(meta["workflow"])["nodes"]["3"]["type"] == "SaveLatent"
    assert json.loads(meta["prompt"])["2"]["class_type"] == "LatentFlip"
    (tmp_path / "input").mkdir(exist_ok=True)
    path.rename(tmp_path / "input" / "run.latent")
    back = eng.run({"format": "chisel-workflow", "version": 1, "nodes": {
        "1": {"type": "LoadLatent", "inputs": {"latent": "run.latent"}},
        "2": {"type": "LatentBatch", "inputs": {"samples1": {"node": "1", "output": "LATENT"}, "samples2": {"node": "1", "output": "LATENT"}}},
        "3": {"type": "SaveLatent", "inputs": {"samples": {"node": "2", "output": "LATENT"}, "filename_prefix": "again"}}}})
    assert back.status == "success", back.errors
    assert load_file(str(tmp_path / "output" / "again_00001_.latent"))["latent_tensor"].shape == (4, 4, 6, 8)
