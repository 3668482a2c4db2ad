"""Which queued prompts share a batch (graph.batching's signature) and how the worker gathers them from the real
SQLite queue (server.batching): compatible prompts join in queue order, others stay queued, the batch size is capped,
and the wait for company ends with the window or as soon as the batch is full."""
from __future__ import annotations

import copy
import json
import threading
import time

import pytest

from graph.batching import batch_signature
from graph.registry import NodeRegistry
from graph.workflow import parse_workflow
from server.batching import BatchPolicy, gather
from server.store import Store
from test_server_support import REPO

pytestmark = pytest.mark.timeout(60)

BASE = json.loads((REPO / "workflows" / "txt2img.json").read_text())


@pytest.fixture(scope="module")
def registry():
    return NodeRegistry.discover()


def variant(**changes) -> dict:
    """txt2img with inputs changed: {"3.seed": 5, "6.text": "..."}."""
    wf = copy.deepcopy(BASE)
    for where, value in changes.items():
        nid, name = where.split("__")
        wf["nodes"][nid]["inputs"][name] = value
    return wf


def signature(registry, wf, outputs=None):
    return batch_signature(parse_workflow(wf, registry), registry, outputs)


def test_per_sample_inputs_may_differ_and_nothing_else(registry):
    base = signature(registry, variant())
    assert base is not None
    same = variant(**{"3__seed": 7, "6__text": "another prompt", "7__text": "blurry", "9__filename_prefix": "x/y"})
    assert signature(registry, same) == base
    for other in (variant(**{"3__steps": 21}), variant(**{"3__cfg": 7.0}), variant(**{"3__sampler_name": "heun"}),
                  variant(**{"5__width": 128}), variant(**{"3__denoise": 0.5}),
                  variant(**{"4__ckpt_name": "other.safetensors"})):
        assert signature(registry, other) != base
    assert signature(registry, variant(), outputs=["8"]) != base  # other requested outputs
    rewired = variant(**{"3__positive": {"node": "7", "output": "CONDITIONING"}})
    assert signature(registry, rewired) != base
    # a graph without a node that runs batched is not worth a wait
    no_sampler = {"nodes": {"5": BASE["nodes"]["5"]}}
    assert signature(registry, no_sampler) is None


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "queue.sqlite3")
    yield s
    s.close()


def test_gather_claims_compatible_prompts_in_queue_order_up_to_the_cap(registry, store):
    store.add("a", variant(**{"3__seed": 1}))
    store.add("other", variant(**{"3__steps": 3}))
    for i, pid in enumerate(["b", "c", "d"]):
        store.add(pid, variant(**{"3__seed": 10 + i, "6__text": f"text {i}"}))
    first = store.claim_next()
    got = gather(store, first, registry, BatchPolicy(max_batch=3, window=0.0), threading.Event(), threading.Event())
    assert [i["prompt_id"] for i in got] == ["a", "b", "c"]
    assert all(store.get(pid)["status"] == "running" for pid in "abc")
    assert store.get("other")["status"] == "queued" and store.get("d")["status"] == "queued"
    # the next claim takes the head again: the incompatible prompt was not overtaken twice
    assert store.claim_next()["prompt_id"] == "other"


def test_gather_off_or_not_worth_it_claims_only_the_first(registry, store):
    store.add("a", variant())
    store.add("b", variant(**{"3__seed": 2}))
    first = store.claim_next()
    off = gather(store, first, registry, BatchPolicy(max_batch=1, window=10.0), threading.Event(), threading.Event())
    assert [i["prompt_id"] for i in off] == ["a"] and store.get("b")["status"] == "queued"


def test_the_wait_ends_with_the_window_or_when_the_batch_is_full(registry, store):
    wake, stopping = threading.Event(), threading.Event()
    store.add("a", variant())
    first = store.claim_next()
    # nothing compatible arrives: the worker goes on alone after the window (it returns at all: bounded)
    assert [i["prompt_id"] for i in gather(store, first, registry, BatchPolicy(8, 0.05), wake, stopping)] == ["a"]

    # a compatible prompt arriving during the window joins; with the batch full the wait ends (a 60 s window
    # would otherwise outlast this test's timeout)
    store.add("b", variant(**{"3__seed": 5}))
    first = store.claim_next()

    def add_later():
        time.sleep(0.05)
        store.add("c", variant(**{"3__seed": 6}))
        wake.set()

    adder = threading.Thread(target=add_later)
    adder.start()
    got = gather(store, first, registry, BatchPolicy(max_batch=2, window=60.0), wake, stopping)
    adder.join()
    assert [i["prompt_id"] for i in got] == ["b", "c"]


def test_stopping_ends_the_wait(registry, store):
    wake, stopping = threading.Event(), threading.Event()
    store.add("a", variant())
    first = store.claim_next()
    threading.Timer(0.05, lambda: (stopping.set(), wake.set())).start()
    assert [i["prompt_id"] for i in gather(store, first, registry, BatchPolicy(8, 60.0), wake, stopping)] == ["a"]
