"""Soak test: many prompts of the demo workflow from several clients, with random cancels and interrupts and one
SIGKILL + restart of the server in the middle, through a real ``chisel serve``.

    python benchmarks/soak.py [--prompts 1000] [--clients 8] [--cancel 0.05] [--interrupt 0.05] [--steps 20] [--json]

Each prompt has its own id (``soak-NNNNN``), seed and file prefix, so every file maps to one prompt. A client whose
request fails while the server is down retries with the same id; ``409`` (the id is taken) means the first try got
through. Prints
- ``lost``: prompts the server acknowledged that are missing from the history or never finished;
- ``completed_twice``: prompts with more than one output file (a re-run after the crash that wrote again);
- ``duplicate_files`` / ``corrupt_files`` / ``partial_files``: identical PNGs under two names, PNGs that do not decode,
  temporary ``.part`` files left in the output folder;
- the count of each final status, and the prompts re-run after the kill (``attempts`` 2);
- ``memory_growth_pct``: the server's resident memory (sampled every second) averaged over the last hundred finished
  prompts against the first hundred (a quarter of the run each, when it is shorter), within the restarted process.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
FINISHED = {"success", "error", "interrupted", "cancelled"}


class Server:
    """``chisel serve`` on a root; ``restart()`` after a kill uses the same root (and so the same queue)."""

    def __init__(self, root: Path):
        self.root, self.proc, self.url = root, None, ""
        self.start()

    def start(self) -> None:
        log = open(self.root / "serve.log", "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--root", str(self.root), "--port",
                                      "0", "--device", "cpu", "--max-queue", "100000"], stdout=subprocess.PIPE,
                                     stderr=log, text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"serving on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                return
        raise SystemExit("the server did not start; see " + str(self.root / "serve.log"))

    def rss(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


STEPS: int | None = None  # --steps: fewer sampling steps than the demo's 20, for a quicker (reduced) soak


def workflow(i: int) -> dict:
    data = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    data.pop("layout", None)
    nodes = data["nodes"]
    nodes["3"]["inputs"]["seed"] = 1000 + i
    if STEPS is not None:
        nodes["3"]["inputs"]["steps"] = STEPS
    nodes["9"]["inputs"]["filename_prefix"] = f"soak{i:05}"
    nodes["6"]["inputs"]["text"] = random.Random(i).choice(["a red circle", "a blue square", "a green triangle"]) \
        + " on a white background"
    return data


class Soak:
    def __init__(self, server: Server, args: argparse.Namespace):
        self.server, self.args = server, args
        self.next = 0
        self.acked: set[str] = set()
        self.cancel_asked: set[str] = set()
        self.interrupt_asked: set[str] = set()
        self.rss: list[tuple[int, int, int]] = []  # (generation, finished count, bytes)
        self.generation = 0
        self.down = asyncio.Event()
        self.down.set()  # set = the server is up
        self.rng = random.Random(args.seed)

    async def request(self, s: aiohttp.ClientSession, method: str, path: str, **kw) -> tuple[int, dict]:
        """Retry through the restart: wait for the server, then try again."""
        for _ in range(600):
            await self.down.wait()
            try:
                async with s.request(method, self.server.url + path, timeout=aiohttp.ClientTimeout(total=60),
                                     **kw) as r:
                    return r.status, (await r.json(content_type=None) if r.content_length != 0 else {})
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{method} {path}: no answer")

    async def client(self, s: aiohttp.ClientSession) -> None:
        while self.next < self.args.prompts:
            i = self.next
            self.next += 1
            pid = f"soak-{i:05}"
            status, body = await self.request(s, "POST", "/v1/prompts", json={"workflow": workflow(i), "prompt_id": pid})
            if status not in (200, 409):
                raise RuntimeError(f"{pid}: {status} {body}")
            self.acked.add(pid)
            roll = self.rng.random()
            if roll < self.args.cancel:
                self.cancel_asked.add(pid)
                await self.request(s, "DELETE", f"/v1/prompts/{pid}")
            elif roll < self.args.cancel + self.args.interrupt:
                self.interrupt_asked.add(pid)
                asyncio.get_running_loop().create_task(self._interrupt_later(s, pid))
            if i == self.args.prompts // 2:
                await self.crash()

    async def _interrupt_later(self, s: aiohttp.ClientSession, pid: str) -> None:
        for _ in range(200):  # until it runs (or has finished)
            status, entry = await self.request(s, "GET", f"/v1/history/{pid}")
            if entry.get("status") == "running":
                await self.request(s, "POST", "/v1/interrupt", json={"prompt_id": pid})
                return
            if entry.get("status") in FINISHED:
                return
            await asyncio.sleep(0.1)

    async def crash(self) -> None:
        """SIGKILL once a prompt is running, then start again on the same root."""
        async with aiohttp.ClientSession() as s:
            for _ in range(600):
                status, q = await self.request(s, "GET", "/v1/queue")
                if q.get("running"):
                    break
                await asyncio.sleep(0.05)
        self.down.clear()
        self.server.kill()
        print(f"soak: SIGKILL with {len(self.acked)} prompts acknowledged; restarting", file=sys.stderr, flush=True)
        await asyncio.to_thread(self.server.start)
        self.generation += 1
        self.down.set()

    async def watch(self) -> None:
        """Sample the server's memory, with how many acknowledged prompts have left the queue."""
        async with aiohttp.ClientSession() as s:
            while True:
                _, q = await self.request(s, "GET", "/v1/queue")
                done = len(self.acked) - len(q.get("pending", [])) - len(q.get("running", []))
                self.rss.append((self.generation, done, self.server.rss()))
                await asyncio.sleep(1.0)


