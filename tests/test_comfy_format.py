"""ComfyUI interoperability of the workflow format: API and UI import, API export."""
from __future__ import annotations

import pytest

from graph.comfy_format import detect_format, to_comfy_api
from graph.errors import WorkflowError
from graph.workflow import Link, parse_workflow
from toy_nodes import wf

API = {
    "1": {"class_type": "Number", "inputs": {"value": 4}, "_meta": {"title": "Four"}},
    "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 5}},
    "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
}


def test_api_format_runs_unchanged(toy_engine):
    assert detect_format(API) == "comfy_api"
    workflow = parse_workflow(API, toy_engine.registry)
    assert workflow.nodes["2"].inputs["a"] == Link(node="1", output=0)
    assert workflow.nodes["1"].title == "Four"
    assert toy_engine.run(workflow).outputs["3"] == {"text": ["9"]}


def test_api_inputs_unknown_to_a_known_node_are_dropped_and_listed(toy_engine):
    api = {**API, "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 5, "new_option": True}}}
    workflow = parse_workflow(api, toy_engine.registry)
    assert "new_option" not in workflow.nodes["2"].inputs
    assert workflow.meta["dropped_inputs"] == ["2.new_option"]
    assert toy_engine.run(workflow).outputs["3"] == {"text": ["9"]}


def test_api_export_round_trip(toy_registry):
    native = parse_workflow(wf({"1": ("Number", {"value": 4}), "2": ("Add", {"a": ("1", "INT"), "b": 5}),
                                "3": ("Show", {"value": ("2", "sum")})}))
    api = to_comfy_api(native, toy_registry)
    assert api["2"]["inputs"] == {"a": ["1", 0], "b": 5}
    assert api["3"] == {"class_type": "Show", "inputs": {"value": ["2", 0]}, "_meta": {"title": "Show"}}
    again = parse_workflow(api, toy_registry)
    assert to_comfy_api(again, toy_registry) == api


def test_literal_lists_travel_wrapped(toy_registry):
    native = parse_workflow(wf({"1": ("Text", {"text": "x"}), "2": ("Show", {"value": ("1", 0)})}))
    native.nodes["1"].inputs["text"] = [1, 2]
    api = to_comfy_api(native, toy_registry)
    assert api["1"]["inputs"]["text"] == {"__value__": [1, 2]}
    assert parse_workflow(api, toy_registry).nodes["1"].inputs["text"] == [1, 2]


def ui_workflow(version, links):
    return {
        "version": version,
        "nodes": [
            {"id": 1, "type": "RandomPick", "pos": [10, 20], "size": [200, 80], "inputs": [],
             "outputs": [{"name": "INT", "type": "INT", "links": [1]}], "widgets_values": [7, "fixed"]},
            {"id": 2, "type": "Scale", "pos": [300, 20], "inputs": [{"name": "x", "type": "INT", "link": 1, "widget": {"name": "x"}}],
             "outputs": [{"name": "FLOAT", "type": "FLOAT", "links": [2]}], "widgets_values": [3, 2.5, "floor"]},
            {"id": 5, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": 2}],
             "outputs": [{"name": "", "type": "*", "links": [3]}]},
            {"id": 3, "type": "Show", "inputs": [{"name": "value", "type": "*", "link": 3}], "outputs": []},
            {"id": 4, "type": "Note", "widgets_values": ["hello"]},
            {"id": 6, "type": "Show", "mode": 2, "inputs": [{"name": "value", "type": "*", "link": None}]},
        ],
        "links": links,
        "groups": [{"title": "g", "bounding": [0, 0, 10, 10]}],
    }


@pytest.mark.parametrize("version,links", [
    (0.4, [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 5, 0, "FLOAT"], [3, 5, 0, 3, 0, "*"]]),
    (1, [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "INT"},
         {"id": 2, "origin_id": 2, "origin_slot": 0, "target_id": 5, "target_slot": 0, "type": "FLOAT"},
         {"id": 3, "origin_id": 5, "origin_slot": 0, "target_id": 3, "target_slot": 0, "type": "*"}]),
])
def test_ui_format_import(toy_engine, version, links):
    data = ui_workflow(version, links)
    assert detect_format(data) == "comfy_ui"
    workflow = parse_workflow(data, toy_engine.registry)
    assert set(workflow.nodes) == {"1", "2", "3"}  # note, reroute and muted node dropped
    assert workflow.nodes["1"].inputs == {"seed": 7}  # control_after_generate value skipped
    assert workflow.nodes["2"].inputs == {"x": Link(node="1", output="INT"), "factor": 2.5, "mode": "floor"}
    assert workflow.nodes["3"].inputs == {"value": Link(node="2", output="FLOAT")}  # through the reroute
    assert workflow.layout.nodes["1"].pos == (10, 20)
    assert toy_engine.run(workflow).outputs["3"] == {"text": [repr(7 * 2.5)]}


def test_ui_format_with_unknown_node_is_an_error(toy_registry):
    data = {"nodes": [{"id": 1, "type": "Mystery", "widgets_values": []}], "links": []}
    with pytest.raises(WorkflowError) as info:
        parse_workflow(data, toy_registry)
    assert info.value.errors[0].kind == "unknown_node_type"


def test_not_a_workflow():
    with pytest.raises(WorkflowError) as info:
        parse_workflow([1, 2, 3])
    assert "not a workflow" in info.value.errors[0].message
