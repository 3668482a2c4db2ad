"""Model loading through the engine: the loader nodes report their stages as progress ("loading"), an interrupt at any
stage stops the load and leaves nothing half-loaded in the model manager, and SaveImage stops between images on an
interrupt while its result still names every file it wrote. Real tiny checkpoints (the real file layout), the real
engine; the interrupt is set from the event stream, at the moment a given stage is announced."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from sd_fixtures import make_engine, models_root, tiny_file

from nodes.loading.checkpoint import CHECKPOINT_STAGES
from nodes.loading.vae_file import VAE_STAGES
from nodes.loading.weights import read_header

pytestmark = pytest.mark.timeout(300)


def loader_workflow(ckpt: str = "tiny.safetensors", vae: str | None = None) -> dict:
    nodes = {"1": {"type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    if vae is not None:
        nodes["2"] = {"type": "VAELoader", "inputs": {"vae_name": vae}}
    return {"format": "chisel-workflow", "version": 1, "nodes": nodes, "outputs": list(nodes)}


def _progress(events, node_id):
    return [e.data for e in events if e.type == "progress" and e.node_id == node_id]


@pytest.fixture
def root(tmp_path):
    root = models_root(tmp_path, ("tiny.safetensors", tiny_file("sd1")))
    vae = {k[len("first_stage_model."):]: v for k, v in load_file(str(tiny_file("sd1"))).items()
           if k.startswith("first_stage_model.")}
    (root / "models" / "vae").mkdir(parents=True)
    save_file(vae, str(root / "models" / "vae" / "tiny-vae.safetensors"),
              metadata={"chisel.vae": read_header(tiny_file("sd1"))[2]["chisel.vae"]})
    return root


def test_loaders_report_each_stage_as_loading_progress(root):
    engine, _ = make_engine(root)
    events = []
    result = engine.run(loader_workflow(vae="tiny-vae.safetensors"), on_event=events.append)
    assert result.status == "success", result.errors
    for node_id, stages in (("1", CHECKPOINT_STAGES), ("2", VAE_STAGES)):
        seen = _progress(events, node_id)
        assert [d["stage"] for d in seen] == list(stages)
        assert [d["value"] for d in seen] == list(range(len(stages)))  # stages done when the next one starts
        assert {d["max"] for d in seen} == {len(stages)} and {d["activity"] for d in seen} == {"loading"}
    # progress comes between the loader's executing and executed events
    order = [(e.type, e.node_id) for e in events if e.node_id == "1"]
    assert order[0] == ("executing", "1") and order[-1] == ("executed", "1")


@pytest.mark.parametrize("stage", [CHECKPOINT_STAGES[0], "building the VAE", CHECKPOINT_STAGES[-1]])
def test_an_interrupt_at_any_stage_stops_the_load_and_leaves_nothing_loaded(root, stage):
    engine, services = make_engine(root)
    flag = threading.Event()

    def on_event(e):
        if e.type == "progress" and e.data.get("stage") == stage:
            flag.set()  # as a client's interrupt arriving while this stage runs

    result = engine.run(loader_workflow(), on_event=on_event, interrupt=flag)
    assert result.status == "interrupted"
    (err,) = result.errors
    assert (err.kind, err.node_id, err.message) == ("interrupted", "1", "interrupted while running")
    manager = services.models
    assert manager.stats()["files_loaded"] == 0 and manager.modules() == [] and manager.loads == 0

    # the next run loads the file completely, once
    result = engine.run(loader_workflow())
    assert result.status == "success", result.errors
    assert manager.loads == 1 and sorted(m.name for m in manager.modules()) == ["text_encoder", "unet", "vae"]
    assert not any(p.is_meta for m in manager.modules() for p in m.module.parameters())


def test_save_image_stops_between_images_and_lists_what_it_wrote(tmp_path):
    engine, services = make_engine(tmp_path)
    workflow = {"format": "chisel-workflow", "version": 1, "nodes": {
        "1": {"type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 4, "color": 0xFF0000}},
        "2": {"type": "SaveImage", "inputs": {"images": {"node": "1", "output": "IMAGE"}, "filename_prefix": "cut"}}}}
    flag = threading.Event()

    def on_event(e):
        if e.type == "executing" and e.node_id == "2":
            flag.set()  # the interrupt arrives while SaveImage runs: it writes the image in hand, then stops

    result = engine.run(workflow, on_event=on_event, interrupt=flag)
    assert result.status == "interrupted" and [e.node_id for e in result.errors] == ["2"]
    out = services.paths.dir("output")
    on_disk = sorted(p.name for p in Path(out).iterdir())
    assert on_disk == ["cut_00001_.png"]  # one whole file, no temporary one left
    assert result.outputs["2"] == {"images": [{"filename": "cut_00001_.png", "subfolder": "", "type": "output"}]}
    assert "2" not in result.executed and json.dumps(result.to_dict())  # not cached as done; reportable

    # uninterrupted, the whole batch is written after it
    result = engine.run(workflow)
    assert result.status == "success"
    assert [i["filename"] for i in result.outputs["2"]["images"]] == [f"cut_0000{i}_.png" for i in range(2, 6)]


WARM_START = r"""
import json, sys
from pathlib import Path
from nodes.loading.libraries import import_in_background, import_model_libraries

thread = import_in_background()
import_model_libraries()  # at once, from this thread too: it waits for the other, never imports beside it
thread.join(120)
before = set(sys.modules)
sys.path.insert(0, sys.argv[2])
from sd_fixtures import make_engine
engine, _ = make_engine(Path(sys.argv[1]))
wf = json.loads(Path("workflows/txt2img.json").read_text())
wf["nodes"]["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
wf["nodes"]["3"]["inputs"]["steps"] = 1
wf["nodes"]["5"]["inputs"].update(width=64, height=64)
result = engine.run(wf)
late = sorted(m for m in set(sys.modules) - before
              if m.split(".")[0] in ("diffusers", "transformers", "accelerate", "peft", "scipy", "sympy")
              or m.startswith("torch._dynamo"))
print(json.dumps({"status": result.status, "thread_alive": thread.is_alive(), "late": late}))
"""


def test_the_warm_start_import_covers_what_the_first_prompt_needs(root):
    """In a fresh interpreter: the background import and a loader's own call meet on one import (no deadlock, no
    second import), and after it a whole txt2img run (load, encode, sample, decode, save) imports nothing more of
    the model libraries — what chisel serve imports ahead is what the first prompt would have paid for."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", WARM_START, str(root), str(Path(__file__).parent)], cwd=repo,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "success" and not out["thread_alive"]
    assert out["late"] == [], f"imported only when the prompt ran: {out['late'][:20]}"


def test_serve_imports_ahead_only_where_there_is_a_model_to_load(tmp_path):
    from graph.paths import ModelPaths
    from server.runtime import has_model_files

    paths = ModelPaths(root=tmp_path)
    assert not has_model_files(paths)  # a server of plain nodes: nothing to import ahead
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "notes.txt").write_text("not a model")
    (tmp_path / "models" / "loras").mkdir()
    (tmp_path / "models" / "loras" / "style.safetensors").write_bytes(b"")  # LoRAs need a checkpoint first
    assert not has_model_files(paths)
    folder = tmp_path / "models" / "checkpoints" / "pipeline"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    assert has_model_files(paths)
