"""Property tests of the cache keys over random DAGs of toy nodes."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import toy_nodes
from graph.engine import Engine
from graph.registry import NodeRegistry
from graph.validate import validate
from graph.workflow import parse_workflow

REGISTRY = NodeRegistry(toy_nodes.NODES)


@st.composite
def dags(draw):
    """A random DAG: Number sources, Add nodes linking earlier nodes or taking literals, one Show per sink."""
    n = draw(st.integers(1, 14))
    nodes: dict[str, dict] = {}
    for i in range(n):
        nid = f"n{i}"
        if i == 0 or draw(st.booleans()) and i < 3:
            nodes[nid] = {"type": "Number", "inputs": {"value": draw(st.integers(-50, 50))}}
            continue
        a = {"node": f"n{draw(st.integers(0, i - 1))}", "output": 0}
        b = ({"node": f"n{draw(st.integers(0, i - 1))}", "output": 0} if draw(st.booleans())
             else draw(st.integers(-50, 50)))
        nodes[nid] = {"type": "Add", "inputs": {"a": a, "b": b}}
    used = {v["node"] for spec in nodes.values() for v in spec["inputs"].values() if isinstance(v, dict)}
    for nid in [k for k in nodes if k not in used]:
        nodes["show_" + nid] = {"type": "Show", "inputs": {"value": {"node": nid, "output": 0}}}
    return {"format": "chisel-workflow", "version": 1, "nodes": nodes}


def keys_of(data: dict) -> dict[str, str]:
    eng = Engine(REGISTRY)
    plan, errors = validate(parse_workflow(data), REGISTRY)
    assert not errors, errors
    return {nid: key for nid, (key, _) in eng._keys(plan).items()}


def rename(data: dict, mapping: dict[str, str]) -> dict:
    nodes = {}
    for nid, spec in data["nodes"].items():
        inputs = {k: ({"node": mapping[v["node"]], "output": v["output"]} if isinstance(v, dict) else v)
                  for k, v in spec["inputs"].items()}
        nodes[mapping[nid]] = {"type": spec["type"], "inputs": inputs}
    return {**data, "nodes": nodes}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.randoms(use_true_random=False))
def test_renaming_node_ids_keeps_every_key(data, rnd):
    ids = list(data["nodes"])
    shuffled = ids[:]
    rnd.shuffle(shuffled)
    mapping = {old: f"x{new}" for old, new in zip(ids, shuffled)}
    before, after = keys_of(data), keys_of(rename(data, mapping))
    assert {mapping[k]: v for k, v in before.items()} == after


def downstream_of(data: dict, start: str) -> set[str]:
    out, changed = {start}, True
    while changed:
        changed = False
        for nid, spec in data["nodes"].items():
            if nid not in out and any(isinstance(v, dict) and v["node"] in out for v in spec["inputs"].values()):
                out.add(nid)
                changed = True
    return out


@settings(max_examples=60, deadline=None)
@given(dags(), st.data())
def test_changing_one_literal_changes_exactly_the_downstream_keys(data, draw):
    candidates = [(nid, name) for nid, spec in data["nodes"].items()
                  for name, v in spec["inputs"].items() if isinstance(v, int)]
    nid, name = draw.draw(st.sampled_from(candidates))
    changed = {**data, "nodes": {k: {"type": v["type"], "inputs": dict(v["inputs"])} for k, v in data["nodes"].items()}}
    changed["nodes"][nid]["inputs"][name] += draw.draw(st.integers(1, 40))
    before, after = keys_of(data), keys_of(changed)
    differ = {k for k in before if before[k] != after[k]}
    assert differ == downstream_of(data, nid)


@settings(max_examples=30, deadline=None)
@given(dags())
def test_a_cached_rerun_executes_nothing(data):
    eng = Engine(REGISTRY)
    first = eng.run(data)
    assert first.status == "success"
    toy_nodes.CALLS.clear()
    again = eng.run(data)
    assert again.executed == [] and toy_nodes.CALLS == []
    assert again.outputs == first.outputs
