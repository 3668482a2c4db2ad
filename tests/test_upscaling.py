"""Upscale models: tiled upscaling equals untiled where the model's context fits the blending margin, leaves no seam
where it does not, keeps every model call within the tile size and halves tiles when device memory runs out; the
spandrel loader reads an ESRGAN file in its published key layout (models/upscale_models) and the upscale hires-fix
workflow runs. The spandrel tests run spandrel itself: the test setup installs it (without torchvision where only a
torchvision that does not fit the installed torch exists, see ``_spandrel``); without it they fail."""
from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import FakeContext, assert_close_to_scale, make_engine, tiny_file

from nodes.library.upscaling import ImageUpscaleWithModel
from nodes.memory.manager import ModelManager
from nodes.upscaling.model import UpscaleModel
from nodes.upscaling.tiles import tile_starts

REPO = Path(__file__).resolve().parents[1]
MORE = Path(__file__).resolve().parent / "data" / "comfyui" / "comfyui-more-nodes.json"


def _net(depth: int, scale: int = 4, seed: int = 0) -> torch.nn.Module:
    """A small upscaler: ``depth`` 3x3 convs (context radius ``depth`` input pixels), then pixel shuffles."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = [torch.nn.Conv2d(3, 8, 3, padding=1)]
    for _ in range(depth - 1):
        layers += [torch.nn.LeakyReLU(0.2), torch.nn.Conv2d(8, 8, 3, padding=1)]
    layers += [torch.nn.Conv2d(8, 3 * scale * scale, 1), torch.nn.PixelShuffle(scale), torch.nn.Sigmoid()]
    return torch.nn.Sequential(*layers).eval()


def _handle(net, scale=4, seen=None) -> UpscaleModel:
    mgr = ModelManager("cpu")
    mm = mgr.register("upscale_model", net, "test-net", torch.float32)

    def call(x):
        if seen is not None:
            seen.append(tuple(x.shape[-2:]))
        return net(x)

    return UpscaleModel(mgr, mm, scale, "test-net", "test", call)


def _image(h, w, seed=1):
    g = torch.Generator().manual_seed(seed)
    # smooth content plus detail, like a photo: seams would show as steps
    base = torch.nn.functional.interpolate(torch.rand(1, 3, h // 8 + 1, w // 8 + 1, generator=g), size=(h, w),
                                           mode="bilinear", align_corners=False)
    return (base * 0.8 + torch.rand(1, 3, h, w, generator=g) * 0.2).permute(0, 2, 3, 1)


def test_tile_starts_cover_the_image_with_the_overlap():
    for size, tile, overlap in ((200, 64, 16), (65, 64, 16), (64, 64, 16), (1000, 512, 32), (513, 128, 32)):
        starts = tile_starts(size, tile, overlap)
        assert starts[0] == 0 and starts[-1] + min(tile, size) == size
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_tiled_equals_untiled_when_the_context_fits_the_margin():
    """Context radius 3 px, margin 4 px: each output pixel comes from a tile that saw its whole context."""
    net = _net(depth=3)
    image = _image(200, 136)
    seen: list = []
    h = _handle(net, seen=seen)
    tiled = h.upscale(image, tile=64, overlap=16)
    whole = h.upscale(image, tile=1024)
    assert tiled.shape == whole.shape == (1, 800, 544, 3)
    assert max(max(s) for s in seen[:-1]) <= 64 and len(seen) - 1 == 4 * 3  # 4 x 3 tiles, then one whole call
    assert_close_to_scale(tiled, whole, rel=1e-5)


def _blur_net(radius: int, scale: int = 2) -> torch.nn.Module:
    """An upscaler whose output depends strongly on wide context: a (2r+1)^2 box blur with zero padding (so a tile
    cut short darkens towards its edge), then a pixel shuffle."""
    conv = torch.nn.Conv2d(3, 3 * scale * scale, 2 * radius + 1, padding=radius, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(3):
            conv.weight[c * scale * scale:(c + 1) * scale * scale, c] = 1.0 / (2 * radius + 1) ** 2
    return torch.nn.Sequential(conv, torch.nn.PixelShuffle(scale)).eval()


def test_no_seams_when_the_context_is_wider_than_the_margin():
    """Context radius 10 px over a 4 px margin: near a cut edge a tile sees zeros instead of the neighbouring
    pixels. Stitched tiles (no overlap) show that as a step at every tile border; the blend spreads the difference
    over the overlap, so the tiled image's largest jump between neighbouring pixels stays that of the untiled image."""
    net = _blur_net(10)
    image = _image(160, 160)
    h = _handle(net, scale=2)
    whole = h.upscale(image, tile=1024)[0]
    blended = h.upscale(image, tile=64, overlap=16)[0]
    x = image.permute(0, 3, 1, 2)
    with torch.no_grad():  # the naive way: disjoint tiles put side by side
        stitched = torch.cat([torch.cat([net(x[:, :, i:i + 64, j:j + 64]) for j in range(0, 160, 64)], 3)
                              for i in range(0, 160, 64)], 2)[0].permute(1, 2, 0)

    def steps(img):  # largest jump between neighbours, away from the image border (zero padding darkens it)
        img = img[24:-24, 24:-24]
        return max((img[1:] - img[:-1]).abs().max().item(), (img[:, 1:] - img[:, :-1]).abs().max().item())

    print(f"largest neighbour step: untiled {steps(whole):.4f}, blended {steps(blended):.4f}, "
          f"stitched {steps(stitched):.4f}; blended vs untiled max {(blended - whole).abs().max():.3f}")
    assert steps(stitched) > 3 * steps(whole)  # the control: cut-off context does show
    assert steps(blended) <= steps(whole) * 1.25


