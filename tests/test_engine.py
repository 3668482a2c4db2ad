"""The engine on toy nodes: validation, planning, caching, events, failures, interrupts."""
from __future__ import annotations

import subprocess
import sys
import threading

import pytest

import toy_nodes
from graph import errors as E
from graph.engine import Engine
from graph.registry import DuplicateNodeError, NodeRegistry
from graph.workflow import loads
from graph.errors import WorkflowError
from toy_nodes import CALLS, wf


def chain(a=2, b=3):
    return wf({
        "1": ("Number", {"value": a}),
        "2": ("Number", {"value": b}),
        "3": ("Add", {"a": ("1", "INT"), "b": ("2", 0)}),
        "4": ("Show", {"value": ("3", "sum")}),
    })


def test_runs_in_dependency_order_and_returns_outputs(toy_engine):
    events = []
    result = toy_engine.run(chain(), on_event=events.append)
    assert result.status == "success"
    assert result.outputs["4"] == {"text": ["5"]}
    assert result.executed == ["1", "2", "3", "4"]
    types = [e.type for e in events]
    assert types[0] == "started" and types[-1] == "finished"
    assert types.count("executing") == 4 and types.count("executed") == 4
    assert set(result.timings) == {"1", "2", "3", "4"}


def test_rerun_is_fully_cached(toy_engine):
    toy_engine.run(chain())
    CALLS.clear()
    events = []
    result = toy_engine.run(chain(), on_event=events.append)
    assert CALLS == []
    assert result.executed == [] and result.cached == ["1", "2", "3", "4"]
    assert result.outputs["4"] == {"text": ["5"]}
    assert [e.type for e in events][:2] == ["started", "cached"]


def test_changing_a_literal_reruns_only_downstream(toy_engine):
    toy_engine.run(chain(2, 3))
    CALLS.clear()
    result = toy_engine.run(chain(2, 4))
    assert result.executed == ["2", "3", "4"] and result.cached == ["1"]
    assert result.explain["2"] == "input 'value' changed"
    assert result.explain["3"].startswith("upstream node 2 changed")
    assert result.outputs["4"] == {"text": ["6"]}


def test_cache_is_shared_across_workflows_with_other_ids(toy_engine):
    toy_engine.run(chain())
    renamed = wf({
        "a": ("Number", {"value": 2}), "b": ("Number", {"value": 3}),
        "c": ("Add", {"a": ("a", "INT"), "b": ("b", "INT")}), "d": ("Show", {"value": ("c", "sum")}),
    })
    result = toy_engine.run(renamed)
    assert result.executed == [] and sorted(result.cached) == ["a", "b", "c", "d"]


def test_only_ancestors_of_outputs_run(toy_engine):
    w = chain()
    w["nodes"]["9"] = {"type": "Number", "inputs": {"value": 7}}  # feeds nothing
    result = toy_engine.run(w)
    assert "9" not in result.executed
    result = toy_engine.run(w, outputs=["9"])
    assert result.executed == ["9"] and result.values["9"] == (7,)


def test_failure_fails_only_its_branch(toy_engine):
    w = wf({
        "1": ("Number", {"value": 1}),
        "2": ("Fail", {"x": ("1", 0)}),
        "3": ("Show", {"value": ("2", 0)}),
        "4": ("Add", {"a": ("1", 0), "b": 10}),
        "5": ("Show", {"value": ("4", 0)}),
    })
    events = []
    result = toy_engine.run(w, on_event=events.append)
    assert result.status == "error"
    assert result.outputs["5"] == {"text": ["11"]}
    assert result.skipped == ["3"]
    [err] = result.errors
    assert err.node_id == "2" and err.kind == E.EXECUTION_FAILED and "refusing 1" in err.message
    assert any(e.type == "error" and e.node_id == "2" for e in events)
    # A failed node is not cached: the next run tries it again.
    CALLS.clear()
    toy_engine.run(w)
    assert "Fail" in CALLS


def test_interrupt_inside_progress(toy_engine):
    w = wf({"1": ("Number", {"value": 1}), "2": ("Slow", {"x": ("1", 0), "steps": 200, "delay": 0.01}),
            "3": ("Show", {"value": ("2", 0)})})
    flag = threading.Event()
    seen = []

    def on_event(e):
        seen.append(e.type)
        if e.type == "progress" and e.data["value"] == 3:
            flag.set()

    result = toy_engine.run(w, on_event=on_event, interrupt=flag)
    assert result.status == "interrupted"
    assert "interrupted" in seen and seen[-1] == "finished"
    assert seen.count("progress") == 3
    assert "3" not in result.executed


