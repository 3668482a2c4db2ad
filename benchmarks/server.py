"""Server throughput and event latency, through a real ``chisel serve`` subprocess with the toy nodes.

    python benchmarks/server.py [--json] [--prompts 300] [--concurrency 8] [--events 300]

Prints
- ``prompts_per_s``: N small prompts (Number -> Add -> Show, each with a new value for Add, so Add and Show run every time)
  submitted over HTTP by ``--concurrency`` clients, counted until the last one's ``finished`` arrives on the
  WebSocket. Each prompt is committed to SQLite (fsync) when queued, started and finished.
- ``submit_ms_median``: one POST /v1/prompts round trip (parse, validate, durable insert) under that load.
- ``roundtrip_ms_median``: submit one prompt and wait for its ``finished`` frame, one at a time.
- ``event_delay_ms_median`` / ``event_delay_ms_p95``: from the executor creating a ``progress`` event (its
  timestamp) to the WebSocket client receiving the frame, over ``--events`` progress events.
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


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--root", str(root), "--port", "0",
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"serving on (http://\S+)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise SystemExit("chisel serve did not start")


def small(value: int) -> dict:
    return {"format": "chisel-workflow", "version": 1, "nodes": {
        "1": {"type": "Number", "inputs": {"value": 1}},
        "2": {"type": "Add", "inputs": {"a": {"node": "1", "output": "INT"}, "b": value}},
        "3": {"type": "Show", "inputs": {"value": {"node": "2", "output": "sum"}}}}}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def bench(url: str, n: int, concurrency: int, n_events: int) -> dict[str, float]:
    async with aiohttp.ClientSession(url) as s:
        ws = await s.ws_connect("/v1/ws?client_id=bench")
        await ws.receive_json()  # hello

        async def wait_finished(pids: set[str]) -> None:
            while pids:
                frame = await ws.receive_json(timeout=120)
                if frame["type"] == "finished":
                    pids.discard(frame["data"]["prompt_id"])

        async def submit(value: int) -> tuple[str, float]:
            t = time.perf_counter()
            r = await s.post("/v1/prompts", json={"workflow": small(value), "client_id": "bench"})
            body = await r.json()
            assert r.status == 200, body
            return body["prompt_id"], time.perf_counter() - t

        # warm-up
        pid, _ = await submit(-1)
        await wait_finished({pid})

        # one at a time: submit, wait for finished
        rts = []
        for i in range(20):
            t = time.perf_counter()
            pid, _ = await submit(10_000 + i)
            await wait_finished({pid})
            rts.append(time.perf_counter() - t)

        # throughput
        values = iter(range(n))
        submit_times: list[float] = []
        pids: set[str] = set()

        async def client() -> None:
            for v in values:
                pid, dt = await submit(v)
                pids.add(pid)
                submit_times.append(dt)

        t0 = time.perf_counter()
        waiter = asyncio.ensure_future(wait_finished_all(ws, n))
        await asyncio.gather(*(client() for _ in range(concurrency)))
        await waiter
        elapsed = time.perf_counter() - t0

        # event delay: progress events of a Slow node
        workflow = {"format": "chisel-workflow", "version": 1, "nodes": {
            "1": {"type": "Number", "inputs": {"value": 7}},
            "2": {"type": "Slow", "inputs": {"x": {"node": "1", "output": "INT"}, "steps": n_events, "delay": 0.002}},
            "3": {"type": "Show", "inputs": {"value": {"node": "2", "output": "INT"}}}}}
        r = await s.post("/v1/prompts", json={"workflow": workflow, "client_id": "bench"})
        pid = (await r.json())["prompt_id"]
        delays = []
        while True:
            frame = await ws.receive_json(timeout=120)
            now = time.time()
            if frame["type"] == "progress" and frame["data"]["prompt_id"] == pid:
                delays.append((now - frame["data"]["time"]) * 1000)
            if frame["type"] == "finished" and frame["data"]["prompt_id"] == pid:
                break
        await ws.close()
    return {"prompts": n, "concurrency": concurrency, "prompts_per_s": round(n / elapsed, 1),
            "submit_ms_median": round(statistics.median(submit_times) * 1000, 2),
            "roundtrip_ms_median": round(statistics.median(rts) * 1000, 2),
            "event_delay_ms_median": round(statistics.median(delays), 3),
            "event_delay_ms_p95": round(percentile(delays, 0.95), 3), "events": len(delays)}


async def wait_finished_all(ws: aiohttp.ClientWebSocketResponse, n: int) -> None:
    seen = 0
    while seen < n:
        frame = await ws.receive_json(timeout=120)
        if frame["type"] == "finished":
            seen += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="chisel-bench-"))
    (root / "custom_nodes").mkdir()
    shutil.copy(REPO / "tests" / "toy_nodes.py", root / "custom_nodes" / "toy_nodes.py")
    proc, url = start_server(root)
    try:
        result = asyncio.run(bench(url, args.prompts, args.concurrency, args.events))
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:24} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
