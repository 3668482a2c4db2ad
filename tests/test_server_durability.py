"""The queue and history survive crashes and restarts: a real ``chisel serve`` subprocess is SIGKILLed while a
prompt runs and started again; and the store's recovery rules, directly."""
from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import aiohttp
import pytest

from server import store as S
from test_server_support import PAUSE_POINTS, ServeProcess, make_root, until_paused, wf

pytestmark = pytest.mark.timeout(120)


def saving_chain(value: int, steps: int = 1, delay: float = 0.0) -> dict:
    return wf({"1": ("Number", {"value": value}), "2": ("Slow", {"x": ("1", "INT"), "steps": steps, "delay": delay}),
               "3": ("SaveText", {"value": ("2", "INT"), "prefix": f"p{value}"})})


async def _wait_running(s: aiohttp.ClientSession, pid: str, timeout: float = 30, alone: bool = True) -> None:
    """Until ``pid`` is running (``alone``: the only prompt listed as running; an earlier prompt whose files are
    still being written is listed as running too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = await (await s.get("/v1/queue")).json()
        running = [i["prompt_id"] for i in q["running"]]
        if running == [pid] or (not alone and pid in running):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{pid} never ran: {q}")


async def _wait_all(s: aiohttp.ClientSession, pids: list[str], timeout: float = 30) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = {p: await (await s.get(f"/v1/history/{p}")).json() for p in pids}
        if all(e["status"] in S.FINISHED_STATES for e in entries.values()):
            return entries
        await asyncio.sleep(0.1)
    raise AssertionError(f"not all finished: {entries}")


def _entry_after_restart(root, pid: str) -> dict:
    """Start the server again on ``root``, wait for ``pid`` to be finished, stop cleanly; its history entry."""
    server = ServeProcess(root)
    try:
        async def after():
            async with aiohttp.ClientSession(server.url) as s:
                return (await _wait_all(s, [pid]))[pid]

        return asyncio.run(after())
    finally:
        assert server.stop() == 0


def test_sigkill_while_running_then_restart(tmp_path):
    root = make_root(tmp_path)
    server = ServeProcess(root)
    try:
        async def before():
            async with aiohttp.ClientSession(server.url) as s:
                pids = []
                for value, steps in ((1, 60), (2, 1), (3, 1)):
                    r = await s.post("/v1/prompts", json={"workflow": saving_chain(value, steps, 0.05)})
                    assert r.status == 200, await r.text()
                    pids.append((await r.json())["prompt_id"])
                await _wait_running(s, pids[0])
                await asyncio.sleep(0.3)
                return pids

        pids = asyncio.run(before())
        server.kill()  # SIGKILL: no clean-up of any kind
    finally:
        if server.proc.poll() is None:
            server.kill()
    assert not list((root / "output").glob("p*"))  # nothing had been written yet

    server = ServeProcess(root)
    try:
        assert "re-queued 1 prompt(s), failed 0" in "".join(server.lines)

        async def after():
            async with aiohttp.ClientSession(server.url) as s:
                entries = await _wait_all(s, pids)
                history = (await (await s.get("/v1/history")).json())["items"]
                return entries, history

        entries, history = asyncio.run(after())
    finally:
        assert server.stop() == 0
    first, second, third = (entries[p] for p in pids)
    assert [e["status"] for e in (first, second, third)] == ["success"] * 3
    assert first["attempts"] == 2 and second["attempts"] == 1 and third["attempts"] == 1
    assert first["started"] < second["started"] < third["started"]  # re-queued at the head: it ran first
    assert [h["prompt_id"] for h in history] == pids[::-1] and [h["number"] for h in history] == [3, 2, 1]
    for e, value in zip((first, second, third), (1, 2, 3)):
        [ref] = e["outputs"]["3"]["images"]
        assert (root / "output" / ref["filename"]).read_text() == str(value)
        assert e["workflow"]["nodes"]["1"]["inputs"]["value"] == value
    assert sorted(p.name for p in (root / "output").iterdir()) == ["p1_00001_.txt", "p2_00001_.txt", "p3_00001_.txt"]


def test_graceful_stop_finishes_in_flight_writes_requeues_the_running_prompt_and_exits_promptly(tmp_path):
    """SIGTERM while prompt A's file is still being written (a 10 s write) and prompt B runs a node that would take
    500 s, prompt C waiting behind it. A graceful stop must: let A's write land and record A as a success; interrupt
    B and put it back in the queue without using an attempt; start nothing new (C stays queued); and exit on its
    own. A server that merely waited would sit through B's 500 s and overrun the stop's 60 s bound (itself far more
    than the ~10 s the stop needs); one that just exited would lose A's file or leave A, B "running"."""
    root = make_root(tmp_path)
    a_wf = wf({"1": ("Number", {"value": 5}), "3": ("SaveText", {"value": ("1", "INT"), "prefix": "a",
                                                                  "write_delay": 10.0})})
    server = ServeProcess(root)
    db = re.search(r"queue: (.+?)\)", "".join(server.lines)).group(1)
    try:
        async def before():
            async with aiohttp.ClientSession(server.url) as s:
                pids = []
                for workflow in (a_wf, saving_chain(6, 1000, 0.5), saving_chain(7, 1, 0.0)):
                    r = await s.post("/v1/prompts", json={"workflow": workflow})
                    assert r.status == 200, await r.text()
                    pids.append((await r.json())["prompt_id"])
                await _wait_running(s, pids[1], alone=False)
                a_now = await (await s.get(f"/v1/history/{pids[0]}")).json()
                return pids, a_now

        (a, b, c), a_at_stop = asyncio.run(before())
        # A's nodes are done (B runs now) but its file is still being written: A is not finished yet
        assert a_at_stop["status"] not in S.FINISHED_STATES, a_at_stop
        assert not (root / "output" / "a_00001_.txt").exists()
        assert server.stop(timeout=60) == 0  # raises (and the test fails) if the server does not exit by itself
        assert "goes back to the queue" in server.output()
    finally:
        if server.proc.poll() is None:
            server.kill()

    # what the stopped server left behind: A's file complete under its final name, no partial files
    assert (root / "output" / "a_00001_.txt").read_text() == "5"
    assert sorted(p.name for p in (root / "output").iterdir()) == ["a_00001_.txt"]
    store = S.Store(Path(db))
    try:
        rec = {pid: store.get(pid) for pid in (a, b, c)}
    finally:
        store.close()
    assert rec[a]["status"] == S.SUCCESS and "a_00001_.txt" in json.dumps(rec[a]["result"]["outputs"])
    assert (rec[b]["status"], rec[b]["attempts"], rec[b]["started"]) == (S.QUEUED, 0, None)  # no attempt used
    assert (rec[c]["status"], rec[c]["attempts"]) == (S.QUEUED, 0)  # nothing new was started while stopping

    # the next server runs B again first, from the start
    server = ServeProcess(root)
    try:
        assert "re-queued" not in "".join(server.lines)  # a clean stop: nothing to recover

        async def after():
            async with aiohttp.ClientSession(server.url) as s:
                await _wait_running(s, b)
                await s.post("/v1/interrupt", json={"prompt_id": b})  # no need to sit through it again
                return await _wait_all(s, [b, c])

        entries = asyncio.run(after())
    finally:
        server.stop()
    assert entries[b]["status"] == "interrupted" and entries[b]["attempts"] == 1  # the graceful stop used no attempt
    assert entries[c]["status"] == "success"


