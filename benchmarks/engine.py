"""Engine overhead on a random 1000-node DAG of trivial nodes (no torch involved).

    python benchmarks/engine.py [--json] [--nodes 1000] [--repeat 5]

Prints ``validate_plan_ms_1000`` (parse JSON + validate + plan), ``overhead_us_per_node`` (a full uncached
run minus the nodes' own measured work, per node) and ``cached_rerun_ms_1000`` (the same graph again, every
node served from the cache). Targets on the 2-core dev machines: <= 50 ms, <= 50 us, <= 20 ms. Best of N.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graph.engine import Engine  # noqa: E402
from graph.node import Input, Node, Output  # noqa: E402
from graph.registry import NodeRegistry  # noqa: E402
from graph.types import FLOAT, INT  # noqa: E402
from graph.validate import validate  # noqa: E402
from graph.workflow import loads  # noqa: E402

WORK_NS = [0]  # time spent inside the nodes' own run()


class Const(Node):
    type = "BenchConst"
    inputs = (Input("value", INT, default=0, min=-10**9, max=10**9),)
    outputs = (Output("INT", INT),)

    def run(self, ctx, value):
        t = time.perf_counter_ns()
        out = (value,)
        WORK_NS[0] += time.perf_counter_ns() - t
        return out


class Mix(Node):
    type = "BenchMix"
    inputs = (Input("a", INT), Input("b", INT, default=0), Input("w", FLOAT, default=0.5, min=0.0, max=1.0))
    outputs = (Output("INT", INT),)

    def run(self, ctx, a, b, w):
        t = time.perf_counter_ns()
        out = (int(a * w + b * (1 - w)) % 1000003,)
        WORK_NS[0] += time.perf_counter_ns() - t
        return out


def random_dag(n: int, seed: int = 0) -> str:
    rnd = random.Random(seed)
    nodes = {}
    for i in range(n):
        if i < 10 or rnd.random() < 0.1:
            nodes[str(i)] = {"type": "BenchConst", "inputs": {"value": rnd.randint(-1000, 1000)}}
        else:
            b = {"node": str(rnd.randrange(i)), "output": "INT"} if rnd.random() < 0.7 else rnd.randint(0, 9)
            nodes[str(i)] = {"type": "BenchMix", "inputs": {"a": {"node": str(rnd.randrange(max(0, i - 50), i)),
                                                                  "output": 0}, "b": b, "w": rnd.random()}}
    return json.dumps({"format": "chisel-workflow", "version": 1, "nodes": nodes, "outputs": [str(n - 1)]})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    registry = NodeRegistry([Const, Mix])
    text = random_dag(args.nodes)
    # The requested output depends on many nodes; request all to make every node run.
    all_ids = [str(i) for i in range(args.nodes)]

    plan_ms = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        wf = loads(text, registry)
        plan, errors = validate(wf, registry, outputs=all_ids)
        plan_ms.append((time.perf_counter() - t) * 1e3)
        assert plan is not None and not errors and len(plan.order) == args.nodes

    overhead, cached = [], []
    for _ in range(args.repeat):
        engine = Engine(registry)
        wf = loads(text, registry)
        WORK_NS[0] = 0
        t = time.perf_counter()
        result = engine.run(wf, outputs=all_ids)
        total = time.perf_counter() - t
        assert result.status == "success" and len(result.executed) == args.nodes
        overhead.append((total - WORK_NS[0] / 1e9) / args.nodes * 1e6)
        t = time.perf_counter()
        result = engine.run(wf, outputs=all_ids)
        cached.append((time.perf_counter() - t) * 1e3)
        assert not result.executed and len(result.cached) == args.nodes

    report = {
        "nodes": args.nodes,
        "validate_plan_ms_1000": round(min(plan_ms), 2),
        "overhead_us_per_node": round(min(overhead), 2),
        "cached_rerun_ms_1000": round(min(cached), 2),
        "median": {"validate_plan_ms": round(statistics.median(plan_ms), 2),
                   "overhead_us_per_node": round(statistics.median(overhead), 2),
                   "cached_rerun_ms": round(statistics.median(cached), 2)},
        "targets": {"validate_plan_ms_1000": 50, "overhead_us_per_node": 50, "cached_rerun_ms_1000": 20},
    }
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