def test_out_of_memory_halves_the_tile_and_the_result_is_unchanged():
    net = _net(depth=3)
    image = _image(96, 96)
    seen: list = []

    def call(x):
        if max(x.shape[-2:]) > 64:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated for tiles over 64 px)")
        seen.append(tuple(x.shape[-2:]))
        return net(x)

    h = _handle(net)
    h.call = call
    out = h.upscale(image, tile=256, overlap=16)
    assert seen and max(max(s) for s in seen) <= 64
    assert_close_to_scale(out, _handle(net).upscale(image, tile=1024), rel=1e-5)


def test_upscale_node_reports_progress_per_tile():
    ctx = FakeContext()
    image = _image(600, 100)
    out = ImageUpscaleWithModel().run(ctx, upscale_model=_handle(_net(2, scale=2), scale=2), image=image)[0]
    assert out.shape == (1, 1200, 200, 3) and 0 <= out.min() and out.max() <= 1
    assert [e[:2] for e in ctx.events] == [(1, 2), (2, 2)]  # 512-px tiles: two along the height


def test_wrong_channels_are_refused():
    with pytest.raises(ValueError, match="3-channel"):
        _handle(_net(2)).upscale(torch.rand(1, 32, 32, 1))


# -- spandrel: real files in the published layout -------------------------------------------------------------------

def _spandrel():
    """spandrel, imported for real. It imports torchvision at import time for two architectures these tests never
    load (LaMa, RestoreFormer: ``torchvision.transforms.functional``). Where torchvision cannot be imported (a CPU-only
    torch beside PyPI's Linux torchvision wheels, which are CUDA builds), those two imports get a stand-in whose
    functions raise if called, only while spandrel is imported; every architecture the tests use is spandrel's own
    code."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:  # noqa: BLE001 - missing (ModuleNotFoundError) or built for another torch (RuntimeError)
        _import_with_torchvision_stand_in()
    try:
        import spandrel
    except ModuleNotFoundError as exc:
        pytest.fail(f"spandrel is not installed ({exc}); run `make setup` (scripts/setup.sh installs it for the tests)")
    return spandrel


def _import_with_torchvision_stand_in() -> None:
    def unusable(*_args, **_kwargs):
        raise RuntimeError("torchvision stand-in: this architecture needs a real torchvision")

    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    saved = {name: sys.modules.get(name) for name in names}
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.normalize = functional.rotate = unusable
    functional.InterpolationMode = types.SimpleNamespace(NEAREST="nearest", BILINEAR="bilinear", BICUBIC="bicubic")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    package = types.ModuleType("torchvision")
    package.transforms = transforms
    sys.modules.update(zip(names, (package, transforms, functional)))
    try:
        import spandrel  # noqa: F401 - binds the stand-in's names inside spandrel, then the stand-in goes
    except ModuleNotFoundError:
        pass  # not installed: _spandrel says so
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def write_esrgan(path: Path, nf: int = 8, gc: int = 32, blocks: int = 1, scale: int = 4, seed: int = 0) -> Path:
    """A tiny ESRGAN (RRDBNet) in the original key layout of ESRGAN .pth files: model.0 (first conv),
    model.1.sub.N.RDBk.convj.0 (residual dense blocks; 32 growth channels, as in every ESRGAN), model.1.sub.<blocks>
    (trunk conv), an upsample conv per 2x
    (model.3, model.6, ...), then the HR conv and the last conv."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name, cout, cin, k=3):
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (0.5 / (cin * k * k) ** 0.5)
        state[f"{name}.bias"] = torch.zeros(cout)

    conv("model.0", nf, 3)
    for b in range(blocks):
        for r in (1, 2, 3):
            for j in range(1, 6):
                conv(f"model.1.sub.{b}.RDB{r}.conv{j}.0", nf if j == 5 else gc, nf + (j - 1) * gc)
    conv(f"model.1.sub.{blocks}", nf, nf)
    ups = scale.bit_length() - 1
    for u in range(1, ups + 1):
        conv(f"model.{3 * u}", nf, nf)
    conv(f"model.{3 * ups + 2}", nf, nf)
    conv(f"model.{3 * ups + 4}", 3, nf)
    save_file(state, str(path))
    return path


