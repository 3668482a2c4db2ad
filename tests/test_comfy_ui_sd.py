"""ComfyUI's UI format with the real node library: widget slots laid out as ComfyUI lays them out (facts from its
/object_info), every bundled workflow survives export and import, and ComfyUI's default graph with a legacy boolean
control value and a bypassed LoRA (written for this test) converts to its native twin and runs on a tiny checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graph.comfy_format import to_comfy_ui
from graph.comfy_ui_widgets import is_widget_input, widget_slots
from graph.workflow import load_file, parse_workflow
from sd_fixtures import _registry, make_engine, models_root, tiny_file

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "comfy_ui"

COMFY_SLOTS = {  # widgets_values order in ComfyUI's UI files
    "KSampler": ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
    "KSamplerAdvanced": ["add_noise", "noise_seed", "control_after_generate", "steps", "cfg", "sampler_name",
                         "scheduler", "start_at_step", "end_at_step", "return_with_leftover_noise"],
    "LoadImage": ["image", "upload"],
    "LoadImageMask": ["image", "channel", "upload"],
    "LoraLoader": ["lora_name", "strength_model", "strength_clip"],
    "CheckpointLoaderSimple": ["ckpt_name"],
    "EmptyLatentImage": ["width", "height", "batch_size"],
    "LatentUpscale": ["upscale_method", "width", "height", "crop"],
    "ImagePadForOutpaint": ["left", "top", "right", "bottom", "feathering"],
    "SaveImage": ["filename_prefix"],
}


@pytest.mark.parametrize("type_name", sorted(COMFY_SLOTS))
def test_widget_slots_of_the_classic_nodes(type_name):
    slots = widget_slots(_registry().get(type_name))
    assert [s.name if s.kind == "widget" else s.kind for s in slots] == COMFY_SLOTS[type_name]


@pytest.mark.parametrize("path", sorted((REPO / "workflows").glob("*.json")), ids=lambda p: p.stem)
def test_bundled_workflows_survive_export_and_import(path):
    registry = _registry()
    workflow = load_file(path, registry)
    back = parse_workflow(json.loads(json.dumps(to_comfy_ui(workflow, registry))), registry)
    expected = workflow.to_dict()
    for spec in expected["nodes"].values():
        for inp in registry.get(spec["type"]).inputs:
            if is_widget_input(inp) and inp.has_default:
                spec["inputs"].setdefault(inp.name, inp.default)
    got, want = back.to_dict(), parse_workflow(expected).to_dict()
    got_layout, want_layout = got.pop("layout"), want.pop("layout")
    assert got == want
    for nid, lay in want_layout.pop("nodes").items():  # the export adds a size where the file had none
        assert got_layout["nodes"][nid].items() >= lay.items()
    assert {k: v for k, v in got_layout.items() if k != "nodes"} == want_layout


def test_default_graph_with_bypassed_lora_runs_like_its_native_twin(tmp_path):
    root = models_root(tmp_path, ("tiny.safetensors", tiny_file("sd1")))
    engine, services = make_engine(root)
    ui = parse_workflow(json.loads((DATA / "sd_default_with_bypassed_lora.ui.sd.json").read_text()), engine.registry)
    native = parse_workflow(json.loads((DATA / "sd_default_with_bypassed_lora.native.sd.json").read_text()))
    assert ui.nodes == native.nodes
    result = engine.run(ui)  # the twins are equal: running the converted one on the real engine is enough
    assert result.status == "success", result.errors
    [item] = result.outputs["9"]["images"]
    with Image.open(services.paths.dir("output") / item["subfolder"] / item["filename"]) as img:
        assert img.size == (64, 64) and len(set(np.asarray(img.convert("L")).ravel().tolist())) > 1
