"""The first image after ``chisel serve`` starts, on the bundled demo model: how long the server takes to listen, and
how long the first prompt's Load Checkpoint and whole run take when it is queued at once or after an idle while (a
person opening the canvas and typing a prompt).

    python benchmarks/first_prompt.py [--idle 0,15] [--repeat 3] [--steps 20] [--repo CHECKOUT] [--json]

Each repeat starts a fresh server (a fresh process: nothing imported, nothing cached) on a temporary root holding a
copy of the demo checkpoint, and stops it afterwards. Prints, per idle time, the median and range of: seconds from
starting the process to listening, Load Checkpoint's node time (the engine's own timing, from the history) and the
seconds from queueing to the finished history entry. Numbers only: no targets (they depend on the machine and on
what else runs on it). ``--repo`` measures another checkout of Chisel (e.g. an older commit) with this Python.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from demo_server import provide_demo_model, start, stop

REPO = Path(__file__).resolve().parent.parent


def _request(url: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"}, method="POST" if body else "GET")
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _workflow(repo: Path, steps: int) -> tuple[dict, str]:
    wf = json.loads((repo / "workflows" / "txt2img.json").read_text())
    loader = next(nid for nid, n in wf["nodes"].items() if n["type"] == "CheckpointLoaderSimple")
    for node in wf["nodes"].values():
        if node["type"] == "KSampler":
            node["inputs"]["steps"] = steps
    return wf, loader


def one_run(repo: Path, idle: float, steps: int) -> dict:
    wf, loader = _workflow(repo, steps)
    with tempfile.TemporaryDirectory(prefix="chisel-first-prompt-") as tmp:
        root = Path(tmp)
        provide_demo_model(root, repo)
        started = time.perf_counter()
        proc, url = start(root, repo)
        try:
            listening = time.perf_counter() - started
            time.sleep(idle)
            queued = time.perf_counter()
            pid = _request(f"{url}/v1/prompts", {"workflow": wf})["prompt_id"]
            while True:
                entry = _request(f"{url}/v1/history/{pid}")
                if entry.get("status") in ("success", "error", "interrupted", "cancelled"):
                    break
                time.sleep(0.05)
            total = time.perf_counter() - queued
            if entry["status"] != "success":
                raise RuntimeError(f"the prompt ended {entry['status']}: {entry.get('errors')}")
            return {"listening_s": listening, "load_checkpoint_s": entry["timings"][loader], "prompt_s": total}
        finally:
            stop(proc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", default="0,15", help="seconds between listening and queueing, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repo", type=Path, default=REPO, help="the Chisel checkout to start (default: this one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    report = {}
    for idle in [float(x) for x in args.idle.split(",")]:
        runs = [one_run(args.repo.resolve(), idle, args.steps) for _ in range(args.repeat)]
        report[f"idle {idle:g} s"] = {k: {"median": statistics.median(r[k] for r in runs),
                                          "min": min(r[k] for r in runs), "max": max(r[k] for r in runs)}
                                      for k in runs[0]}
    if args.json:
        print(json.dumps(report))
    else:
        for label, figures in report.items():
            print(label + ": " + "; ".join(f"{k} {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})"
                                           for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