def test_spandrel_loads_an_esrgan_file_and_tiles_match_spandrel_untiled(tmp_path):
    spandrel = _spandrel()
    from nodes.upscaling.model import load

    from nodes.upscaling.model import UPSCALE_STAGES

    path = write_esrgan(tmp_path / "4x-tiny-esrgan.safetensors")
    seen = []
    model = load(ModelManager("cpu"), path, lambda value, total, *, activity, stage: seen.append((value, total, stage)))
    assert model.scale == 4 and model.architecture == "ESRGAN"
    assert seen == [(i, 3, name) for i, name in enumerate(UPSCALE_STAGES)]
    image = _image(80, 72)
    ours = model.upscale(image, tile=32, overlap=16)
    ref = spandrel.ModelLoader().load_from_file(str(path)).eval()(image.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert ours.shape == ref.shape == (1, 320, 288, 3)
    assert (ours - ref).abs().mean() < 2e-3  # tiles see less context than the whole image; no seam (see above)
    assert_close_to_scale(model.upscale(image, tile=1024), ref, rel=1e-5)


def test_spandrel_loader_names_other_model_files(tmp_path):
    _spandrel()
    from nodes.loading.errors import WrongFileKind
    from nodes.upscaling.model import load

    with pytest.raises(WrongFileKind, match="Stable Diffusion checkpoint"):
        load(ModelManager("cpu"), tiny_file("sd1"))


def test_upscale_hires_fix_workflow_runs(tmp_path):
    _spandrel()
    root = tmp_path
    (root / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_file("sd1"), root / "models" / "checkpoints" / "chisel-demo-v1.safetensors")
    (root / "models" / "upscale_models").mkdir(parents=True)
    write_esrgan(root / "models" / "upscale_models" / "4x-esrgan.safetensors")
    wf = json.loads((REPO / "workflows" / "upscale_model_hires_fix.json").read_text())
    for node in wf["nodes"].values():
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = 2
    eng, _ = make_engine(root)
    res = eng.run(wf)
    assert res.status == "success", [e.message for e in res.errors]
    from PIL import Image

    saved = res.outputs["9"]["images"][0]
    assert Image.open(root / "output" / saved["filename"]).size == (128, 128)


def test_shipped_upscale_workflow_is_valid_and_laid_out():
    from graph.registry import NodeRegistry
    from graph.workflow import parse_workflow

    wf = json.loads((REPO / "workflows" / "upscale_model_hires_fix.json").read_text())
    assert wf["meta"]["title"] and len(wf["meta"]["description"]) > 80
    assert set(wf["layout"]["nodes"]) == set(wf["nodes"])
    parse_workflow(wf, NodeRegistry.discover())


@pytest.mark.parametrize("type_name", ["UpscaleModelLoader", "ImageUpscaleWithModel"])
def test_nodes_match_comfyui(type_name):
    from sd_fixtures import _registry

    ref = json.loads(MORE.read_text())[type_name]
    cls = _registry().get(type_name)
    assert [i.name for i in cls.inputs] == ref["input_order"]["required"]
    assert [o.type for o in cls.outputs] == ref["output"] and [o.name for o in cls.outputs] == ref["output_name"]
    assert cls.category == ref["category"] and cls.display_name == ref["display_name"]
    for inp in cls.inputs:
        kind = ref["input"]["required"][inp.name][0]
        assert inp.type == kind and (kind != "COMBO" or inp.files == "upscale_models")
