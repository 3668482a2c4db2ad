"""A node declares each input once: run()'s parameters are the declared inputs, defaults come from Input()."""
import pytest

from graph.node import Input, Node, Output
from graph.registry import NodeRegistry, check_run_signature
from graph.types import INT


def _node(run, *inputs):
    return type("N", (Node,), {"type": "N", "inputs": inputs, "outputs": (Output("x", INT),), "run": run})


def test_matching_signature_registers():
    cls = _node(lambda self, ctx, a, b: (a + b,), Input("a", INT, default=1), Input("b", INT))
    assert NodeRegistry([cls]).get("N") is cls


def test_catch_all_keywords_register():
    check_run_signature(_node(lambda self, ctx, **inputs: (0,), Input("a", INT)))


@pytest.mark.parametrize("run, message", [
    (lambda self, ctx, a, c: (0,), "c, which is not declared"),
    (lambda self, ctx, a: (0,), "lacks declared input b"),
    (lambda self, ctx, a, b=2: (0,), "gives b a default"),
])
def test_disagreeing_signature_is_refused_at_registration(run, message):
    cls = _node(run, Input("a", INT), Input("b", INT, default=2))
    with pytest.raises(TypeError, match=message):
        NodeRegistry([cls])


def test_every_builtin_node_keeps_the_contract():
    reg = NodeRegistry.discover()
    assert len(reg) >= 30
    for name in reg:
        check_run_signature(reg.get(name))


def test_an_optional_input_left_out_arrives_as_none(tmp_path):
    from graph.engine import Engine

    class Opt(Node):
        type = "Opt"
        inputs = (Input("a", INT, default=3), Input("b", INT, optional=True))
        outputs = (Output("x", INT),)

        def run(self, ctx, a, b):
            return (a if b is None else a + b,)

    result = Engine(NodeRegistry([Opt])).run({"nodes": {"1": {"type": "Opt", "inputs": {}}}}, outputs=["1"])
    assert result.status == "success" and result.values["1"] == (3,)
