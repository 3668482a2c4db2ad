"""Throughput and event latency of ``chisel serve --cluster`` for 1 and 2 workers, against the single-process server.

    python benchmarks/cluster.py [--json] [--workers 1,2] [--slow-prompts 8] [--slow-seconds 0.5]
                                 [--quick-prompts 100] [--demo-prompts 4] [--events 200] [--no-demo]

Starts one local Ray instance (``ray start --head`` is not needed: the benchmark calls ``ray.init``) and, for each
worker count, a real ``chisel serve --cluster auto --cluster-workers N`` that joins it. Prints per configuration
(``single`` is ``chisel serve`` without ``--cluster``):
- ``slow_prompts_per_s``: prompts whose one node sleeps ``--slow-seconds`` (GPU-bound work stands in by waiting),
  all submitted at once, until the last ``finished`` arrives on the WebSocket.
- ``quick_prompts_per_s``: tiny prompts (Number -> Add -> Show): the scheduling and streaming overhead per prompt.
- ``demo_images_per_s``: the bundled demo model's txt2img (64x64, 6 steps, a new seed each), all submitted at once.
  On a CPU-only machine the workers share its cores, so this measures overhead more than scale.
- ``event_delay_ms_median`` / ``_p95``: from a worker's engine creating a ``progress`` event (its timestamp) to the
  WebSocket client receiving the frame.
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


def start_server(root: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--root", str(root), "--port", "0",
                             "--device", "cpu", *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
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


def toy(value: int, steps: int = 1, delay: float = 0.0) -> dict:
    return {"format": "chisel-workflow", "version": 1, "nodes": {
        "1": {"type": "Number", "inputs": {"value": value % 1000}},  # a new value: nothing comes from the cache
        "2": {"type": "Slow", "inputs": {"x": {"node": "1", "output": "INT"}, "steps": steps, "delay": delay}},
        "3": {"type": "Add", "inputs": {"a": {"node": "2", "output": "INT"}, "b": value}},
        "4": {"type": "Show", "inputs": {"value": {"node": "3", "output": "sum"}}}}}


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> dict:
    """The next JSON frame (binary preview frames skipped)."""
    while True:
        msg = await ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return json.loads(msg.data)
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise SystemExit(f"the WebSocket closed: {msg.type}")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def wait_workers(s: aiohttp.ClientSession, count: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        info = await (await s.get("/v1/system")).json()
        if "workers" not in info or sum(w["state"] == "idle" for w in info["workers"]) >= count:
            return
        await asyncio.sleep(0.2)
    raise SystemExit("the cluster's workers did not start")


async def bench(url: str, workers: int, args: argparse.Namespace) -> dict[str, float]:
    async with aiohttp.ClientSession(url) as s:
        await wait_workers(s, workers)
        ws = await s.ws_connect("/v1/ws?client_id=bench")
        await receive(ws, 60)  # hello

        async def submit(workflow: dict, **body) -> str:
            r = await s.post("/v1/prompts", json={"workflow": workflow, "client_id": "bench", **body})
            data = await r.json()
            assert r.status == 200, data
            return data["prompt_id"]

        async def batch(items: list[tuple[dict, dict]]) -> float:
            t0 = time.perf_counter()
            pids = {await submit(w, **b) for w, b in items}
            while pids:
                frame = await receive(ws, 600)
                if frame["type"] == "finished":
                    assert frame["data"]["status"] == "success", frame["data"]
                    pids.discard(frame["data"]["prompt_id"])
            return time.perf_counter() - t0

        await batch([(toy(900 + i), {}) for i in range(workers * 2)])  # warm-up: every worker ran something
        out: dict[str, float] = {"workers": workers}
        steps = max(1, int(args.slow_seconds / 0.05))
        t = await batch([(toy(i, steps, 0.05), {}) for i in range(args.slow_prompts)])
        out["slow_prompts_per_s"] = round(args.slow_prompts / t, 3)
        t = await batch([(toy(100 + i), {}) for i in range(args.quick_prompts)])
        out["quick_prompts_per_s"] = round(args.quick_prompts / t, 1)
        if not args.no_demo:
            demo = json.loads((REPO / "workflows" / "txt2img.json").read_text())
            await batch([(demo, {"set": {"3.steps": 2, "3.seed": i}}) for i in range(workers)])  # every worker loads it
            t = await batch([(demo, {"set": {"3.steps": 6, "3.seed": 100 + i}}) for i in range(args.demo_prompts)])
            out["demo_images_per_s"] = round(args.demo_prompts / t, 3)
        pid = await submit(toy(999, args.events, 0.002))
        delays = []
        while True:
            frame = await receive(ws, 120)
            now = time.time()
            if frame["type"] == "progress" and frame["data"]["prompt_id"] == pid:
                delays.append((now - frame["data"]["time"]) * 1000)
            if frame["type"] == "finished" and frame["data"]["prompt_id"] == pid:
                break
        out["event_delay_ms_median"] = round(statistics.median(delays), 3)
        out["event_delay_ms_p95"] = round(percentile(delays, 0.95), 3)
        await ws.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2", help="worker counts to measure, comma-separated")
    ap.add_argument("--slow-prompts", type=int, default=8)
    ap.add_argument("--slow-seconds", type=float, default=0.5)
    ap.add_argument("--quick-prompts", type=int, default=100)
    ap.add_argument("--demo-prompts", type=int, default=4)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--no-demo", action="store_true", help="skip the demo model (toy prompts only)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    import ray

    root = Path(tempfile.mkdtemp(prefix="chisel-bench-cluster-"))
    (root / "custom_nodes").mkdir()
    shutil.copy(REPO / "tests" / "toy_nodes.py", root / "custom_nodes" / "toy_nodes.py")
    (root / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(REPO / "models" / "checkpoints" / "chisel-demo-v1.safetensors", root / "models" / "checkpoints")
    results = []
    ray.init(address="local", num_cpus=max(counts + [os.cpu_count() or 1]), include_dashboard=False, log_to_driver=False)
    try:
        for label, extra, n in [("single", (), 1)] + [(f"cluster-{n}", ("--cluster", "auto", "--cluster-workers", str(n)), n)
                                                      for n in counts]:
            proc, url = start_server(root, *extra)
            try:
                results.append({"config": label, **asyncio.run(bench(url, n, args))})
            finally:
                proc.terminate()
                proc.wait(60)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(results))
    else:
        keys = [k for k in results[0] if k != "config"]
        print(f"{'':24}" + "".join(f"{r['config']:>14}" for r in results))
        for k in keys:
            print(f"{k:24}" + "".join(f"{r.get(k, ''):>14}" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
