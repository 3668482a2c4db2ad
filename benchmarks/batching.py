"""Batching across prompts on the CPU: N txt2img prompts that differ in seed and text, run one after another
(``Engine.run`` each) and as one fused batch (``Engine.run_many``, what the server does for compatible queued
prompts), with the bundled demo model (64x64, SD1 architecture).

    python benchmarks/batching.py [--prompts 8] [--steps 10] [--repeat 3] [--threads 2] [--json]

Prints prompts/s both ways and the speed-up (best of N; new seeds every repeat, so nothing comes from the cache but
the shared model and negative prompt). Numbers only: no target on the CPU, where a small UNet is overhead-bound.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

COLOURS, SHAPES = ("red", "green", "blue", "yellow"), ("circle", "square", "triangle")


def prompts(n: int, steps: int, seed: int) -> list[dict]:
    base = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    base["nodes"]["3"]["inputs"]["steps"] = steps
    base["outputs"] = ["8"]
    out = []
    for i in range(n):
        wf = copy.deepcopy(base)
        wf["nodes"]["3"]["inputs"]["seed"] = seed + i
        wf["nodes"]["6"]["inputs"]["text"] = f"a {COLOURS[i % 4]} {SHAPES[i % 3]}"
        out.append(wf)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from graph.engine import Engine
    from graph.paths import ModelPaths
    from graph.registry import NodeRegistry
    from nodes.services import create_services

    torch.set_num_threads(args.threads)
    paths = ModelPaths(root=REPO)
    engine = Engine(NodeRegistry.discover(), services=create_services(paths, device="cpu"), paths=paths)
    engine.run(prompts(1, 1, 0)[0])  # load the model
    seed = 1000
    alone, fused = [], []
    for _ in range(args.repeat):
        wfs = prompts(args.prompts, args.steps, seed)
        seed += args.prompts
        t0 = time.perf_counter()
        results = [engine.run(wf) for wf in wfs]
        alone.append(time.perf_counter() - t0)
        wfs = prompts(args.prompts, args.steps, seed)
        seed += args.prompts
        t0 = time.perf_counter()
        results += engine.run_many([dict(workflow=wf) for wf in wfs])
        fused.append(time.perf_counter() - t0)
        assert all(r.status == "success" for r in results), [r.errors for r in results]
    report = {"prompts": args.prompts, "steps": args.steps, "threads": args.threads,
              "unbatched_prompts_per_s": args.prompts / min(alone), "batched_prompts_per_s": args.prompts / min(fused)}
    report["speedup"] = report["batched_prompts_per_s"] / report["unbatched_prompts_per_s"]
    if args.json:
        print(json.dumps(report))
    else:
        print(f"batching_prompts_per_s_cpu: unbatched {report['unbatched_prompts_per_s']:.2f}, batched "
              f"{report['batched_prompts_per_s']:.2f} ({report['speedup']:.2f}x; {args.prompts} prompts, "
              f"{args.steps} steps, demo model 64x64, {args.threads} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
