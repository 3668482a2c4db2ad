"""Interrupting prompts of a fused batch (graph.fused) on toy nodes: the interrupted prompt stops, and the others
redo the batched node as one batch again, not one by one (an interrupt in a batch of eight used to cost the other
seven a sampling each alone)."""
from __future__ import annotations

import threading

import pytest

import toy_nodes
from graph.engine import Engine
from graph.node import Input, Node, Output
from graph.registry import NodeRegistry
from graph.types import INT
from toy_nodes import wf

BATCHES: list[int] = []  # the size of every call of SlowBatch: n for a batched call, 1 for a call alone


class SlowBatch(Node):
    """Steps with progress (each step raises Interrupted in an interrupted run), alone or as one batched call."""
    type = "SlowBatch"
    category = "testing"
    inputs = (Input("x", INT), Input("steps", INT, default=5, min=1, max=1000))
    outputs = (Output("INT", INT),)

    def run(self, ctx, x, steps):
        BATCHES.append(1)
        for i in range(steps):
            ctx.progress(i + 1, steps)
        return (x * 10,)

    @classmethod
    def run_batch(cls, ctxs, calls):
        BATCHES.append(len(calls))
        steps = calls[0]["steps"]
        for i in range(steps):
            for ctx in ctxs:
                ctx.progress(i + 1, steps)
        return [(c["x"] * 10,) for c in calls]


@pytest.fixture
def engine(toy_paths) -> Engine:
    BATCHES.clear()
    return Engine(NodeRegistry(toy_nodes.NODES + [SlowBatch]), paths=toy_paths)


def jobs(n: int, stops: list[tuple[int, int, set[int]]]) -> list[dict]:
    """``n`` runs; for each (run, step, targets) of ``stops``, the interrupt flags of ``targets`` are set when
    ``run`` reports sampling step ``step``."""
    flags = [threading.Event() for _ in range(n)]

    def on_event_of(i):
        def on_event(e):
            for run, step, targets in stops:
                if run == i and e.type == "progress" and e.data["value"] == step:
                    for t in targets:
                        flags[t].set()
        return on_event

    return [dict(workflow=wf({"1": ("Number", {"value": i}), "2": ("SlowBatch", {"x": ("1", "INT"), "steps": 6}),
                              "3": ("Show", {"value": ("2", "INT")})}),
                 interrupt=flags[i], run_id=f"r{i}", on_event=on_event_of(i)) for i in range(n)]


@pytest.mark.parametrize("stops, batches", [
    ([(1, 3, {1})], [4, 3]),  # one of four interrupted at step 3: the other three as one batch again
    ([(0, 2, {0}), (3, 4, {3})], [4, 3, 2]),  # a second interrupt in the re-run batch: the last two still batched
    ([(0, 2, {0, 1, 2})], [4, 1]),  # three of four at once: the last one alone
])
def test_an_interrupt_in_a_batch_stops_that_run_and_the_others_stay_batched(engine, stops, batches):
    stopped = set().union(*(targets for _, _, targets in stops))
    results = engine.run_many(jobs(4, stops))
    for i, result in enumerate(results):
        if i in stopped:
            assert result.status == "interrupted", (i, result)
            assert "3" not in result.executed and "3" not in result.outputs
        else:
            assert result.status == "success", (i, result.errors)
            assert result.outputs["3"] == {"text": [repr(i * 10)]}
    assert BATCHES == batches
