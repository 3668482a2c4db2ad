"""torch's CPU thread count against throughput: ``chisel serve --threads N`` rendering the bundled demo model.

    python benchmarks/threads.py [--threads 1,2,default] [--wait passive,active] [--busy 0,1] [--prompts 4]
                                 [--steps 6] [--repeat 2] [--batch] [--json]

For each thread count (``default``: no ``--threads``, torch's own choice; ``OMP_NUM_THREADS`` is removed from the
server's environment) and each number of CPU-busy processes running beside the server (``--busy``: pure-Python
spinning loops, standing in for another program on the machine) and each OpenMP wait policy (``--wait``: how
torch's idle threads wait for work, ``OMP_WAIT_POLICY``; ``chisel`` makes it passive unless set), starts a real server, loads the model with one
prompt, then submits ``--prompts`` txt2img prompts (new seeds: nothing comes from the cache) and waits for the last
to finish, ``--repeat`` times. Prints images/s (the best and the median of the repeats), with the server's batching
off (``--max-batch 1``: one prompt at a time, as a client waiting for each would see) unless ``--batch``.
Numbers only, no target: they depend on the machine and on what else runs on it (the load average is printed).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
SPIN = "while True: pass"


def start_server(root: Path, wait: str, *extra: str) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["OMP_WAIT_POLICY"] = wait.upper()
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--root", str(root), "--port", "0",
                             "--device", "cpu", *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"serving on (http://\S+)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise SystemExit("chisel serve did not start")


async def measure(url: str, args: argparse.Namespace) -> dict:
    demo = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    async with aiohttp.ClientSession(url) as s:
        async def run(seeds: range) -> float:
            t0 = time.perf_counter()
            pids = []
            for seed in seeds:
                r = await s.post("/v1/prompts", json={"workflow": demo, "set": {"3.steps": args.steps, "3.seed": seed}})
                data = await r.json()
                assert r.status == 200, data
                pids.append(data["prompt_id"])
            for pid in pids:
                while True:
                    entry = await (await s.get(f"/v1/history/{pid}")).json()
                    if entry.get("status") in ("success", "error", "interrupted", "cancelled"):
                        assert entry["status"] == "success", entry
                        break
                    await asyncio.sleep(0.05)
            return time.perf_counter() - t0

        await run(range(1, 2))  # loads the model
        threads = (await (await s.get("/v1/system")).json()).get("threads")
        times = [await run(range(100 + i * args.prompts, 100 + (i + 1) * args.prompts)) for i in range(args.repeat)]
    rates = [args.prompts / t for t in times]
    return {"torch_threads": threads, "images_per_s_best": round(max(rates), 3),
            "images_per_s_median": round(statistics.median(rates), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2,default", help="thread counts, comma-separated (default: torch's)")
    ap.add_argument("--wait", default="passive,active", help="OpenMP wait policies, comma-separated")
    ap.add_argument("--busy", default="0,1", help="numbers of CPU-busy processes beside the server, comma-separated")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--batch", action="store_true", help="let the server batch the prompts (its default policy)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="chisel-bench-threads-"))
    (root / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(REPO / "models" / "checkpoints" / "chisel-demo-v1.safetensors", root / "models" / "checkpoints")
    results = []
    try:
        for busy in [int(b) for b in args.busy.split(",")]:
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
            try:
                for wait in [w.strip() for w in args.wait.split(",")]:
                    for threads in [t.strip() for t in args.threads.split(",")]:
                        extra = [] if threads == "default" else ["--threads", threads]
                        if not args.batch:
                            extra += ["--max-batch", "1"]
                        proc, url = start_server(root, wait, *extra)
                        try:
                            out = asyncio.run(measure(url, args))
                        finally:
                            proc.terminate()
                            proc.wait(60)
                        results.append({"threads": threads, "wait": wait, "busy_processes": busy, **out,
                                        "load_average_1min": round(os.getloadavg()[0], 2)})
                        if not args.json:
                            print(json.dumps(results[-1]), flush=True)
            finally:
                for p in spinners:
                    p.kill()
                    p.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "prompts": args.prompts, "steps": args.steps, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
