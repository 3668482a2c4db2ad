"""Limits a person sets — as ``chisel serve`` flags, in a settings file, or in the environment — and what each does
to a running server: queue length, body, upload and pixel size, nodes per prompt, files per prompt, history
retention by count and by age (with optional deletion of files), temp-folder cleanup on start and by age."""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import time

import aiohttp
import pytest

from server import settings as S
from test_server_support import REPO, ServeProcess, chain, client, make_root, run, submit, wait_history, wf

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path / "root")


def _png(size=(8, 8)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, format="PNG")
    return buf.getvalue()


def _form(content: bytes, name: str = "x.png") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("image", content, filename=name, content_type="image/png")
    return form


def _parse(*argv: str) -> argparse.Namespace:
    from server.cli import build_parser

    return build_parser().parse_args(["serve", *argv])


# -- where settings come from -------------------------------------------------------------------------------------------
def test_settings_file_then_environment_then_flags(tmp_path):
    toml = tmp_path / "chisel.toml"
    toml.write_text('max_queue = 5\nmax_body_mb = 2\nhistory_delete_files = true\nallow_origin = ["http://a.example"]\n')
    got = S.load(_parse("--settings", str(toml)), environ={})
    assert (got.max_queue, got.max_body_mb, got.history_delete_files, got.allow_origin) == (5, 2, True,
                                                                                          ["http://a.example"])
    got = S.load(_parse("--settings", str(toml)), environ={"CHISEL_MAX_QUEUE": "7"})
    assert got.max_queue == 7  # the environment overrides the file
    got = S.load(_parse("--settings", str(toml), "--max-queue", "9", "--no-history-delete-files"),
                 environ={"CHISEL_MAX_QUEUE": "7"})
    assert got.max_queue == 9 and got.history_delete_files is False  # flags override both
    js = tmp_path / "chisel.json"
    js.write_text('{"max_images_per_prompt": 3, "temp_max_age_hours": 0.5}')
    got = S.load(_parse("--settings", str(js)), environ={})
    assert (got.max_images_per_prompt, got.temp_max_age_hours) == (3, 0.5)
    assert S.load(_parse(), environ={}) == S.Settings()  # nothing given: the defaults


@pytest.mark.parametrize("text,named", [("max_queeu = 5\n", "max_queeu"), ("max_queue = 0\n", "max_queue"),
                                        ("max_body_mb = 'big'\n", "max_body_mb"), ("max_queue = [\n", "TOML")])
def test_a_bad_settings_file_is_refused_by_name(tmp_path, text, named):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(S.SettingsError, match=named):
        S.load(_parse("--settings", str(bad)), environ={})
    proc = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--settings", str(bad), "--root",
                           str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2 and named in proc.stderr and "Traceback" not in proc.stderr


def test_serve_help_documents_every_setting():
    proc = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=60, check=True)
    text = " ".join(proc.stdout.split())
    for name, field in S.Settings.model_fields.items():
        assert "--" + name.replace("_", "-") in text
        assert " ".join(field.description.split())[:40] in text
    assert "--settings FILE" in text


# -- a real server under a settings file and flags -------------------------------------------------------------------------
def test_limits_from_a_settings_file_on_a_real_server(tmp_path):
    root = make_root(tmp_path / "root")
    settings = tmp_path / "limits.toml"
    settings.write_text("max_queue = 1\nmax_prompt_nodes = 3\nmax_body_mb = 0.05\n")
    proc = ServeProcess(root, "--settings", str(settings), "--max-upload-mb", "0.01")

    async def main():
        async with aiohttp.ClientSession(proc.url) as s:
            slow = {"workflow": chain(steps=40, delay=0.05)}
            running = (await (await s.post("/v1/prompts", json=slow)).json())["prompt_id"]
            deadline = time.monotonic() + 30
            while (await (await s.get("/v1/queue")).json())["running"] == [] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert (await s.post("/v1/prompts", json=slow)).status == 200  # the one queued place
            r = await s.post("/v1/prompts", json=slow)
            assert r.status == 429 and (await r.json())["error"]["kind"] == "queue_full"
            assert r.headers["Retry-After"]
            big = wf({str(i): ("Number", {"value": i}) for i in range(1, 4)} | {"9": ("Show", {"value": ("1", "INT")})})
            r = await s.post("/v1/prompts", json={"workflow": big})
            assert r.status == 413 and (await r.json())["error"]["kind"] == "prompt_too_large"
            r = await s.post("/v1/validate", json={"workflow": chain(), "set": {"1.pad": "x" * 60_000}})
            assert r.status == 413 and (await r.json())["error"]["kind"] == "too_large"
            r = await s.post("/v1/upload", data=_form(_png((256, 256)) + os.urandom(20_000)))
            assert r.status == 413 and (await r.json())["error"]["kind"] == "too_large"
            r = await s.post("/v1/upload", data=_form(_png()))
            assert r.status == 200
            await s.delete(f"/v1/prompts/{running}")

    try:
        run(main())
    finally:
        proc.stop()
    assert "Traceback" not in proc.output()


