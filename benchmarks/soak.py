"""Soak test: many prompts of the demo workflow from several clients, with cancels and interrupts that land, and
one SIGKILL + restart of the server in the middle, through a real ``chisel serve``.

    python benchmarks/soak.py [--prompts 1000] [--clients 8] [--in-flight 2] [--cancel 0.05] [--interrupt 0.05]
                              [--steps 20] [--kills 1] [--kill-at sampling|saving] [--server-threads N]
                              [--max-batch N] [--json]

Every client has its own WebSocket (``/v1/ws``) and keeps ``--in-flight`` prompts of its own outstanding: it queues
one, waits for its ``finished`` event (or its history entry, for an event missed across the restart) and queues the
next. Each prompt has its own id (``soak-NNNNN``), seed and file prefix, so every file maps to one prompt. A request
that fails while the server is down is retried with the same id; ``409`` on a retried submission means the first
try got through.

- A prompt picked for a *cancel* is deleted right after it is queued (while a batch runs, so it is still pending).
- A prompt picked for an *interrupt* is interrupted (``POST /v1/interrupt`` with its id) once the client has seen
  it sampling: at a random step of its ``progress`` events. Queued prompts of the same graph run as one batch
  (``--max-batch``), so the interrupt must stop that prompt only.
- Halfway (when half the prompts have finished) the server is SIGKILLed while a prompt is sampling and started again
  on the same root: the prompts it was running are re-run, the queue survives. ``--kills N`` spreads N kills evenly;
  ``--kill-at saving`` kills right after a SaveImage ran, while its files are being written.

Prints
- ``lost``: acknowledged prompts missing from the history or never finished;
- ``completed_twice``: prompts with more than one output file or more than one ``finished`` event;
- ``duplicate_files`` / ``corrupt_files`` / ``partial_files``: identical PNGs under two names, PNGs that do not
  decode, temporary files left in the output folder;
- ``statuses`` (final status of every prompt), and for cancels and interrupts how many landed (the prompt ended
  ``cancelled`` / ``interrupted``) against how many came too late; ``stopped_unasked``: prompts that ended
  interrupted or cancelled without being asked (must be 0; e.g. a batch-mate of an interrupted prompt), and
  ``batchmates_of_interrupted``: how the other prompts of those batches ended;
- ``server_errors``: tracebacks and ERROR lines in the server's log;
- ``memory_growth_pct``: the server's resident memory (sampled every second) averaged over the last hundred prompts
  of the restarted process against its first hundred (after its first prompt finished, the models loaded); the same
  for the process before the (first) kill as ``memory_growth_pct_before_kill``;
- wall time and prompts per second.
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
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
FINISHED = {"success", "error", "interrupted", "cancelled"}


class Server:
    """``chisel serve`` on a root; ``start()`` again after a kill uses the same root (and so the same queue)."""

    def __init__(self, root: Path, threads: int | None = None, max_batch: int | None = None):
        self.root, self.proc, self.url = root, None, ""
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if threads is not None:  # torch's intra-op threads (and BLAS's) in the server
            self.env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.extra = ["--max-batch", str(max_batch)] if max_batch is not None else []
        self.start()

    def start(self) -> None:
        log = open(self.root / "serve.log", "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--root", str(self.root), "--port",
                                      "0", "--device", "cpu", "--max-queue", "100000", *self.extra],
                                     stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO, env=self.env)
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


@dataclass
class Watch:
    """What one client has seen of one of its prompts over its WebSocket."""
    step: int = 0  # the highest sampling step seen (progress value)
    stepped: asyncio.Event = field(default_factory=asyncio.Event)  # set on every progress event
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    finished_events: int = 0


class Soak:
    def __init__(self, server: Server, args: argparse.Namespace):
        self.server, self.args = server, args
        self.next = 0
        self.acked: set[str] = set()
        self.cancel_asked: dict[str, str] = {}  # prompt -> what DELETE answered
        self.interrupt_asked: dict[str, str] = {}  # prompt -> "hit" (POST /v1/interrupt named it) or "missed"
        self.watches: dict[str, Watch] = {}
        self.done = 0  # prompts whose client saw them finish
        self.last_progress = time.monotonic()
        self.rss: list[tuple[int, int, int]] = []  # (generation, finished count, bytes)
        self.generation = 0
        self.gen_start = [0]  # finished count when each generation started
        self.kills: list[dict] = []
        self.up = asyncio.Event()
        self.up.set()  # set = the server is up
        self.sampling = asyncio.Event()  # set on any progress event (a kill at "sampling" waits for one)
        self.saving = asyncio.Event()  # set when a SaveImage has run (its files are being written)
        self.rng = random.Random(args.seed)

    async def request(self, s: aiohttp.ClientSession, method: str, path: str, **kw) -> tuple[int, dict]:
        """Retry through the restart: wait for the server, then try again."""
        for _ in range(600):
            await self.up.wait()
            try:
                async with s.request(method, self.server.url + path, timeout=aiohttp.ClientTimeout(total=60),
                                     **kw) as r:
                    return r.status, (await r.json(content_type=None) if r.content_length != 0 else {})
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{method} {path}: no answer")

    # -- a client: one WebSocket, --in-flight lanes of prompts ------------------------------------------------------
    async def client(self, s: aiohttp.ClientSession, k: int) -> None:
        cid = f"soak-client-{k}"
        reader = asyncio.get_running_loop().create_task(self.listen(s, cid))
        try:
            await asyncio.gather(*(self.lane(s, cid) for _ in range(self.args.in_flight)))
        finally:
            reader.cancel()

    async def listen(self, s: aiohttp.ClientSession, cid: str) -> None:
        """This client's events, reconnecting after the restart."""
        while True:
            await self.up.wait()
            try:
                async with s.ws_connect(f"{self.server.url}/v1/ws?client_id={cid}&previews=none", heartbeat=20) as ws:
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self.on_frame(json.loads(msg.data))
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                pass
            await asyncio.sleep(0.2)

    def on_frame(self, frame: dict) -> None:
        data = frame.get("data") or {}
        w = self.watches.get(data.get("prompt_id") or "")
        if w is None:
            return
        if frame["type"] == "progress":
            w.step = max(w.step, int(data.get("value") or 0))
            w.stepped.set()
            self.sampling.set()
        elif frame["type"] == "executed" and data.get("node_id") == "9":
            self.saving.set()
        elif frame["type"] == "finished":
            w.finished_events += 1
            w.finished.set()

    async def lane(self, s: aiohttp.ClientSession, cid: str) -> None:
        while self.next < self.args.prompts:
            i = self.next
            self.next += 1
            pid = f"soak-{i:05}"
            w = self.watches[pid] = Watch()
            roll = self.rng.random()
            status, body = await self.request(s, "POST", "/v1/prompts",
                                              json={"workflow": workflow(i), "prompt_id": pid, "client_id": cid})
            if status not in (200, 409):
                raise RuntimeError(f"{pid}: {status} {body}")
            self.acked.add(pid)
            if roll < self.args.cancel:
                status, body = await self.request(s, "DELETE", f"/v1/prompts/{pid}")
                self.cancel_asked[pid] = body.get("status") if status == 200 else f"{status}"
            elif roll < self.args.cancel + self.args.interrupt:
                await self.interrupt_at_a_step(s, pid, w, self.rng.randint(1, (self.args.steps or 20) - 1))
            await self.wait_finished(s, pid, w)
            self.done += 1
            self.last_progress = time.monotonic()

    async def interrupt_at_a_step(self, s: aiohttp.ClientSession, pid: str, w: Watch, step: int) -> None:
        """Interrupt ``pid`` once it has sampled ``step`` steps (unless it finishes first)."""
        while w.step < step and not w.finished.is_set():
            w.stepped.clear()
            waiter = asyncio.ensure_future(w.stepped.wait())
            finisher = asyncio.ensure_future(w.finished.wait())
            await asyncio.wait({waiter, finisher}, timeout=2.0, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            finisher.cancel()
            if not w.stepped.is_set() and not w.finished.is_set():  # missed events (restart)? ask the history
                _, entry = await self.request(s, "GET", f"/v1/history/{pid}")
                if entry.get("status") in FINISHED:
                    break
        if w.finished.is_set():
            self.interrupt_asked[pid] = "missed"
            return
        _, body = await self.request(s, "POST", "/v1/interrupt", json={"prompt_id": pid})
        self.interrupt_asked[pid] = "hit" if body.get("interrupted") == pid else "missed"

    async def wait_finished(self, s: aiohttp.ClientSession, pid: str, w: Watch) -> None:
        while not w.finished.is_set():
            try:
                await asyncio.wait_for(w.finished.wait(), 5.0)
            except asyncio.TimeoutError:  # missed the event (restart)? ask the history
                _, entry = await self.request(s, "GET", f"/v1/history/{pid}")
                if entry.get("status") in FINISHED:
                    return

    # -- the crash ----------------------------------------------------------------------------------------------
    async def crash(self) -> None:
        """SIGKILL the server ``--kills`` times (once by default: when half the prompts have finished), each time
        while a prompt is sampling (``--kill-at sampling``) or right after a SaveImage ran, its files being written
        (``saving``), and start it again on the same root."""
        for k in range(1, self.args.kills + 1):
            while self.done < self.args.prompts * k // (self.args.kills + 1):
                await asyncio.sleep(0.2)
            moment = self.sampling if self.args.kill_at == "sampling" else self.saving
            moment.clear()
            await moment.wait()
            self.up.clear()
            self.server.kill()
            info = {"finished_before": self.done, "acknowledged": len(self.acked), "at": self.args.kill_at}
            print(f"soak: SIGKILL after {self.done} prompts finished ({len(self.acked)} acknowledged); restarting",
                  file=sys.stderr, flush=True)
            t = time.monotonic()
            await asyncio.to_thread(self.server.start)
            info["restart_s"] = round(time.monotonic() - t, 1)
            self.kills.append(info)
            self.generation += 1
            self.gen_start.append(self.done)
            self.up.set()

    async def watch_memory(self) -> None:
        """Sample the server's memory every second, with how many prompts have finished."""
        while True:
            if self.up.is_set():
                self.rss.append((self.generation, self.done, self.server.rss()))
            await asyncio.sleep(1.0)


async def soak(args: argparse.Namespace, root: Path) -> dict:
    server = Server(root, args.server_threads, args.max_batch)
    run = Soak(server, args)
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    try:
        async with aiohttp.ClientSession() as s:
            watcher = loop.create_task(run.watch_memory())
            crasher = loop.create_task(run.crash())
            clients = asyncio.gather(*(run.client(s, k) for k in range(args.clients)))
            while not clients.done():  # a stall (no prompt finishing for --stall seconds) ends the run
                await asyncio.wait({clients}, timeout=5.0)
                if time.monotonic() - run.last_progress > args.stall:
                    print(f"soak: no prompt finished for {args.stall}s; stopping", file=sys.stderr, flush=True)
                    clients.cancel()
                    break
            if clients.done() and not clients.cancelled() and clients.exception():
                raise clients.exception()
            elapsed = time.monotonic() - started
            watcher.cancel()
            crasher.cancel()
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
    return report(args, root, run, entries, elapsed)


def growth(samples: list[tuple[int, int]], lo: int, hi: int) -> tuple[float | None, float | None, float | None]:
    """Mean RSS over the first and the last hundred prompts finished between ``lo`` and ``hi`` (a quarter of a
    shorter stretch), and the growth in per cent."""
    window = min(100, (hi - lo) // 4)
    first = [b for n, b in samples if lo < n <= lo + window]  # from the first finished prompt: models loaded
    last = [b for n, b in samples if n >= hi - window]
    if window < 5 or not first or not last:
        return None, None, None
    a, b = statistics.mean(first), statistics.mean(last)
    return round(a / 2**20, 1), round(b / 2**20, 1), round(100.0 * (b - a) / a, 1)


def report(args: argparse.Namespace, root: Path, run: Soak, entries: dict, elapsed: float) -> dict:
    from PIL import Image

    lost = sorted(p for p in run.acked if p not in entries or entries[p]["status"] not in FINISHED)
    status_of = {p: entries[p]["status"] for p in run.acked if p in entries}
    statuses: dict[str, int] = {}
    for st in status_of.values():
        statuses[st] = statuses.get(st, 0) + 1
    out = root / "output"
    files = [p for p in out.rglob("*") if p.is_file()]
    partial = [p for p in files if p.suffix != ".png"]  # atomic writes leave nothing but PNGs under output/
    pngs = [p for p in files if p.suffix == ".png"]
    per_prompt: dict[str, int] = {}
    digests: dict[str, list[str]] = {}
    corrupt = 0
    for p in pngs:
        m = re.match(r"soak(\d{5})_", p.name)
        if m:
            per_prompt[f"soak-{m.group(1)}"] = per_prompt.get(f"soak-{m.group(1)}", 0) + 1
        try:
            with Image.open(p) as img:
                img.load()
        except Exception:
            corrupt += 1
        digests.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), []).append(p.name)
    # identical bytes under two names: seeds differ, so it can only be a second write of one prompt's image
    duplicate = sum(len(v) - 1 for v in digests.values() if len(v) > 1)
    twice = {p for p, n in per_prompt.items() if n > 1} | {p for p, w in run.watches.items() if w.finished_events > 1}
    success_without_file = [p for p, st in status_of.items() if st == "success" and not per_prompt.get(p)]
    stopped_without_success_file = [p for p, st in status_of.items() if st != "success" and per_prompt.get(p)]
    asked = set(run.cancel_asked) | set(run.interrupt_asked)
    stopped_unasked = sorted(p for p, st in status_of.items() if st in ("interrupted", "cancelled") and p not in asked)
    mates: dict[str, int] = {}
    for p in run.interrupt_asked:
        if status_of.get(p) == "interrupted":
            for q in entries[p].get("batch", []):
                if q != p:
                    mates[status_of.get(q, "?")] = mates.get(status_of.get(q, "?"), 0) + 1

    def tally(ids, landed: str) -> dict:
        t = {"asked": len(ids), "landed": 0, "too_late": 0, "other": 0}
        for p in ids:
            st = status_of.get(p)
            t["landed" if st == landed else "too_late" if st == "success" else "other"] += 1
        return t

    cancels = tally(run.cancel_asked, "cancelled")
    cancels["interrupted_running"] = sum(1 for p in run.cancel_asked if status_of.get(p) == "interrupted")
    interrupts = tally(run.interrupt_asked, "interrupted")
    interrupts["named_by_server"] = sum(1 for v in run.interrupt_asked.values() if v == "hit")
    log = (root / "serve.log").read_text(errors="replace")
    server_errors = len(re.findall(r"^Traceback|\bERROR\b", log, re.M))
    gens = [[(n, b) for g, n, b in run.rss if g == gen and b > 0] for gen in range(run.generation + 1)]
    bounds = run.gen_start + [run.done]
    mem = [growth(gens[g], bounds[g], bounds[g + 1]) for g in range(len(gens))]
    return {"prompts": args.prompts, "clients": args.clients, "in_flight": args.in_flight,
            "steps": args.steps or 20, "acknowledged": len(run.acked), "lost": len(lost),
            "completed_twice": len(twice), "duplicate_files": duplicate, "corrupt_files": corrupt,
            "partial_files": len(partial), "success_without_file": len(success_without_file),
            "file_without_success": len(stopped_without_success_file), "statuses": statuses,
            "cancels": cancels, "interrupts": interrupts, "stopped_unasked": len(stopped_unasked),
            "batchmates_of_interrupted": mates,
            "batched_prompts": sum(1 for e in entries.values() if len(e.get("batch", [])) > 1),
            "kills": run.kills, "rerun_after_kill": sum(1 for e in entries.values() if e.get("attempts", 0) > 1),
            "server_errors": server_errors,
            "rss_mb_first": mem[-1][0], "rss_mb_last": mem[-1][1], "memory_growth_pct": mem[-1][2],
            "memory_growth_pct_before_kill": mem[0][2] if len(mem) > 1 else None,
            "seconds": round(elapsed, 1), "prompts_per_s": round(len(run.acked) / elapsed, 2) if elapsed else None,
            "lost_ids": lost[:20], "twice_ids": sorted(twice)[:20], "stopped_unasked_ids": stopped_unasked[:20]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--in-flight", type=int, default=2, help="prompts each client keeps queued or running")
    ap.add_argument("--cancel", type=float, default=0.05, help="share of prompts cancelled right after queueing")
    ap.add_argument("--interrupt", type=float, default=0.05, help="share of prompts interrupted while sampling")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, help="sampling steps (default: the demo workflow's 20)")
    ap.add_argument("--server-threads", type=int, help="torch (OpenMP) threads in the server (default: its own)")
    ap.add_argument("--max-batch", type=int, help="the server's --max-batch (default: its own)")
    ap.add_argument("--kills", type=int, default=1, help="SIGKILLs of the server, evenly spread (default 1: halfway)")
    ap.add_argument("--kill-at", choices=["sampling", "saving"], default="sampling",
                    help="kill while a prompt is sampling, or right after a SaveImage ran (its files being written)")
    ap.add_argument("--stall", type=float, default=600.0, help="stop when no prompt finishes for this many seconds")
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
            print(f"{k:26} {v}")
    bad = (result["lost"] or result["completed_twice"] or result["duplicate_files"] or result["corrupt_files"]
           or result["partial_files"] or result["success_without_file"] or result["file_without_success"]
           or result["stopped_unasked"] or result["server_errors"] or result["statuses"].get("error")
           or (result["memory_growth_pct"] or 0) > 10)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