async def soak(args: argparse.Namespace, root: Path) -> dict:
    server = Server(root)
    run = Soak(server, args)
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession() as s:
            watcher = asyncio.get_running_loop().create_task(run.watch())
            await asyncio.gather(*(run.client(s) for _ in range(args.clients)))
            while True:  # until the queue is empty
                _, q = await run.request(s, "GET", "/v1/queue")
                if not q.get("pending") and not q.get("running"):
                    break
                await asyncio.sleep(0.5)
            watcher.cancel()
            entries = {}
            offset = 0
            while True:
                _, page = await run.request(s, "GET", f"/v1/history?limit=1000&offset={offset}")
                for item in page["items"]:
                    entries[item["prompt_id"]] = item
                if len(page["items"]) < 1000:
                    break
                offset += 1000
    finally:
        server.stop()
    elapsed = time.monotonic() - started
    return report(args, root, run, entries, elapsed)


def report(args: argparse.Namespace, root: Path, run: Soak, entries: dict, elapsed: float) -> dict:
    from PIL import Image

    lost = sorted(p for p in run.acked if p not in entries or entries[p]["status"] not in FINISHED)
    statuses: dict[str, int] = {}
    for pid in run.acked:
        if pid in entries:
            statuses[entries[pid]["status"]] = statuses.get(entries[pid]["status"], 0) + 1
    out = root / "output"
    files = [p for p in out.rglob("*") if p.is_file()]
    partial = [p for p in files if p.name.endswith(".part")]
    pngs = [p for p in files if p.suffix == ".png"]
    per_prompt: dict[str, int] = {}
    digests: dict[str, list[str]] = {}
    corrupt = 0
    for p in pngs:
        m = re.match(r"soak(\d{5})_", p.name)
        if m:
            per_prompt[m.group(1)] = per_prompt.get(m.group(1), 0) + 1
        try:
            with Image.open(p) as img:
                img.load()
        except Exception:
            corrupt += 1
        digests.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), []).append(p.name)
    # identical bytes under two names of two different prompts cannot happen (seeds differ); within one prompt it
    # is a second write of the same image
    duplicate = sum(len(v) - 1 for v in digests.values() if len(v) > 1)
    succeeded_without_file = [p for p in run.acked if entries.get(p, {}).get("status") == "success"
                              and per_prompt.get(p.split("-")[1], 0) == 0]
    last_gen = max((g for g, _, _ in run.rss), default=0)
    samples = [(n, b) for g, n, b in run.rss if g == last_gen and b > 0]
    growth = None
    if samples:
        lo = min(n for n, _ in samples)
        hi = max(n for n, _ in samples)
        window = min(100, (hi - lo) // 4)  # a hundred prompts; a quarter of a shorter (reduced) run
        first = [b for n, b in samples if n <= lo + window]
        last = [b for n, b in samples if n >= hi - window]
        if first and last and window >= 5:
            growth = 100.0 * (statistics.mean(last) - statistics.mean(first)) / statistics.mean(first)
    return {"prompts": args.prompts, "clients": args.clients, "steps": args.steps or 20, "acknowledged": len(run.acked), "lost": len(lost),
            "completed_twice": sum(1 for v in per_prompt.values() if v > 1), "duplicate_files": duplicate,
            "corrupt_files": corrupt, "partial_files": len(partial), "success_without_file": len(succeeded_without_file),
            "statuses": statuses, "rerun_after_kill": sum(1 for e in entries.values() if e.get("attempts", 0) > 1),
            "cancel_asked": len(run.cancel_asked), "interrupt_asked": len(run.interrupt_asked),
            "rss_mb_first": round(statistics.mean(first) / 2**20, 1) if samples and first else None,
            "rss_mb_last": round(statistics.mean(last) / 2**20, 1) if samples and last else None,
            "memory_growth_pct": None if growth is None else round(growth, 1),
            "seconds": round(elapsed, 1), "lost_ids": lost[:20]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--cancel", type=float, default=0.05, help="share of prompts cancelled right after queueing")
    ap.add_argument("--interrupt", type=float, default=0.05, help="share of prompts interrupted while running")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, help="sampling steps (default: the demo workflow's 20)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary root (output, log, database)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    global STEPS
    STEPS = args.steps
    root = Path(tempfile.mkdtemp(prefix="chisel-soak-"))
    (root / "models").symlink_to(REPO / "models")
    try:
        result = asyncio.run(soak(args, root))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"soak: kept {root}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:22} {v}")
    bad = result["lost"] or result["corrupt_files"] or result["partial_files"] or result["success_without_file"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