def test_store_recovery_rules(tmp_path):
    db = tmp_path / "q.sqlite3"
    store = S.Store(db)
    with pytest.raises(S.StoreLocked):
        S.Store(db)  # one server per database
    for pid in ("a", "b", "c"):
        store.add(pid, {"nodes": {}}, client_id="x")
    row = store.claim_next()
    assert row["prompt_id"] == "a" and row["attempts"] == 1 and row["status"] == S.RUNNING
    store.close()  # "crash" with a running

    store = S.Store(db)
    assert store.recover() == {"requeued": ["a"], "failed": []}
    assert [r["prompt_id"] for r in store.queue()[1]] == ["a", "b", "c"]  # back at the head
    assert store.claim_next()["attempts"] == 2
    store.close()  # crashed again while running it

    store = S.Store(db)
    assert store.recover() == {"requeued": [], "failed": ["a"]}
    a = store.get("a")
    assert a["status"] == S.ERROR and a["result"]["errors"][0]["kind"] == "server_crashed"
    assert [r["prompt_id"] for r in store.queue()[1]] == ["b", "c"]

    # a graceful stop hands the prompt back without using an attempt
    b = store.claim_next()
    store.requeue(b["prompt_id"])
    assert store.get("b")["attempts"] == 0 and store.get("b")["status"] == S.QUEUED

    # queue length and history limits
    small = S.Store(tmp_path / "small.sqlite3", max_queue=2, max_history=2)
    small.add("1", {})
    small.add("2", {}, front=True)
    with pytest.raises(S.QueueFull):
        small.add("3", {})
    assert [r["prompt_id"] for r in small.queue()[1]] == ["2", "1"]
    small.cancel(["1"])
    with pytest.raises(S.Conflict):
        small.add("1", {})  # ids are never reused
    small.finish(small.claim_next()["prompt_id"], S.SUCCESS, {"outputs": {}})
    for pid in ("4", "5"):
        small.add(pid, {})
    small.cancel(None)
    assert [r["prompt_id"] for r in small.history()] == ["5", "4"]  # only the newest two finished kept
    assert small.delete(["5", "nope"]) == ["5"]
    small.close()
    store.close()


