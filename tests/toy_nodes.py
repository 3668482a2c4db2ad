"""Small pure-Python nodes the engine tests register (no torch)."""
from __future__ import annotations

import time

from graph.node import Input, Node, NodeResult, Output
from graph.types import BOOLEAN, COMBO, FLOAT, INT, STRING

CALLS: list[str] = []  # node types in the order they ran (tests reset it)


class Number(Node):
    type = "Number"
    category = "math"
    description = "A constant integer."
    inputs = (Input("value", INT, default=0, min=-1000, max=1000),)
    outputs = (Output("INT", INT),)

    def run(self, ctx, value):
        CALLS.append(self.type)
        return (value,)


class Add(Node):
    type = "Add"
    category = "math"
    inputs = (Input("a", INT), Input("b", INT, default=0))
    outputs = (Output("sum", INT),)

    def run(self, ctx, a, b):
        CALLS.append(self.type)
        return (a + b,)


class Scale(Node):
    type = "Scale"
    category = "math"
    inputs = (Input("x", INT), Input("factor", FLOAT, default=1.0, min=0.0, max=10.0, step=0.5),
              Input("mode", COMBO, default="round", choices=["round", "floor"]))
    outputs = (Output("FLOAT", FLOAT),)

    def run(self, ctx, x, factor, mode):
        CALLS.append(self.type)
        return (x * factor,)


class Text(Node):
    type = "Text"
    category = "text"
    inputs = (Input("text", STRING, default="", multiline=True), Input("upper", BOOLEAN, default=False))
    outputs = (Output("STRING", STRING),)

    def run(self, ctx, text, upper):
        CALLS.append(self.type)
        return (text.upper() if upper else text,)


class RandomPick(Node):
    type = "RandomPick"
    category = "math"
    inputs = (Input("seed", INT, default=0, min=0, max=2**64 - 1, seed=True),)
    outputs = (Output("INT", INT),)

    def run(self, ctx, seed):
        CALLS.append(self.type)
        return (seed % 97,)


class Slow(Node):
    type = "Slow"
    category = "testing"
    inputs = (Input("x", INT), Input("steps", INT, default=5, min=1, max=1000),
              Input("delay", FLOAT, default=0.01, min=0.0, max=10.0))
    outputs = (Output("INT", INT),)

    def run(self, ctx, x, steps, delay):
        CALLS.append(self.type)
        for i in range(steps):
            time.sleep(delay)
            ctx.progress(i + 1, steps)
        return (x,)


class Fail(Node):
    type = "Fail"
    category = "testing"
    inputs = (Input("x", INT),)
    outputs = (Output("INT", INT),)

    def run(self, ctx, x):
        CALLS.append(self.type)
        raise ValueError(f"refusing {x}")


class Show(Node):
    type = "Show"
    category = "output"
    output_node = True
    inputs = (Input("value", "*"),)
    outputs = ()

    def run(self, ctx, value):
        CALLS.append(self.type)
        return NodeResult((), {"text": [repr(value)]})


class TextFile(Node):
    type = "TextFile"
    category = "text"
    description = "The text of a file in the input folder."
    inputs = (Input("name", COMBO, files="input", extensions=(".txt",)),)
    outputs = (Output("STRING", STRING),)

    def run(self, ctx, name):
        CALLS.append(self.type)
        return (ctx.file_path("name").read_text(encoding="utf-8"),)


def wf(nodes: dict, **extra) -> dict:
    """A native workflow from {id: (type, inputs)}; links as ("id", "output")."""
    out = {}
    for nid, (type_name, inputs) in nodes.items():
        ins = {k: ({"node": v[0], "output": v[1]} if isinstance(v, tuple) else v) for k, v in inputs.items()}
        out[nid] = {"type": type_name, "inputs": ins}
    return {"format": "chisel-workflow", "version": 1, "nodes": out, **extra}


NODES = [Number, Add, Scale, Text, RandomPick, Slow, Fail, Show, TextFile]
