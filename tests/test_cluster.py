"""The server on a real Ray cluster (``chisel serve --cluster``): one local Ray instance shared by the module, two CPU
workers per server (each its own process, engine and cache), real HTTP and WebSocket clients."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_server_support import (PAUSE_POINTS, REPO, ServeProcess, build_app, chain, client, finished, make_root, run,
                                 submit, until, until_paused, wait_history, wf)

import ray  # noqa: E402  (a declared test extra: its absence is a failure)

pytestmark = pytest.mark.slow

TOY_LOADER = '''
import os
import signal

from graph.node import Input, Node, Output
from graph.types import COMBO, INT


class KillWorker(Node):
    """Kills the process it runs in (a worker that dies under every attempt)."""
    type = "KillWorker"
    category = "testing"
    output_node = True
    inputs = (Input("x", INT, default=0),)
    outputs = ()

    def run(self, ctx, x):
        os.kill(os.getpid(), signal.SIGKILL)


class ToyLoader(Node):
    """Names a checkpoint file (for affinity): outputs its size."""
    type = "ToyLoader"
    category = "testing"
    inputs = (Input("ckpt_name", COMBO, files="checkpoints", extensions=(".safetensors",)),)
    outputs = (Output("INT", INT),)

    def run(self, ctx, ckpt_name):
        return (ctx.file_path("ckpt_name").stat().st_size,)
'''


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # a new instance, always
    yield
    ray.shutdown()


@pytest.fixture
def root(tmp_path, ray_cluster) -> Path:
    root = make_root(tmp_path)
    (root / "custom_nodes" / "toy_loader.py").write_text(TOY_LOADER)
    ckpts = root / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "a.safetensors").write_bytes(b"a" * 10)
    (ckpts / "b.safetensors").write_bytes(b"b" * 20)
    return root


def cluster_app(root: Path, workers: int = 2, shared: bool = False, plain: bool = True):
    from server.cluster import ClusterOptions, RuntimeSpec

    spec = RuntimeSpec(root=str(root), device="cpu", plain=plain, plugin_folders=[str(root / "custom_nodes")],
                       entry_point_group="chisel.tests-none" if plain else None)
    return build_app(root, cluster=ClusterOptions(workers=workers, shared_output=shared, log_to_driver=False),
                     cluster_runtime=spec)


async def workers(c, count: int = 2, timeout: float = 120.0) -> list[dict]:
    """The cluster's workers once ``count`` of them are idle."""
    deadline = time.monotonic() + timeout
    while True:
        info = await (await c.get("/v1/system")).json()
        found = info.get("workers") or []
        if sum(w["state"] == "idle" for w in found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"workers not ready: {found}")
        await asyncio.sleep(0.1)


def slow(value: int, seconds: float, save: str = "Show") -> dict:
    steps = max(1, int(seconds / 0.1))
    return chain(value, steps=steps, delay=0.1, save=save)


def loader_chain(ckpt: str, value: int) -> dict:
    return wf({"1": ("ToyLoader", {"ckpt_name": ckpt}), "2": ("Add", {"a": ("1", "INT"), "b": value}),
               "3": ("Show", {"value": ("2", "sum")})})


def test_two_workers_run_two_slow_prompts_at_once(root):
    async def go():
        async with client(root, app=cluster_app(root)) as c:
            found = await workers(c)
            assert len(found) == 2 and len({w["pid"] for w in found}) == 2 and os.getpid() not in {w["pid"] for w in found}
            ws = await c.ws_connect("/v1/ws?client_id=watcher")
            start = time.monotonic()
            a = await submit(c, slow(1, 2.0), client_id="watcher")
            b = await submit(c, slow(2, 2.0), client_id="watcher")
            frames = await until(ws, finished(a), timeout=60)
            if not any(f["type"] == "finished" and f["data"]["prompt_id"] == b for f in frames):
                frames += await until(ws, finished(b), timeout=60)
            wall = time.monotonic() - start
            ha, hb = await wait_history(c, a), await wait_history(c, b)
            assert ha["status"] == hb["status"] == "success"
            assert {ha["cluster"]["worker"], hb["cluster"]["worker"]} == {0, 1}
            # Progress from both workers reached the one WebSocket client.
            progress = {f["data"]["prompt_id"] for f in frames if f["type"] == "progress"}
            assert progress == {a, b}
            # They overlapped, and the pair took at most 0.6x what one worker needs (the sum of their run times).
            assert hb["started"] < ha["finished"] and ha["started"] < hb["finished"]
            one_worker = (ha["finished"] - ha["started"]) + (hb["finished"] - hb["started"])
            assert wall <= 0.6 * one_worker, (wall, one_worker)
            await ws.close()
    run(go(), timeout=240)