def test_interrupt_from_another_thread(toy_engine):
    w = wf({"1": ("Number", {"value": 1}), "2": ("Slow", {"x": ("1", 0), "steps": 500, "delay": 0.01}),
            "3": ("Show", {"value": ("2", 0)})})
    started = threading.Event()
    out = {}

    def worker():
        out["result"] = toy_engine.run(w, on_event=lambda e: e.type == "progress" and started.set())

    t = threading.Thread(target=worker)
    t.start()
    assert started.wait(5)
    assert toy_engine.interrupt()
    t.join(5)
    assert out["result"].status == "interrupted"


def test_validation_reports_every_error_at_once(toy_engine):
    w = wf({
        "1": ("Number", {"value": 5000}),                   # out of range
        "2": ("Nope", {}),                                   # unknown type
        "3": ("Add", {"b": ("404", 0)}),                     # missing a, link to missing node
        "4": ("Scale", {"x": ("1", "nosuch"), "mode": "ceil", "factor": "x"}),  # bad output, choice, type
        "5": ("Text", {"text": ("1", 0)}),                   # type mismatch INT -> STRING
        "6": ("Show", {"value": ("3", 0)}),
        "7": ("Show", {"value": ("4", 0)}),
        "8": ("Show", {"value": ("5", 0)}),
        "9": ("Show", {"value": ("2", 0)}),
    })
    result = toy_engine.run(w)
    kinds = {(e.node_id, e.kind, e.input) for e in result.errors}
    assert ("1", E.VALUE_OUT_OF_RANGE, "value") in kinds
    assert ("2", E.UNKNOWN_NODE_TYPE, None) in kinds
    assert ("3", E.REQUIRED_INPUT_MISSING, "a") in kinds
    assert ("3", E.LINK_TO_MISSING_NODE, "b") in kinds
    assert ("4", E.LINK_TO_MISSING_OUTPUT, "x") in kinds
    assert ("4", E.INVALID_CHOICE, "mode") in kinds
    assert ("4", E.INVALID_TYPE, "factor") in kinds
    assert ("5", E.TYPE_MISMATCH, "text") in kinds
    assert result.status == "error" and result.executed == []
    for e in result.errors:
        d = e.to_dict()
        assert {"kind", "message", "node_id", "value"} <= set(d)


def test_cycle_and_nothing_to_output(toy_engine):
    w = wf({"1": ("Add", {"a": ("2", 0)}), "2": ("Add", {"a": ("1", 0)}), "3": ("Show", {"value": ("2", 0)})})
    result = toy_engine.run(w)
    assert {e.kind for e in result.errors} == {E.CYCLE}
    result = toy_engine.run(wf({"1": ("Number", {"value": 1})}))
    assert [e.kind for e in result.errors] == [E.NO_OUTPUTS]


def test_unknown_input_and_literal_for_link_type(toy_engine):
    w = wf({"1": ("Number", {"value": 1, "valeu": 2}), "2": ("Show", {"value": ("1", 0)})})
    assert [e.kind for e in toy_engine.run(w).errors] == [E.UNKNOWN_INPUT]


def test_random_seed_is_resolved_and_recorded(toy_engine):
    w = wf({"1": ("RandomPick", {"seed": -1}), "2": ("Show", {"value": ("1", 0)})})
    r1 = toy_engine.run(w)
    r2 = toy_engine.run(w)
    s1, s2 = r1.resolved["1"]["seed"], r2.resolved["1"]["seed"]
    assert s1 != s2 and 0 <= s1 < 2**53
    assert r1.executed and r2.executed  # a new seed is a new cache key
    assert r1.outputs["2"] == {"text": [repr(s1 % 97)]}


def test_json_syntax_error_names_line_and_column():
    with pytest.raises(WorkflowError) as info:
        loads('{"nodes": {\n  "1": {"type": "Number",, }\n}}', source="bad.json")
    [err] = info.value.errors
    assert err.kind == E.INVALID_JSON and err.details == {"file": "bad.json", "line": 2, "column": 26}
    assert "bad.json:2:26" in err.message


def test_unknown_top_level_key_is_an_error():
    with pytest.raises(WorkflowError) as info:
        loads('{"format": "chisel-workflow", "version": 1, "nodes": {}, "extra": 1}')
    assert "unknown key 'extra'" in info.value.errors[0].message


def test_duplicate_node_names_both(toy_registry):
    class Number(toy_nodes.Node):
        type = "Number"

    with pytest.raises(DuplicateNodeError) as info:
        toy_registry.register(Number)
    assert "toy_nodes.Number" in str(info.value) and "test_engine" in str(info.value)


