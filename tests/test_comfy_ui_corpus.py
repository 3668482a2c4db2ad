"""ComfyUI UI-format import, rule by rule: each file in tests/data/comfy_ui (written for these tests) converts to the
hand-written native workflow beside it, and both run to the same results on the toy nodes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from graph.engine import Engine
from graph.workflow import parse_workflow

DATA = Path(__file__).resolve().parent / "data" / "comfy_ui"
CORPUS = sorted(p.name.removesuffix(".ui.json") for p in DATA.glob("*.ui.json"))
SHOWN = {  # what the Show nodes print: the rules applied, worked out by hand
    "legacy_control": {"6": [repr(1234 % 97 + 99 % 97)]},
    "bypass_and_mute": {"5": ["17"]},
    "reroutes_primitives_notes": {"7": ["10.0"]},
    "group_node": {"8": ["15"], "10": ["16"]},
    "nested_subgraphs": {"3": ["104"]},
    "image_loader_upload": {"3": ["'HI THERE'"]},
}


def load(name: str, kind: str) -> dict:
    return json.loads((DATA / f"{name}.{kind}.json").read_text(encoding="utf-8"))


def test_corpus_covers_every_file():
    assert set(CORPUS) == set(SHOWN)


@pytest.mark.parametrize("name", CORPUS)
def test_ui_file_converts_to_its_native_twin_and_runs_alike(name, toy_registry, toy_paths):
    (toy_paths.dir("input") / "hello.txt").write_text("hi there", encoding="utf-8")
    converted = parse_workflow(load(name, "ui"), toy_registry)
    expected = parse_workflow(load(name, "native"), toy_registry)
    assert converted.nodes == expected.nodes
    got = Engine(toy_registry, paths=toy_paths).run(converted)
    want = Engine(toy_registry, paths=toy_paths).run(expected)
    assert got.status == want.status == "success", got.errors
    shown = {nid: out["text"] for nid, out in got.outputs.items()}
    assert shown == {nid: out["text"] for nid, out in want.outputs.items()} == SHOWN[name]


def test_layout_keeps_positions_groups_notes_and_looks(toy_registry):
    workflow = parse_workflow(load("reroutes_primitives_notes", "ui"), toy_registry)
    layout = workflow.layout
    assert layout.nodes["1"].pos == (0, 0) and layout.nodes["1"].size == (220, 60)  # {"0": x, "1": y} form
    assert layout.nodes["5"].collapsed is True and layout.nodes["5"].color == "#332922"
    assert [g["title"] for g in layout.groups] == ["Scaling"]
    assert [(n["type"], n["text"]) for n in layout.notes] == [
        ("Note", "Reroutes carry x; a primitive holds the factor."), ("MarkdownNote", "# Scale 4 by 2.5")]
    assert "2" not in layout.nodes  # reroutes are not nodes of the native graph


def test_control_value_whatever_it_holds_is_skipped(toy_registry):
    data = load("legacy_control", "ui")
    for value in (False, None, "randomize", "anything", 3):
        data["nodes"][0]["widgets_values"] = [77, value]
        assert parse_workflow(data, toy_registry).nodes["1"].inputs == {"seed": 77}


def test_proxy_widgets_of_a_subgraph_instance_set_inner_widgets(toy_registry):
    data = load("nested_subgraphs", "ui")
    outer = data["nodes"][1]
    outer["properties"]["proxyWidgets"] = [["11", "b"], ["99", "nothing"], ["11", 5]]
    outer["widgets_values"] = [7, 1, 2]
    workflow = parse_workflow(data, toy_registry)
    assert workflow.nodes["2:11"].inputs["b"] == 7 and workflow.nodes["2:10:20"].inputs["b"] == 1