def test_checkpoint_affinity_and_least_loaded(root):
    async def go():
        async with client(root, app=cluster_app(root)) as c:
            await workers(c)
            first = await wait_history(c, await submit(c, loader_chain("a.safetensors", 1)), timeout=60)
            assert first["status"] == "success"
            on_a = first["cluster"]["worker"]
            found = await workers(c)
            assert next(w for w in found if w["index"] == on_a)["models"] == ["checkpoints/a.safetensors"]
            # Both workers idle and free: the next prompt on A goes where A is loaded, a prompt on B to the other.
            for value in (2, 3):
                again = await wait_history(c, await submit(c, loader_chain("a.safetensors", value)), timeout=60)
                assert again["status"] == "success" and again["cluster"]["worker"] == on_a
            other = await wait_history(c, await submit(c, loader_chain("b.safetensors", 1)), timeout=60)
            assert other["cluster"]["worker"] == 1 - on_a
            # /free with unload_models forgets the models on every worker: affinity is gone.
            r = await c.post("/v1/free", json={"unload_models": True})
            assert (await r.json())["done"] is True
            assert all(w["models"] == [] for w in await workers(c))
    run(go(), timeout=240)


def test_killed_worker_prompt_completes_on_the_other(root):
    async def go():
        async with client(root, app=cluster_app(root)) as c:
            await workers(c)
            ws = await c.ws_connect("/v1/ws?client_id=k")
            pid = await submit(c, slow(5, 3.0, save="SaveText"), client_id="k")
            await until(ws, lambda f: f["type"] == "progress" and f["data"]["prompt_id"] == pid, timeout=60)
            found = await workers(c, 1)
            victim = next(w for w in found if w["current_prompt"] == pid)
            os.kill(victim["pid"], signal.SIGKILL)
            entry = await wait_history(c, pid, timeout=90)
            assert entry["status"] == "success", entry
            assert entry["attempts"] == 2
            assert entry["cluster"]["worker"] != victim["index"]
            [retry] = entry["cluster"]["retries"]
            assert retry["worker"] == victim["index"] and "Actor" in retry["reason"]
            [name] = [i["filename"] for i in entry["outputs"]["3"]["images"]]
            assert (root / "output" / name).read_text() == "5"
            # The dead worker was replaced by a new process.
            found = await workers(c, 2)
            replaced = next(w for w in found if w["index"] == victim["index"])
            assert replaced["pid"] != victim["pid"] and replaced["restarts"] == 1
            # And the queue and history account for the prompt exactly once.
            q = await (await c.get("/v1/queue")).json()
            assert q["running"] == [] and q["pending"] == []
            await ws.close()
    run(go(), timeout=300)


def test_prompt_whose_worker_dies_twice_fails_with_the_reason(root):
    async def go():
        async with client(root, app=cluster_app(root)) as c:
            await workers(c)
            pid = await submit(c, wf({"1": ("KillWorker", {"x": 1})}))
            entry = await wait_history(c, pid, timeout=120)
            assert entry["status"] == "error" and entry["attempts"] == 2
            [error] = entry["errors"]
            assert error["kind"] == "worker_died" and "died 2 times" in error["message"]
            retries = entry["cluster"]["retries"]
            assert len(retries) == 2 and retries[0]["worker"] != retries[1]["worker"]  # the re-run went elsewhere
            # Both workers were replaced and serve the next prompt.
            assert sorted(w["restarts"] for w in await workers(c)) == [1, 1]
            assert (await wait_history(c, await submit(c, chain(4)), timeout=60))["status"] == "success"
    run(go(), timeout=240)


