"""Malformed workflows in every format (no tests here): the shapes that used to crash parsing or validation.

Each case is decoded JSON (what a client sends) built at import time; ``DEEP_TEXT`` is JSON text nested too deeply
for ``json.loads``.
"""
from __future__ import annotations

HUGE = 10**400  # float() overflows
LONG_DIGITS = "9" * 5000  # int() refuses more than 4,300 digits


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _ui(nodes, links=(), **extra):
    return {"version": 0.4, "nodes": list(nodes), "links": list(links), **extra}


def _native(nodes, **extra):
    return {"format": "chisel-workflow", "version": 1, "nodes": nodes, **extra}


SHOW_2 = {"type": "Show", "inputs": {"value": {"node": "1", "output": "INT"}}}

CASES: dict[str, object] = {
    # node ids and types
    "api id superscript two": {"²": {"class_type": "Number", "inputs": {}},
                               "1": {"class_type": "Show", "inputs": {"value": ["²", 0]}}},
    "native id superscript two": _native({"²": {"type": "Number"},
                                          "3": {"type": "Show", "inputs": {"value": {"node": "²", "output": 0}}}}),
    "link output superscript": _native({"1": {"type": "Number"},
                                        "2": {"type": "Show", "inputs": {"value": {"node": "1", "output": "²"}}}}),
    "link output long digits": _native({"1": {"type": "Number"},
                                        "2": {"type": "Show", "inputs": {"value": {"node": "1", "output": LONG_DIGITS}}}}),
    "link output huge int": _native({"1": {"type": "Number"},
                                     "2": {"type": "Show", "inputs": {"value": {"node": "1", "output": HUGE}}}}),
    "api list class_type": {"1": {"class_type": ["KSampler"]}},
    "api empty class_type": {"1": {"class_type": ""}},
    "native list type": _native({"1": {"type": ["Number"]}}),
    "native long id": _native({LONG_DIGITS: {"type": "Number"}}),
    "api link to long id": {"1": {"class_type": "Show", "inputs": {"value": [LONG_DIGITS, 0]}}},
    "api link huge ids": {"1": {"class_type": "Show", "inputs": {"value": [HUGE, HUGE]}}},
    # inputs and meta of the wrong shape
    "api inputs list": {"1": {"class_type": "Number", "inputs": [1, 2]}},
    "api inputs null": {"1": {"class_type": "Number", "inputs": None}},
    "api meta string": {"1": {"class_type": "Number", "inputs": {}, "_meta": "x"}},
    "api meta title list": {"1": {"class_type": "Number", "inputs": {}, "_meta": {"title": [1]}}},
    "native inputs int": _native({"1": {"type": "Number", "inputs": 5}}),
    "native node null": _native({"1": None}),
    "native nodes list of junk": {"nodes": {"1": [1, 2]}},
    "native outputs junk": _native({"1": {"type": "Number"}}, outputs=[1, None]),
    "native layout junk": _native({"1": {"type": "Number"}}, layout={"nodes": {"1": {"pos": [HUGE, "x"]}}}),
    # literals out of every range
    "int huge": _native({"1": {"type": "Number", "inputs": {"value": HUGE}}, "2": SHOW_2}),
    "float huge": _native({"1": {"type": "Number"}, "2": {"type": "Scale", "inputs": {
        "x": {"node": "1", "output": "INT"}, "factor": HUGE}}, "3": {"type": "Show", "inputs": {
            "value": {"node": "2", "output": 0}}}}),
    "seed huge": _native({"1": {"type": "RandomPick", "inputs": {"seed": -HUGE}}}),
    "float nan": _native({"1": {"type": "Number"}, "2": {"type": "Scale", "inputs": {
        "x": {"node": "1", "output": "INT"}, "factor": float("nan")}}}),
    "combo list": _native({"1": {"type": "Number"}, "2": {"type": "Scale", "inputs": {
        "x": {"node": "1", "output": "INT"}, "mode": [["floor"]]}}}),
    "combo long digits": _native({"1": {"type": "Number"}, "2": {"type": "Scale", "inputs": {
        "x": {"node": "1", "output": "INT"}, "mode": LONG_DIGITS}}}),
    "string of digits": _native({"1": {"type": "Text", "inputs": {"text": LONG_DIGITS}},
                                 "2": {"type": "Show", "inputs": {"value": {"node": "1", "output": 0}}}}),
    # file inputs
    "file name NUL": _native({"1": {"type": "TextFile", "inputs": {"name": "a\x00b.txt"}},
                              "2": {"type": "Show", "inputs": {"value": {"node": "1", "output": 0}}}}),
    "file name 300 bytes": _native({"1": {"type": "TextFile", "inputs": {"name": "a" * 300 + ".txt"}}}),
    "file name 5000 bytes": _native({"1": {"type": "TextFile", "inputs": {"name": "a/" * 2500}}}),
    "file name home of nobody": _native({"1": {"type": "TextFile", "inputs": {"name": "~nobody-here/x.txt"}}}),
    "file name list": _native({"1": {"type": "TextFile", "inputs": {"name": ["a.txt"]}}}),
    # UI format
    "ui null node": {"nodes": [None], "links": []},
    "ui links int": {"nodes": [{"id": 1, "type": "Number"}], "links": 5},
    "ui link missing keys": _ui([{"id": 1, "type": "Number"}], [{"id": 1}]),
    "ui link short array": _ui([{"id": 1, "type": "Number"}], [[1, 1]]),
    "ui link huge ids": _ui([{"id": 1, "type": "Number", "outputs": [{"links": [HUGE]}]},
                             {"id": 2, "type": "Show", "inputs": [{"name": "value", "link": HUGE}]}],
                            [[HUGE, 1, HUGE, 2, 0, "INT"]]),
    "ui link to missing": _ui([{"id": 2, "type": "Show", "inputs": [{"name": "value", "type": "*", "link": 7}]}],
                              [[7, 99, 0, 2, 0, "INT"]]),
    "ui inputs dict": _ui([{"id": 1, "type": "Number", "inputs": {"a": 1}}]),
    "ui widgets string": _ui([{"id": 1, "type": "Number", "widgets_values": "7"}]),
    "ui widgets huge": _ui([{"id": 1, "type": "Scale", "widgets_values": [HUGE, HUGE, LONG_DIGITS]}]),
    "ui id list": _ui([{"id": [1], "type": "Number"}]),
    "ui duplicate ids": _ui([{"id": 1, "type": "Number"}, {"id": 1, "type": "Number"}]),
    "ui pos huge": _ui([{"id": 1, "type": "Number", "pos": [HUGE, float("inf")], "size": "big"}]),
    "ui unknown types": _ui([{"id": 1, "type": "Mystery", "title": "What"}, {"id": 2, "type": "Other"}]),
    "ui mode string": _ui([{"id": 1, "type": "Number", "mode": "never"}]),
    "ui reroute loop": _ui([{"id": 1, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": 2}]},
                            {"id": 2, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": 1}]},
                            {"id": 3, "type": "Show", "inputs": [{"name": "value", "type": "*", "link": 3}]}],
                           [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 1, 0, "*"], [3, 2, 0, 3, 0, "*"]]),
    "ui bypass loop": _ui([{"id": 1, "type": "Scale", "mode": 4, "inputs": [{"name": "x", "type": "INT", "link": 2}]},
                           {"id": 2, "type": "Scale", "mode": 4, "inputs": [{"name": "x", "type": "INT", "link": 1}]},
                           {"id": 3, "type": "Show", "inputs": [{"name": "value", "type": "INT", "link": 3}]}],
                          [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 1, 0, "INT"], [3, 2, 0, 3, 0, "INT"]]),
    "ui self-containing subgraph": _ui(
        [{"id": 1, "type": "aaaa-1"}],
        definitions={"subgraphs": [{"id": "aaaa-1", "name": "loop", "nodes": [{"id": 1, "type": "aaaa-1"}]}]}),
    "ui subgraphs junk": _ui([{"id": 1, "type": "Number"}], definitions={"subgraphs": 5}),
    "ui group nodes junk": _ui([{"id": 1, "type": "workflow>g"}], extra={"groupNodes": {"g": {"nodes": 5}}}),
    "ui group node bad links": _ui([{"id": 1, "type": "workflow>g"}], extra={"groupNodes": {"g": {
        "nodes": [{"index": 0, "type": "Number"}], "links": [[0, 0, 9, 9, None, "INT"]], "external": [[0]]}}}),
    "ui extra null": _ui([{"id": 1, "type": "Number"}], extra=None),
    # graph shape
    "cycle": _native({"1": {"type": "Add", "inputs": {"a": {"node": "2", "output": 0}}},
                      "2": {"type": "Add", "inputs": {"a": {"node": "1", "output": 0}}},
                      "3": {"type": "Show", "inputs": {"value": {"node": "2", "output": 0}}}}),
    "self loop": _native({"1": {"type": "Add", "inputs": {"a": {"node": "1", "output": 0}}}}),
    "empty": {},
    "list": [1, 2, 3],
    "string": "nodes",
    "null": None,
    "deeply nested literal": _native({"1": {"type": "Show", "inputs": {"value": _nested(900)}}}),
    "nested 100k": _nested(100_000),
}

DEEP_TEXT = "[" * 100_000 + "]" * 100_000
LONG_INT_TEXT = '{"1": {"class_type": "Number", "inputs": {"value": ' + LONG_DIGITS + "}}}"