def test_plugin_folder_discovery(tmp_path):
    (tmp_path / "my_nodes.py").write_text(
        "from graph.node import Node, Input, Output\n"
        "class Twice(Node):\n"
        "    type = 'Twice'\n"
        "    inputs = (Input('x', 'INT'),)\n"
        "    outputs = (Output('INT', 'INT'),)\n"
        "    def run(self, ctx, x):\n"
        "        return (2 * x,)\n")
    reg = NodeRegistry(toy_nodes.NODES)
    reg.load_plugin_folder(tmp_path)
    eng = Engine(reg)
    r = eng.run(wf({"1": ("Number", {"value": 4}), "2": ("Twice", {"x": ("1", 0)}), "3": ("Show", {"value": ("2", 0)})}))
    assert r.outputs["3"] == {"text": ["8"]}


def test_cache_is_bounded_and_evicts_lru(toy_registry):
    from graph.cache import ResultCache

    cache = ResultCache(ram_bytes=200, device_bytes=0)
    cache.put("a", ("x" * 90,))
    cache.put("b", ("y" * 90,))
    assert cache.get("a") is not None  # a is now most recent
    cache.put("c", ("z" * 90,))
    assert "b" not in cache and "a" in cache and "c" in cache
    stats = cache.stats()
    assert stats.evictions == 1 and stats.bytes["ram"] == 180 and stats.hits == 1

    class FakeTensor:
        nbytes = 64
        class device:  # noqa: N801
            type = "cuda"

    cache = ResultCache(ram_bytes=1000, device_bytes=100)
    cache.put("t1", (FakeTensor(),))
    cache.put("t2", (FakeTensor(),))
    assert "t1" not in cache and cache.stats().bytes == {"ram": 0, "device": 64}


def test_evicted_node_reruns_and_says_why(toy_registry, toy_paths):
    from graph.cache import ResultCache

    eng = Engine(toy_registry, paths=toy_paths, cache=ResultCache(ram_bytes=15))
    w = wf({"1": ("Text", {"text": "a" * 10}), "2": ("Text", {"text": "b" * 10}),
            "3": ("Add", {"a": ("4", 0)}), "4": ("Number", {"value": 1}),
            "5": ("Show", {"value": ("1", 0)}), "6": ("Show", {"value": ("2", 0)})})
    eng.run(w)  # caching node 2's 10 bytes evicts node 1's
    result = eng.run(w, outputs=["1", "2"])
    assert result.executed == ["1"] and result.cached == ["2"]
    assert result.explain["1"] == "evicted from the cache since it last ran"


def test_cached_consumer_does_not_rerun_an_evicted_producer(toy_registry, toy_paths):
    from graph.cache import ResultCache

    eng = Engine(toy_registry, paths=toy_paths, cache=ResultCache(ram_bytes=15))
    w = wf({"1": ("Text", {"text": "a" * 10}), "2": ("Text", {"text": "b" * 10}),
            "5": ("Show", {"value": ("1", 0)}), "6": ("Show", {"value": ("2", 0)})})
    eng.run(w)
    CALLS.clear()
    result = eng.run(w)  # node 1 was evicted, but its only consumer (5) is cached
    assert CALLS == [] and result.executed == []


def test_file_identity_is_part_of_the_key(tmp_path):
    from graph.node import Input, Node, Output
    from graph.paths import ModelPaths

    class ReadFile(Node):
        type = "ReadFile"
        inputs = (Input("name", "COMBO", files="input", extensions=(".txt",)),)
        outputs = (Output("STRING", "STRING"),)

        def run(self, ctx, name):
            return (ctx.file_path("name").read_text(),)

    paths = ModelPaths(root=tmp_path)
    (paths.dir("input") / "a.txt").write_text("one")
    reg = NodeRegistry(toy_nodes.NODES + [ReadFile])
    eng = Engine(reg, paths=paths)
    w = wf({"1": ("ReadFile", {"name": "a.txt"}), "2": ("Show", {"value": ("1", 0)})})
    assert eng.run(w).outputs["2"] == {"text": ["'one'"]}
    (paths.dir("input") / "a.txt").write_text("two!")
    r = eng.run(w)
    assert r.outputs["2"] == {"text": ["'two!'"]} and r.explain["1"] == "file of input 'name' changed"
    r = eng.run(wf({"1": ("ReadFile", {"name": "../escape.txt"}), "2": ("Show", {"value": ("1", 0)})}))
    [err] = r.errors
    assert err.kind == E.FILE_NOT_FOUND and "available: a.txt" in err.message


def test_graph_never_imports_torch():
    code = ("import sys, graph.engine, graph.validate, graph.cache, graph.comfy_format, graph.registry, "
            "graph.workflow, graph.paths, graph.events\n"
            "assert 'torch' not in sys.modules, 'graph imported torch'\n"
            "assert 'nodes' not in sys.modules, 'graph imported nodes'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