# -- each limit, on an in-process server ----------------------------------------------------------------------------------
def test_files_per_prompt(root):
    three = wf({"1": ("Number", {"value": 1}), "2": ("SaveText", {"value": ("1", "INT"), "prefix": "a"}),
                "3": ("SaveText", {"value": ("1", "INT"), "prefix": "b"}),
                "4": ("SaveText", {"value": ("1", "INT"), "prefix": "c"})})

    async def main():
        async with client(root, max_images_per_prompt=2) as c:
            entry = await wait_history(c, await submit(c, three))
            assert entry["status"] == "error"
            assert any("--max-images-per-prompt" in e["message"] for e in entry["errors"]), entry["errors"]
            assert len(list((root / "output").glob("*.txt"))) == 2
            entry = await wait_history(c, await submit(c, chain(save="SaveText")))  # the next prompt counts afresh
            assert entry["status"] == "success"

    run(main())


def test_upload_pixel_limit_and_decompression_bomb(root):
    import struct
    import zlib

    def bomb(width: int, height: int) -> bytes:
        """A valid PNG header claiming width x height, with one tiny compressed row: kilobytes that would decode
        to gigabytes."""
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
                + chunk(b"IEND", b""))

    async def main():
        async with client(root, max_upload_pixels=1000) as c:
            r = await c.post("/v1/upload", data=_form(_png((40, 40))))
            body = await r.json()
            assert r.status == 413 and body["error"]["kind"] == "too_many_pixels" and "40x40" in body["error"]["message"]
            assert (await c.post("/v1/upload", data=_form(_png((20, 20))))).status == 200
        async with client(root) as c:  # the default limit
            r = await c.post("/v1/upload", data=_form(bomb(100_000, 100_000), "bomb.png"))
            assert r.status == 413 and (await r.json())["error"]["kind"] == "too_many_pixels"
            r = await c.post("/upload/image", data=_form(bomb(30_000, 30_000), "bomb2.png"))
            assert r.status == 413
        assert not (root / "input" / "bomb.png").exists() and not (root / "input" / "bomb2.png").exists()

    run(main())


def saved(i: int) -> dict:
    """A prompt that writes one text file named after ``i``."""
    return wf({"1": ("Number", {"value": i}), "3": ("SaveText", {"value": ("1", "INT"), "prefix": f"p{i}"})})


def test_history_retention_by_count_deletes_files_when_asked(root):
    async def main():
        async with client(root, max_history=2, history_delete_files=True) as c:
            entries = [await wait_history(c, await submit(c, saved(i))) for i in range(4)]
            files = [e["outputs"]["3"]["images"][0]["filename"] for e in entries]
            items = (await (await c.get("/v1/history")).json())["items"]
            assert [i["prompt_id"] for i in items] == [entries[3]["prompt_id"], entries[2]["prompt_id"]]
            assert [(root / "output" / f).exists() for f in files] == [False, False, True, True]

    run(main())


def test_history_retention_by_count_keeps_files_by_default(root):
    async def main():
        async with client(root, max_history=1) as c:
            entries = [await wait_history(c, await submit(c, saved(i))) for i in range(3)]
            assert len((await (await c.get("/v1/history")).json())["items"]) == 1
            assert all((root / "output" / e["outputs"]["3"]["images"][0]["filename"]).exists() for e in entries)

    run(main())


def test_history_retention_by_age(root):
    async def main():
        async with client(root, history_max_age=1.0, history_delete_files=True) as c:
            entry = await wait_history(c, await submit(c, chain(save="SaveText")))
            name = entry["outputs"]["3"]["images"][0]["filename"]
            assert (root / "output" / name).exists()
            deadline = time.monotonic() + 20
            while (await c.get(f"/v1/history/{entry['prompt_id']}")).status != 404:
                assert time.monotonic() < deadline, "the entry outlived its age limit"
                await asyncio.sleep(0.2)
            assert not (root / "output" / name).exists()

    run(main())


def test_temp_folder_emptied_on_start(root):
    temp = root / "temp"
    (temp / "sub").mkdir(parents=True)
    (temp / "a.png").write_bytes(b"x")
    (temp / "sub" / "b.png").write_bytes(b"y")
    (root / "output" / ".img_00001_.png.0123abcd.part").write_bytes(b"half")  # a write a killed server left
    (root / "output" / "keep.png").write_bytes(b"z")

    async def main():
        async with client(root):
            assert list(temp.iterdir()) == []
            assert [p.name for p in (root / "output").iterdir()] == ["keep.png"]

    run(main())


def test_temp_folder_kept_on_start_when_asked_and_cleaned_by_age(root):
    temp = root / "temp"
    temp.mkdir()
    long_ago, later = time.time() - 3600, time.time() + 3600

    def touch(name: str, when: float) -> None:
        (temp / name).write_bytes(b"x")
        os.utime(temp / name, (when, when))

    touch("old.png", long_ago)
    touch("new.png", later)

    async def main():
        async with client(root, temp_clean_on_start=False, temp_max_age=2.0):
            assert not (temp / "old.png").exists()  # older than the limit: gone at start
            assert (temp / "new.png").exists()  # the rest is kept
            touch("stale.png", long_ago)
            deadline = time.monotonic() + 20
            while (temp / "stale.png").exists():  # swept while running (every second with this limit)
                assert time.monotonic() < deadline, "the stale temp file was never swept"
                await asyncio.sleep(0.2)
            assert (temp / "new.png").exists()

    run(main())
