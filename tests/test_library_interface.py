"""The image, mask, latent, tiled-VAE, loader, text, model-patch and GLIGEN nodes are all registered with ComfyUI's
interface (input names in order, types, defaults, ranges, combo choices, optional inputs, outputs, output-node flag
and category), from the interface facts kept in tests/data/comfyui (taken from ComfyUI's /object_info)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from graph.registry import NodeRegistry
from graph.types import COMBO

DATA = [Path(__file__).parent / "data" / "comfyui" / name
        for name in ("comfyui-core-nodes.json", "comfyui-more-nodes.json")]
LIBRARY = """LatentComposite LatentCompositeMasked LatentBlend LatentCrop LatentFlip LatentRotate LatentBatch ImageBatch
ImageBlend ImageInvert ImageBlur ImageSharpen ImageCompositeMasked EmptyImage SolidMask InvertMask MaskComposite GrowMask
FeatherMask CropMask ThresholdMask MaskToImage ImageToMask SaveLatent LoadLatent LoadImageOutput VAEDecodeTiled
VAEEncodeTiled CLIPTextEncodeSDXL CLIPTextEncodeSDXLRefiner CheckpointLoader UNETLoader CLIPLoader DualCLIPLoader FreeU
FreeU_V2 ModelSamplingDiscrete PatchModelAddDownscale GLIGENLoader GLIGENTextBoxApply CLIPVisionLoader CLIPVisionEncode
unCLIPConditioning unCLIPCheckpointLoader StyleModelLoader StyleModelApply ImageOnlyCheckpointLoader""".split()
# ComfyUI's ImageCrop (not in the reference dump): image, width, height, x, y.
IMAGE_CROP = {"input": {"required": {
    "image": ["IMAGE"], "width": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
    "height": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
    "x": ["INT", {"default": 0, "min": 0, "max": 16384, "step": 1}],
    "y": ["INT", {"default": 0, "min": 0, "max": 16384, "step": 1}]}},
    "input_order": {"required": ["image", "width", "height", "x", "y"]}, "output": ["IMAGE"], "output_node": False, "category": "image/transform"}
# ComfyUI lists model families Chisel does not load; Chisel's choices must be a subset.
SUBSET_COMBOS = {("CLIPLoader", "type"), ("DualCLIPLoader", "type"),
                 ("ModelSamplingDiscrete", "sampling")}


def reference() -> dict:
    merged = {}
    for path in DATA:
        merged.update(json.loads(path.read_text()))
    ref = {name: merged[name] for name in LIBRARY}
    ref["ImageCrop"] = IMAGE_CROP
    return ref


@pytest.fixture(scope="module")
def registry():
    return NodeRegistry.discover()


def _problems(name: str, cls, ref: dict) -> list[str]:
    out = []
    spec_in = {**ref["input"].get("required", {}), **ref["input"].get("optional", {})}
    order = ref["input_order"].get("required", []) + ref["input_order"].get("optional", [])
    ours = [i.name for i in cls.inputs]
    # ComfyUI's video-only inputs (temporal tiling) are accepted but ignored: they come last.
    if ours != order:
        return [f"{name}: inputs {ours} != ComfyUI's {order}"]
    if [o.type for o in cls.outputs] != ref["output"]:
        out.append(f"{name}: outputs {[o.type for o in cls.outputs]} != {ref['output']}")
    if bool(cls.output_node) != bool(ref["output_node"]):
        out.append(f"{name}: output_node differs")
    optional = set(ref["input_order"].get("optional", []))
    for spec in cls.inputs:
        kind, *rest = spec_in[spec.name]
        opts = rest[0] if rest else {}
        if (spec.name in optional) != bool(spec.optional):
            out.append(f"{name}.{spec.name}: optional {spec.optional}, ComfyUI {spec.name in optional}")
        if kind == "COMBO" and "options" in opts:
            kind = opts["options"]
        if isinstance(kind, list):
            choices = spec.resolve_choices(None) or []
            if spec.type != COMBO:
                out.append(f"{name}.{spec.name}: type {spec.type}, ComfyUI has a combo")
            elif (name, spec.name) in SUBSET_COMBOS:
                if not choices or not set(choices) <= set(kind):
                    out.append(f"{name}.{spec.name}: {choices} not a subset of {kind}")
            elif choices != kind:
                out.append(f"{name}.{spec.name}: choices {choices} != {kind}")
            continue
        if kind.startswith("<file names") or (kind == "COMBO" and opts.get("image_upload")):
            if spec.type != COMBO or not spec.files:
                out.append(f"{name}.{spec.name}: should be a file combo")
            continue
        if spec.type != kind:
            out.append(f"{name}.{spec.name}: type {spec.type} != {kind}")
        for key in ("default", "min", "max", "step"):
            if key in opts:
                ours_v = getattr(spec, key) if key != "default" else (spec.default if spec.has_default else None)
                if ours_v != opts[key]:
                    out.append(f"{name}.{spec.name}: {key} {ours_v!r} != ComfyUI's {opts[key]!r}")
        if opts.get("multiline") and not spec.multiline:
            out.append(f"{name}.{spec.name}: should be multiline")
    return out


def test_every_library_node_is_registered_with_comfyuis_interface(registry):
    ref = reference()
    missing = sorted(set(ref) - set(registry))
    assert not missing, f"not registered: {missing}"
    problems = [p for name in sorted(ref) for p in _problems(name, registry.get(name), ref[name])]
    assert not problems, "\n".join(problems)


def test_categories_follow_comfyui(registry):
    ref = reference()
    wrong = [f"{n}: {registry.get(n).category} != {r['category']}" for n, r in ref.items()
             if "category" in r and registry.get(n).category != r["category"]]
    assert not wrong, "\n".join(wrong)