def test_interrupt_and_cancel_across_the_cluster(root):
    async def go():
        async with client(root, app=cluster_app(root)) as c:
            await workers(c)
            ws = await c.ws_connect("/v1/ws?client_id=i")
            a = await submit(c, slow(1, 6.0), client_id="i")
            b = await submit(c, slow(2, 30.0), client_id="i")
            queued = await submit(c, slow(3, 1.0), client_id="i")
            seen: set[str] = set()

            def both_running(f: dict) -> bool:
                if f["type"] == "progress":
                    seen.add(f["data"]["prompt_id"])
                return {a, b} <= seen

            await until(ws, both_running, timeout=60)  # both workers busy: `queued` waits in the queue
            r = await c.delete(f"/v1/prompts/{queued}")
            assert (await r.json())["status"] == "cancelled"
            r = await c.post("/v1/interrupt", json={"prompt_id": b})
            assert (await r.json())["interrupted"] == b
            hb = await wait_history(c, b, timeout=30)
            assert hb["status"] == "interrupted"
            ha = await wait_history(c, a, timeout=30)
            assert ha["status"] == "success"
            assert (await wait_history(c, queued))["status"] == "cancelled"
            # ComfyUI's /interrupt without a prompt id reaches whatever runs, on any worker.
            d = await submit(c, slow(4, 30.0), client_id="i")
            await until(ws, lambda f: f["type"] == "progress" and f["data"]["prompt_id"] == d, timeout=60)
            assert (await c.post("/interrupt", json={})).status == 200
            assert (await wait_history(c, d, timeout=30))["status"] == "interrupted"
            await ws.close()
    run(go(), timeout=240)


@pytest.mark.parametrize("shared", [False, True], ids=["object-store", "shared-output"])
def test_file_names_stay_unique_across_workers(root, shared):
    (root / "output" / "img_00001_.png").write_bytes(b"not ours")

    async def go():
        async with client(root, app=cluster_app(root, shared=shared)) as c:
            await workers(c)
            pids = [await submit(c, wf({"1": ("MakeImage", {"value": v, "size": 16})})) for v in range(6)]
            entries = [await wait_history(c, pid, timeout=60) for pid in pids]
            assert all(e["status"] == "success" for e in entries), entries
            assert {e["cluster"]["worker"] for e in entries} == {0, 1}
            names = [e["outputs"]["1"]["images"][0]["filename"] for e in entries]
            assert len(set(names)) == 6 and "img_00001_.png" not in names
            from PIL import Image

            for v, name in enumerate(names):
                r = await c.get("/view", params={"filename": name, "type": "output"})
                assert r.status == 200
                with Image.open(root / "output" / name) as img:
                    assert img.getpixel((0, 0)) == (v, 255 - v, 128)
            assert (root / "output" / "img_00001_.png").read_bytes() == b"not ours"
    run(go(), timeout=240)


def test_previews_reach_the_client_and_system_routes_list_the_workers(root):
    async def go():
        async with client(root, app=cluster_app(root)) as c:
            await workers(c)
            ws = await c.ws_connect("/v1/ws?client_id=p")
            pid = await submit(c, wf({"1": ("Number", {"value": 3}), "2": ("PreviewSteps", {"x": ("1", "INT"), "steps": 3}),
                                      "3": ("Show", {"value": ("2", "INT")})}), client_id="p")
            frames = await until(ws, finished(pid), timeout=60)
            previews = [f["data"] for f in frames if f["type"] == "<binary>"]
            assert len(previews) == 3 and all(p[:8] == bytes([0, 0, 0, 1, 0, 0, 0, 1]) and p[8:10] == b"\xff\xd8"
                                              for p in previews)  # ComfyUI's frame: preview, JPEG
            await ws.close()
            native = await (await c.get("/v1/system")).json()
            assert [w["index"] for w in native["workers"]] == [0, 1]
            for w in native["workers"]:
                assert w["host"] and w["device"] == "cpu" and w["memory"]["ram_total"] > 0 and w["current_prompt"] is None
            comfy = await (await c.get("/system_stats")).json()
            assert len(comfy["devices"]) == 2 and all("worker" in d["name"] for d in comfy["devices"])
            assert len(comfy["workers"]) == 2
    run(go(), timeout=120)


