"""Helpers shared by the server tests (no tests here): a Chisel root with the toy nodes as plug-ins, the server
in-process on an ephemeral port (aiohttp's test server) or as a real ``chisel serve`` subprocess, and WebSocket
helpers. The server-only toy nodes below write files through the server's background writer."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer

from toy_nodes import wf  # noqa: F401  (re-exported for the server tests)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

SERVER_TOYS = '''
"""Server test nodes: files written through ctx.services.file_writer when the server offers it."""
import json
import time

from graph.comfy_format import to_comfy_api
from graph.node import Input, Node, NodeResult, Output
from graph.types import FLOAT, INT, STRING
from graph.workflow import Workflow


def _save(ctx, prefix, suffix, write):
    """Write a new output file named prefix_NNNNN_.suffix; through the server's writer when there is one."""
    folder = ctx.services.paths.dir("output")
    writer = ctx.services.file_writer
    i = 1
    while True:
        name = f"{prefix}_{i:05}_.{suffix}"
        try:
            if writer is not None:
                writer.submit(folder / name, write)
            elif (folder / name).exists():
                raise FileExistsError(name)
            else:
                write(folder / name)
            return name
        except FileExistsError:
            i += 1


class SaveText(Node):
    type = "SaveText"
    category = "output"
    output_node = True
    inputs = (Input("value", "*"), Input("prefix", STRING, default="text"),
              Input("write_delay", FLOAT, default=0.0, min=0.0, max=10.0))
    outputs = ()

    def run(self, ctx, value, prefix, write_delay):
        text = repr(value)

        def write(path):
            time.sleep(write_delay)
            path.write_text(text)

        name = _save(ctx, prefix, "txt", write)
        return NodeResult((), {"images": [{"filename": name, "subfolder": "", "type": "output"}], "text": [text]})


class MakeImage(Node):
    type = "MakeImage"
    category = "output"
    output_node = True
    inputs = (Input("value", INT, default=0, min=0, max=255), Input("size", INT, default=64, min=8, max=1024),
              Input("write_delay", FLOAT, default=0.0, min=0.0, max=10.0))
    outputs = ()

    def run(self, ctx, value, size, write_delay):
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        img = Image.new("RGB", (size, size), (value, 255 - value, 128))
        info = PngInfo()
        info.add_text("prompt", json.dumps(to_comfy_api(Workflow.model_validate(ctx.workflow), ctx.registry)))
        info.add_text("workflow", json.dumps(ctx.workflow))

        def write(path):
            time.sleep(write_delay)
            img.save(path, format="PNG", pnginfo=info)

        name = _save(ctx, "img", "png", write)
        return NodeResult((), {"images": [{"filename": name, "subfolder": "", "type": "output"}]})


class BigFile(Node):
    """Writes ``size_kb`` KiB (a disk that fills up fails it)."""
    type = "BigFile"
    category = "output"
    output_node = True
    inputs = (Input("x", INT), Input("size_kb", INT, default=1, min=1, max=1 << 20))
    outputs = ()

    def run(self, ctx, x, size_kb):
        data = bytes(range(256)) * (size_kb * 4)

        def write(path):
            with open(path, "wb") as fh:
                for i in range(0, len(data), 65536):
                    fh.write(data[i:i + 65536])

        name = _save(ctx, f"big{x}", "bin", write)
        return NodeResult((), {"images": [{"filename": name, "subfolder": "", "type": "output"}]})