@pytest.mark.parametrize("point", ["before-record", "after-record"])
def test_sigkill_while_a_prompt_is_being_recorded_neither_loses_nor_repeats_its_file(tmp_path, point):
    """Its file is written; the server is killed just before (or just after) the prompt's result is first recorded.
    Before: the prompt is re-run once and there is one file (a file already under its final name would have been
    written a second time by the re-run: found by benchmarks/soak.py); after: the next start publishes the staged
    file and records the result, and the prompt is not run again."""
    root = make_root(tmp_path)
    (root / "custom_nodes" / "pause_points.py").write_text(PAUSE_POINTS)
    pid = f"pause-{point}"
    server = ServeProcess(root)
    try:
        async def before():
            async with aiohttp.ClientSession(server.url) as s:
                r = await s.post("/v1/prompts", json={"workflow": saving_chain(5), "prompt_id": pid})
                assert r.status == 200, await r.text()
                await until_paused(root, pid)

        asyncio.run(before())
        server.kill()
    finally:
        if server.proc.poll() is None:
            server.kill()
    # killed before its record: nothing under a final name; after it: the file is only staged (a .part) too
    assert [p.name for p in (root / "output").iterdir() if not p.name.startswith(".")] == []
    assert [p.name for p in (root / "output").iterdir() if p.name.endswith(".part")]

    entry = _entry_after_restart(root, pid)
    assert entry["status"] == "success"
    assert entry["attempts"] == (2 if point == "before-record" else 1)  # re-run once / not run again
    [ref] = entry["outputs"]["3"]["images"]
    assert sorted(p.name for p in (root / "output").iterdir()) == [ref["filename"]] == ["p5_00001_.txt"]
    assert (root / "output" / ref["filename"]).read_text() == "5"
    assert "Traceback" not in server.log_text()


def test_a_start_finishes_the_prompts_a_kill_left_journaled(tmp_path):
    """The recovery rule directly: a journaled prompt's staged files are published (one already linked before the
    kill is only tidied; one whose staged file is gone is an error of that prompt), its result recorded, and it is
    not re-queued; a running prompt without a journal is."""
    from graph import atomic_files
    from server.worker import finish_journaled

    out = tmp_path / "output"
    out.mkdir()
    store = S.Store(tmp_path / "q.sqlite3")
    for pid in ("done", "gone", "again"):
        store.add(pid, {"nodes": {}})
        store.claim_next()
    staged = atomic_files.stage(out / "a.txt", lambda tmp: tmp.write_text("A"))
    linked = atomic_files.stage(out / "b.txt", lambda tmp: tmp.write_text("B"))
    (out / "b.txt").hardlink_to(linked)  # killed between the link and the removal of the temporary name
    store.journal("done", S.SUCCESS, {"outputs": {"1": {"images": ["a", "b"]}}, "errors": []},
                  [(str(staged), str(out / "a.txt")), (str(linked), str(out / "b.txt"))])
    store.journal("gone", S.SUCCESS, {"outputs": {}, "errors": []}, [(str(out / ".c.txt.0000dead.part"),
                                                                      str(out / "c.txt"))])
    store.close()  # killed

    store = S.Store(tmp_path / "q.sqlite3")
    assert sorted(finish_journaled(store)) == ["done", "gone"]
    assert store.recover() == {"requeued": ["again"], "failed": []}
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]  # no temporary names left
    assert (out / "a.txt").read_text() == "A" and (out / "b.txt").read_text() == "B"
    done, gone = store.get("done"), store.get("gone")
    assert done["status"] == S.SUCCESS and done["result"]["outputs"] == {"1": {"images": ["a", "b"]}}
    assert gone["status"] == S.ERROR and gone["result"]["errors"][0]["kind"] == "write_failed"
    assert store.journaled() == [] and finish_journaled(store) == []


def test_an_interrupt_the_server_acknowledged_survives_a_sigkill(tmp_path):
    """A client interrupts a running prompt; the server is killed before that prompt's result is recorded (in a
    batch, it is recorded only when the batch is over): at the next start the prompt is interrupted, not run again
    (the soak found interrupted prompts of a batch re-run to success after a kill)."""
    root = make_root(tmp_path)
    (root / "custom_nodes" / "pause_points.py").write_text(PAUSE_POINTS)
    pid = "pause-in-finish"
    server = ServeProcess(root)
    try:
        async def before():
            async with aiohttp.ClientSession(server.url) as s:
                r = await s.post("/v1/prompts", json={"workflow": saving_chain(6, steps=400, delay=0.05),
                                                      "prompt_id": pid})
                assert r.status == 200, await r.text()
                await _wait_running(s, pid)
                r = await s.post("/v1/interrupt", json={"prompt_id": pid})
                assert (await r.json())["interrupted"] == pid
                await until_paused(root, pid)

        asyncio.run(before())
        server.kill()
    finally:
        if server.proc.poll() is None:
            server.kill()

    entry = _entry_after_restart(root, pid)
    assert entry["status"] == "interrupted" and entry["attempts"] == 1, entry
    assert entry["errors"][0]["kind"] == "interrupted" and entry["errors"][0]["node_id"] == "2"
    assert list((root / "output").iterdir()) == []