def test_without_cluster_ray_is_never_imported(tmp_path):
    root = make_root(tmp_path)
    code = f"""
import asyncio, sys
sys.path.insert(0, {str(REPO / 'tests')!r})
from test_server_support import build_app, chain, client, submit, wait_history
import server.cli, server.app, server.cluster
async def main():
    async with client(__import__('pathlib').Path({str(root)!r})) as c:
        assert (await wait_history(c, await submit(c, chain())))["status"] == "success"
        assert "workers" not in await (await c.get("/v1/system")).json()
asyncio.run(main())
server.cli.build_parser().parse_args(["serve", "--cluster", "ray", "--cluster-workers", "2"])
print("ray imported:", "ray" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ray imported: False" in out.stdout


def test_chisel_serve_rejects_a_bad_cluster_flag(tmp_path):
    out = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--root", str(tmp_path), "--cluster", "spark"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2 and "--cluster expects ray, auto or ray://HOST:PORT" in out.stderr


def _demo_root(root: Path) -> Path:
    import shutil

    shutil.copy(REPO / "models" / "checkpoints" / "chisel-demo-v1.safetensors", root / "models" / "checkpoints")
    return root


def test_chisel_run_sweeps_the_demo_model_over_the_cluster_with_the_same_images(root):
    """`chisel run --cluster auto --sweep` joins the running Ray instance, fans the sweep out over two workers and
    reports in the order given; each image equals the one the engine draws in this process."""
    import numpy as np
    import torch
    from PIL import Image

    from graph.workflow import load_file
    from server.cli import build_runtime, with_inputs

    _demo_root(root)
    workflow = REPO / "workflows" / "txt2img.json"
    seeds = (1, 2)
    out = subprocess.Popen([sys.executable, "-m", "server.cli", "run", str(workflow), "--root", str(root), "--device",
                            "cpu", "--set", "3.steps=4", "--sweep", "3.seed=" + ",".join(map(str, seeds)),
                            "--cluster", "auto", "--cluster-workers", "2", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    # Meanwhile the reference, here, on one thread as in a one-CPU Ray worker (same float32 summation order).
    import argparse

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        registry, _, engine = build_runtime(argparse.Namespace(root=str(root), device="cpu",
                                                               output_dir=str(root / "local")))
        local = []
        for seed in seeds:
            result = engine.run(with_inputs(load_file(workflow, registry), {("3", "seed"): seed, ("3", "steps"): 4}))
            assert result.status == "success", result.errors
            local.append(root / "local" / result.outputs["9"]["images"][0]["filename"])
    finally:
        torch.set_num_threads(threads)
    stdout, stderr = out.communicate(timeout=400)
    assert out.returncode == 0, stderr[-3000:]
    reports = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert [r["set"] for r in reports] == [{"3.seed": s, "3.steps": 4} for s in seeds]  # the order given
    assert all(r["status"] == "success" for r in reports)
    remote = [Path(r["outputs"]["9"][0]) for r in reports]
    assert len(set(remote)) == len(seeds) and all(p.parent == root / "output" for p in remote)
    for a, b in zip(local, remote):
        with Image.open(a) as x, Image.open(b) as y:
            diff = np.abs(np.asarray(x, dtype=np.int16) - np.asarray(y, dtype=np.int16))
        assert diff.max() == 0, f"{b.name}: {int((diff > 0).sum())} pixels differ, by up to {diff.max()}"


SERVE_TOYS = """
import asyncio, pathlib, sys
sys.path.insert(0, {tests!r})
from test_server_support import build_app
from server.app import _run
from server.cluster import ClusterOptions, RuntimeSpec
from server.routes_native import SERVER
root = pathlib.Path({root!r})
spec = RuntimeSpec(root=str(root), device="cpu", plain=True, plugin_folders=[str(root / "custom_nodes")],
                   entry_point_group="chisel.tests-none")
