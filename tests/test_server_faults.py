"""Faults around the output folder, on a real ``chisel serve``: a full disk (the process's file-size limit, so no
privileges are needed), a read-only folder, and a SIGKILL in the middle of a PNG write. The prompt fails clearly
(or is re-run after the kill), no partial file sits under a final name, and the history keeps everything."""
from __future__ import annotations

import asyncio
import os
import resource
import shutil
import subprocess
import time

import aiohttp
import pytest

from test_server_durability import _wait_all, _wait_running
from test_server_support import ServeProcess, make_root, wf

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def big(x: int, size_kb: int) -> dict:
    return wf({"1": ("Number", {"value": x}), "2": ("BigFile", {"x": ("1", "INT"), "size_kb": size_kb})})


async def _queue(s: aiohttp.ClientSession, workflow: dict) -> str:
    r = await s.post("/v1/prompts", json={"workflow": workflow})
    assert r.status == 200, await r.text()
    return (await r.json())["prompt_id"]


def _final_files(root) -> list[str]:
    return sorted(p.name for p in (root / "output").iterdir() if not p.name.startswith("."))


def test_a_full_disk_fails_the_prompt_cleanly(tmp_path):
    root = make_root(tmp_path / "root")
    limit = 2 << 20  # writes past 2 MiB fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)
    server = ServeProcess(root, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))

    async def main():
        async with aiohttp.ClientSession(server.url) as s:
            first = await _queue(s, big(1, 16))
            too_big = await _queue(s, big(2, 4096))
            after = await _queue(s, big(3, 16))
            return await _wait_all(s, [first, too_big, after])

    try:
        entries = list(asyncio.run(main()).values())
    finally:
        server.stop()
    assert [e["status"] for e in entries] == ["success", "error", "success"]
    (error,) = entries[1]["errors"]
    assert error["kind"] == "write_failed" and "big2_00001_.bin" in error["message"]
    assert "File too large" in error["message"] and error["node_id"] == "2"
    assert _final_files(root) == ["big1_00001_.bin", "big3_00001_.bin"]  # no partial big2 under any name
    assert not [p for p in (root / "output").iterdir() if p.name.endswith(".part")]
    assert "Traceback" not in server.output()


def _make_read_only(folder) -> callable:
    """Read-only even for root (the immutable attribute), else by permissions. Returns the undo."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("running as root on a filesystem without the immutable attribute: cannot make a folder "
                    "read-only for this process")
    return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_output_folder_fails_the_prompt_cleanly(tmp_path):
    root = make_root(tmp_path / "root")
    server = ServeProcess(root)
    undo = None
    try:
        async def main():
            nonlocal undo
            async with aiohttp.ClientSession(server.url) as s:
                ok = await _queue(s, big(1, 4))
                await _wait_all(s, [ok])
                undo = _make_read_only(root / "output")
                failed = await _queue(s, big(2, 4))
                entries = await _wait_all(s, [ok, failed])
                undo()
                undo = None
                again = await _queue(s, big(3, 4))
                entries.update(await _wait_all(s, [again]))
                history = (await (await s.get("/v1/history")).json())["items"]
                return list(entries.values()), history

        entries, history = asyncio.run(main())
    finally:
        if undo is not None:
            undo()
        server.stop()
    assert [e["status"] for e in entries] == ["success", "error", "success"]
    (error,) = entries[1]["errors"]
    assert error["kind"] == "write_failed" and "big2_00001_.bin" in error["message"]
    assert "ermission" in error["message"] or "ead-only" in error["message"] or "not permitted" in error["message"]
    assert [h["status"] for h in history] == ["success", "error", "success"][::-1]  # nothing lost
    assert _final_files(root) == ["big1_00001_.bin", "big3_00001_.bin"]
    assert "Traceback" not in server.output()


def test_sigkill_mid_png_write_leaves_no_half_image(tmp_path):
    from PIL import Image

    root = make_root(tmp_path / "root")
    slow = wf({"1": ("Number", {"value": 7}), "2": ("SlowPng", {"x": ("1", "INT"), "pause": 3.0})})
    server = ServeProcess(root)
    try:
        async def before():
            async with aiohttp.ClientSession(server.url) as s:
                pid = await _queue(s, slow)
                await _wait_running(s, pid)
                deadline = time.monotonic() + 30
                while not [p for p in (root / "output").iterdir() if p.name.endswith(".part") and p.stat().st_size]:
                    assert time.monotonic() < deadline, "the write never started"
                    await asyncio.sleep(0.02)
                return pid

        pid = asyncio.run(before())
        server.kill()  # half the PNG is on disk, under its temporary name
    finally:
        if server.proc.poll() is None:
            server.kill()
    parts = [p for p in (root / "output").iterdir() if p.name.endswith(".part")]
    assert parts and parts[0].stat().st_size > 0
    assert _final_files(root) == []  # nothing under a final name

    restarted = ServeProcess(root)
    try:
        async def after():
            async with aiohttp.ClientSession(restarted.url) as s:
                return (await _wait_all(s, [pid]))[pid]

        entry = asyncio.run(after())
    finally:
        restarted.stop()
    assert entry["status"] == "success" and entry["attempts"] == 2  # re-run once after the crash
    assert [p.name for p in (root / "output").iterdir()] == ["slow7_00001_.png"]  # the half write was cleared
    with Image.open(root / "output" / "slow7_00001_.png") as img:
        img.load()  # a whole PNG
        assert img.size == (256, 256)