class SlowPng(Node):
    """Writes the first half of a PNG, waits ``pause`` seconds, then the rest: a kill in between catches the write
    half done."""
    type = "SlowPng"
    category = "output"
    output_node = True
    inputs = (Input("x", INT), Input("pause", FLOAT, default=0.0, min=0.0, max=60.0))
    outputs = ()

    def run(self, ctx, x, pause):
        import io
        import os

        from PIL import Image

        buf = io.BytesIO()
        Image.effect_noise((256, 256), 64).save(buf, format="PNG", compress_level=0)
        data = buf.getvalue()

        def write(path):
            with open(path, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
                time.sleep(pause)
                fh.write(data[len(data) // 2:])

        name = _save(ctx, f"slow{x}", "png", write)
        return NodeResult((), {"images": [{"filename": name, "subfolder": "", "type": "output"}]})


class PreviewSteps(Node):
    type = "PreviewSteps"
    category = "testing"
    inputs = (Input("x", INT), Input("steps", INT, default=3, min=1, max=100))
    outputs = (Output("INT", INT),)

    def run(self, ctx, x, steps):
        from PIL import Image

        for i in range(steps):
            ctx.progress(i + 1, steps, preview=Image.new("RGB", (32, 32), (i * 40 % 256, 0, 0)))
        return (x,)
'''


def make_root(tmp: Path) -> Path:
    """A Chisel root: toy nodes and the server toys as plug-ins, an output folder."""
    plugins = tmp / "custom_nodes"
    plugins.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "toy_nodes.py", plugins / "toy_nodes.py")
    (plugins / "server_toys.py").write_text(SERVER_TOYS)
    (tmp / "output").mkdir(exist_ok=True)
    (tmp / "input").mkdir(exist_ok=True)
    return tmp


def chain(value: int = 2, steps: int = 3, delay: float = 0.0, save: str = "Show") -> dict:
    """Number -> Slow -> Show (or SaveText)."""
    return wf({"1": ("Number", {"value": value}), "2": ("Slow", {"x": ("1", "INT"), "steps": steps, "delay": delay}),
               "3": (save, {"value": ("2", "INT")})})


# -- in-process server --------------------------------------------------------------------------------------------------
def build_app(root: Path, **config: Any):
    """The app over the toy nodes only (no torch): services are a plain object with paths and a file writer."""
    from types import SimpleNamespace

    from graph.engine import Engine
    from graph.paths import ModelPaths
    from graph.registry import NodeRegistry
    from server.app import create_app
    from server.service import ServerConfig

    paths = ModelPaths(root=root, allow_paths=False)
    registry = NodeRegistry.discover(plugin_folders=[root / "custom_nodes"], entry_point_group="chisel.tests-none")
    services = SimpleNamespace(paths=paths, file_writer=None)
    engine = Engine(registry, services=services, paths=paths)
    config.setdefault("workflows_dir", root / "workflows")
    config.setdefault("web_dir", root / "web")
    config.setdefault("queue_throttle", 0.01)
    return create_app(registry, engine, services, ServerConfig(**config))


@contextlib.asynccontextmanager
async def client(root: Path, app=None, **config: Any):
    app = app if app is not None else build_app(root, **config)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(ws, predicate, timeout: float = 15.0) -> list[dict]:
    """JSON frames up to and including the first for which predicate(frame) is true (binary frames skipped)."""
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if msg.type.name == "BINARY":
            frames.append({"type": "<binary>", "data": msg.data})
            continue
        if msg.type.name != "TEXT":
            raise AssertionError(f"WebSocket ended: {msg.type} {msg.data!r}")
        frame = json.loads(msg.data)
        frames.append(frame)
        if predicate(frame):
            return frames


def finished(pid: str):
    return lambda f: f["type"] == "finished" and f["data"]["prompt_id"] == pid


async def submit(c, workflow: dict, **body: Any) -> str:
    r = await c.post("/v1/prompts", json={"workflow": workflow, **body})
    data = await r.json()
    assert r.status == 200, data
    return data["prompt_id"]


async def wait_history(c, pid: str, timeout: float = 15.0, headers=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await c.get(f"/v1/history/{pid}", headers=headers)
        entry = await r.json()
        if entry.get("status") in ("success", "error", "interrupted", "cancelled"):
            return entry
        await asyncio.sleep(0.02)
    raise AssertionError(f"prompt {pid} did not finish: {entry}")


PAUSE_POINTS = '''
"""Test plug-in (no nodes): the server's finisher stops for a minute just before or just after it first records the
result of a prompt (its journal, files staged) whose id starts with "pause-before-record" / "pause-after-record",
or just before it records the final result of one whose id starts with "pause-in-finish", leaving a marker file
beside the database, so that a test can SIGKILL the server at exactly that point (once: not where the marker
is)."""
import time
from pathlib import Path

from server import store as S

_journal = S.Store.journal


def _pause(store, prompt_id):
    marker = Path(store.path).with_name("paused-" + prompt_id)
    if not marker.exists():  # once: not in the re-run after the kill
        marker.write_text("")
        time.sleep(60)


def journal(self, prompt_id, *args, **kwargs):
    if prompt_id.startswith("pause-before-record"):
        _pause(self, prompt_id)
    _journal(self, prompt_id, *args, **kwargs)
    if prompt_id.startswith("pause-after-record"):
        _pause(self, prompt_id)


S.Store.journal = journal
_finish = S.Store.finish


def finish(self, prompt_id, *args, **kwargs):
    if prompt_id.startswith("pause-in-finish"):
        _pause(self, prompt_id)
    _finish(self, prompt_id, *args, **kwargs)


S.Store.finish = finish
'''


async def until_paused(root: Path, pid: str) -> None:
    """Wait until the :data:`PAUSE_POINTS` plug-in has paused the server's finisher for ``pid`` (it leaves a marker
    file)."""
    deadline = time.monotonic() + 60
    while not list(root.rglob(f"paused-{pid}")):
        assert time.monotonic() < deadline, "the finisher never reached the pause"
        await asyncio.sleep(0.02)


# -- a real `chisel serve` -------------------------------------------------------------------------------------------------
class ServeProcess:
    """``python -m server.cli serve --root ROOT --port 0`` in a subprocess; ``url`` once it listens."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None, preexec_fn=None):
        self.root = root
        self.log = open(root / f"serve-{time.monotonic_ns()}.log", "w+")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--root", str(root), "--port", "0",
                                      "--device", "cpu", *args], stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     cwd=REPO, env=full_env, preexec_fn=preexec_fn)
        self.lines: list[str] = []
        self.url = self._wait_url()

    def _wait_url(self, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"serving on (http://\S+)", line)
            if m:
                return m.group(1)
        self.proc.kill()
        self.log.seek(0)
        raise AssertionError(f"chisel serve did not start: {''.join(self.lines)}\n{self.log.read()[-3000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def log_text(self) -> str:
        """What the server has logged so far (its stderr)."""
        self.log.flush()
        return (self.root / Path(self.log.name).name).read_text()

    def output(self) -> str:
        rest = self.proc.stdout.read() if self.proc.poll() is not None else ""
        self.log.seek(0)
        return "".join(self.lines) + rest + self.log.read()


async def http(url: str) -> ClientSession:
    return ClientSession(base_url=url)