app = build_app(root, cluster=ClusterOptions(address="auto", workers=2, shared_output={shared}, log_to_driver=False),
                cluster_runtime=spec)
asyncio.run(_run(app, "127.0.0.1", 0, app[SERVER].config))
"""


class ToyClusterServe(ServeProcess):
    """A server process over the toy nodes (no torch) joining the module's Ray instance, as `chisel serve --cluster
    auto --cluster-workers 2` does (that command's own path is covered by the demo model test)."""

    def __init__(self, root: Path, shared: bool = False):
        self.root = root
        self.log = open(root / f"serve-{time.monotonic_ns()}.log", "w+")
        code = SERVE_TOYS.format(tests=str(REPO / "tests"), root=str(root), shared=shared)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self.url = self._wait_url()


def test_server_killed_with_prompts_on_workers_recovers_them(root):
    server = ToyClusterServe(root)
    try:
        async def first():
            from aiohttp import ClientSession

            async with ClientSession(server.url) as c:
                await workers(c, 2, timeout=240)
                pids = [await submit(c, slow(v, 4.0, save="SaveText")) for v in (1, 2)]
                deadline = time.monotonic() + 60
                while len((await (await c.get("/v1/queue")).json())["running"]) < 2:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.1)
                return pids
        pids = run(first(), timeout=300)
        server.kill()
    finally:
        if server.proc.poll() is None:
            server.stop()
    again = ToyClusterServe(root)
    try:
        assert "re-queued 2 prompt(s)" in "".join(again.lines)

        async def second():
            from aiohttp import ClientSession

            async with ClientSession(again.url) as c:
                entries = [await wait_history(c, pid, timeout=240) for pid in pids]
                hist = await (await c.get("/v1/history", params={"limit": 10})).json()
                return entries, hist
        entries, hist = run(second(), timeout=300)
    finally:
        again.stop()
    assert [e["status"] for e in entries] == ["success", "success"], [(e["errors"], e.get("cluster")) for e in entries]
    assert all(e["attempts"] == 2 for e in entries)
    assert sorted(i["prompt_id"] for i in hist["items"]) == sorted(pids)  # each once, nothing else
    for v, e in zip((1, 2), entries):
        [name] = [i["filename"] for i in e["outputs"]["3"]["images"]]
        assert (root / "output" / name).read_text() == str(v)


@pytest.mark.parametrize("shared", [False, True], ids=["object-store", "shared-output"])
def test_server_killed_while_recording_neither_repeats_a_prompt_nor_loses_its_file(root, shared):
    """As on one process (test_server_durability): prompt A's file came from its worker (as bytes, or staged by the
    worker in the shared output folder) and the server is killed just after journaling A's result, before A's file
    has its final name; meanwhile prompt B, on the other worker, was interrupted by its client. At the next start A
    is finished (its file published, attempts 1), not run again, and B stays interrupted. (The cluster used to give
    workers' files their final names at once: a kill before the record re-ran the prompt and wrote the file twice.)"""
    (root / "custom_nodes" / "pause_points.py").write_text(PAUSE_POINTS)
    a, b = "pause-after-record", "interrupted"
    server = ToyClusterServe(root, shared=shared)
    try:
        async def first():
            from aiohttp import ClientSession

            async with ClientSession(server.url) as c:
                await workers(c, 2, timeout=240)
                ws = await c.ws_connect("/v1/ws?client_id=k")
                await submit(c, slow(2, 30.0), client_id="k", prompt_id=b)
                await until(ws, lambda f: f["type"] == "progress" and f["data"]["prompt_id"] == b, timeout=60)
                await submit(c, chain(7, steps=1, save="SaveText"), prompt_id=a)  # on the other worker
                await until_paused(root, a)  # the finisher holds: B's result cannot be recorded after it
                r = await c.post("/v1/interrupt", json={"prompt_id": b})
                assert (await r.json())["interrupted"] == b
                await until(ws, lambda f: f["type"] == "interrupted" and f["data"]["prompt_id"] == b, timeout=60)
                await ws.close()
        run(first(), timeout=300)
        server.kill()
    finally:
        if server.proc.poll() is None:
            server.stop()
    # A's file is only staged (a .part): nothing is under a final name
    assert [p.name for p in (root / "output").iterdir() if not p.name.startswith(".")] == []
    assert [p.name for p in (root / "output").iterdir() if p.name.endswith(".part")]
    again = ToyClusterServe(root, shared=shared)
    try:
        async def second():
            from aiohttp import ClientSession

            async with ClientSession(again.url) as c:
                return [await wait_history(c, pid, timeout=60) for pid in (a, b)]
        done, stopped = run(second(), timeout=120)
        assert f"recorded ['{a}', '{b}']: finished" in again.log_text() or \
            f"recorded ['{b}', '{a}']: finished" in again.log_text(), again.log_text()[-2000:]
    finally:
        again.stop()
    assert done["status"] == "success" and done["attempts"] == 1, done  # finished, not run again
    [ref] = done["outputs"]["3"]["images"]
    assert sorted(p.name for p in (root / "output").iterdir()) == [ref["filename"]] == ["text_00001_.txt"]
    assert (root / "output" / ref["filename"]).read_text() == "7"
    assert stopped["status"] == "interrupted" and stopped["attempts"] == 1, stopped
    assert stopped["errors"][0]["kind"] == "interrupted" and stopped["errors"][0]["node_id"] == "2"


def test_name_book_and_worker_choice():
    from types import SimpleNamespace

    from server.cluster.affinity import choose
    from server.cluster.names import NameBook

    book = NameBook({"output": {"": ["img_00001_.png"]}})
    assert book.reserve("output", "", "img_00001_.png") == ["img_00001_.png"]
    assert book.reserve("output", "", "img_00002_.png") is None
    assert book.reserve("output", "", "img_00002_.png") == ["img_00001_.png", "img_00002_.png"]
    assert book.reserve("output", "sub", "img_00001_.png") is None and book.reserve("temp", "", "img_00001_.png") is None

    w0, w1, w2 = (SimpleNamespace(index=i, models=m) for i, m in enumerate([{"checkpoints/a"}, set(), {"checkpoints/b"}]))
    assert choose([w0, w1, w2], frozenset({"checkpoints/b"})) is w2        # affinity
    assert choose([w0, w1, w2], frozenset({"checkpoints/c"})) is w1        # else the one holding fewest models
    assert choose([w0, w1, w2], frozenset({"checkpoints/a"}), avoid={0}) is w0  # affinity beats avoiding
    assert choose([w1, w2], frozenset(), avoid={1}) is w2                  # the worker that died under it comes last


def test_workers_get_every_runtime_flag():
    """Each runtime flag (those `chisel validate` takes besides its own) reaches the workers' RuntimeSpec."""
    import dataclasses

    from server.cli import build_parser
    from server.cluster import RuntimeSpec

    validate = build_parser()._subparsers._group_actions[0].choices["validate"]
    flags = {a.dest for a in validate._actions} - {"help", "workflow", "json"}
    assert flags and flags <= {f.name for f in dataclasses.fields(RuntimeSpec)}
    args = build_parser().parse_args(["serve", "--root", "/r", "--device", "cpu", "--low-vram", "--cache-ram-gb", "2",
                                      "--cluster", "ray"])
    spec = RuntimeSpec.from_args(args)
    assert (spec.root, spec.device, spec.low_vram, spec.cache_ram_gb) == (str(Path("/r").resolve()), "cpu", True, 2.0)
