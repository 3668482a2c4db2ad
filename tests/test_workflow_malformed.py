"""No malformed workflow crashes parsing or validation: each gets structured errors of a declared kind (issue: "no
input crashes anything"); cycles give one bounded error; validation output stays bounded on 10,000-node graphs."""
from __future__ import annotations

import json

import pytest

from graph.errors import KINDS, WorkflowError
from graph.validate import all_errors, validate
from graph.workflow import loads, parse_workflow
from malformed_workflows import CASES, DEEP_TEXT, LONG_INT_TEXT
from toy_nodes import wf


def problems(data, registry, paths):
    """Structured errors from parsing and validating ``data`` (an empty list when it is valid)."""
    try:
        workflow = parse_workflow(data, registry)
    except WorkflowError as exc:
        return exc.errors
    return all_errors(workflow, registry, paths)


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_gives_structured_errors(name, toy_registry, toy_paths):
    errors = problems(CASES[name], toy_registry, toy_paths)
    if name in ("native id superscript two", "api id superscript two", "string of digits"):
        assert errors == []  # odd but valid
        return
    assert errors, name
    for err in errors:
        data = err.to_dict()
        assert err.kind in KINDS and data["message"]
        assert len(json.dumps(data)) < 4000  # echoed values are cut short


@pytest.mark.parametrize("text", [DEEP_TEXT, LONG_INT_TEXT, "{", "\ud800"])
def test_bad_json_text(text, toy_registry):
    with pytest.raises(WorkflowError) as info:
        loads(text, toy_registry)
    assert info.value.errors[0].kind == "invalid_json"


def test_unknown_ui_types_are_all_listed_with_id_title_and_type(toy_registry, toy_paths):
    errors = problems(CASES["ui unknown types"], toy_registry, toy_paths)
    assert [(e.kind, e.node_id, e.node_type, e.details["title"]) for e in errors] == [
        ("unknown_node_type", "1", "Mystery", "What"), ("unknown_node_type", "2", "Other", "Other")]


def test_self_containing_subgraph_is_an_error(toy_registry, toy_paths):
    [err] = problems(CASES["ui self-containing subgraph"], toy_registry, toy_paths)
    assert err.kind == "invalid_workflow" and "contains itself" in err.message


def test_file_names_no_file_can_have(toy_registry, toy_paths):
    for case in ("file name NUL", "file name 300 bytes", "file name 5000 bytes"):
        [err] = [e for e in problems(CASES[case], toy_registry, toy_paths) if e.kind != "no_outputs"]
        assert err.kind == "file_not_found" and "not valid" in err.message and err.input == "name"


def ring(n: int) -> dict:
    nodes = {str(i): ("Add", {"a": (str((i + 1) % n), "sum")}) for i in range(n)}
    nodes["show"] = ("Show", {"value": ("0", "sum")})
    return wf(nodes)


def test_one_bounded_error_per_cycle_on_10k_nodes(toy_registry, toy_paths):
    workflow = parse_workflow(ring(10_000), toy_registry)
    errors = all_errors(workflow, toy_registry, toy_paths)
    assert [e.kind for e in errors] == ["cycle"]
    assert errors[0].details == {"size": 10_000} and len(errors[0].value) == 20
    assert len(json.dumps([e.to_dict() for e in errors])) < 2_000


def test_validation_output_of_10k_bad_nodes_is_linear(toy_registry, toy_paths):
    big = "x" * 100_000
    nodes = {str(i): ("Scale", {"x": (str(i - 1), "sum") if i else 1, "mode": big, "factor": 99})
             for i in range(10_000)}
    workflow = parse_workflow(wf(nodes, outputs=["9999"]), toy_registry)
    _, errors = validate(workflow, toy_registry, toy_paths)
    size = len(json.dumps([e.to_dict() for e in errors]))
    assert len(errors) >= 20_000 and size < 10_000 * 1_500  # per node: bounded, whatever the input holds
