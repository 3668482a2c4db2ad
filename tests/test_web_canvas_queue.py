"""The canvas's queue and history panels in a real browser against a real ``chisel serve``: pending prompts moved up
and down and removed (the server's order checked over HTTP), a past prompt run again with a new seed, and a past
prompt opened from the history: its images shown, its workflow loaded back.
Screenshots go to test-artifacts/web-canvas/.
"""
from __future__ import annotations

import pytest

from test_web_canvas_workflows import browser, page, root, saved_dir, server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")


def pending_ids(server) -> list[str]:
    return [p["prompt_id"] for p in server.get("v1/queue")["pending"]]


def test_rerun_with_a_new_seed_then_reorder_and_cancel_pending_prompts(page, server):
    ks = next(n for n in page.nodes() if n["type"] == "KSampler")
    page.set_number(ks["id"], "steps", 2)
    seed = page.node(ks["id"])["widgets"]["seed"]
    page.page.keyboard.press("Control+Enter")
    first = page.wait_finished(1)
    assert first["status"] == "success"
    rerun = page.page.locator("#history-list .history-rerun").first
    rerun.wait_for(timeout=10000)
    before = page.js("chisel.workflow()")

    # re-run from the history panel: queued again with a new seed; the canvas is left as it is
    rerun.click()
    second = page.wait_finished(2)
    assert second["status"] == "success" and second["prompt_id"] != first["prompt_id"]
    old = server.get(f"v1/history/{first['prompt_id']}")["workflow"]
    new = server.get(f"v1/history/{second['prompt_id']}")["workflow"]
    assert old["nodes"][ks["id"]]["inputs"]["seed"] == seed
    assert new["nodes"][ks["id"]]["inputs"]["seed"] != seed
    new["nodes"][ks["id"]]["inputs"]["seed"] = seed
    assert new["nodes"] == old["nodes"]  # nothing else changed
    assert page.js("chisel.workflow()") == before
    assert ks["id"] not in second.get("cached", []) and ks["id"] in second["executed"]  # a new seed: the sampler ran

    # four long runs (the longest the sampler takes: the first is still running when this test is done with the
    # queue, and is interrupted then): one runs, three wait. The first is queued alone and seen running before the
    # other three: prompts that differ only in their seed queued together may be sampled as one batch (the server's
    # batching across prompts), and this is about the pending ones
    page.set_number(ks["id"], "steps", 10000)
    page.page.click("#queue-btn")
    page.page.wait_for_function("document.querySelectorAll('#queue-list .queue-item.running').length === 1", timeout=60000)
    page.page.fill("#batch-count", "3")
    page.page.click("#queue-btn")
    page.page.wait_for_function("document.querySelectorAll('#queue-list .queue-item.pending').length === 3", timeout=60000)
    order = pending_ids(server)
    assert len(order) == 3
    numbers = page.js("[...document.querySelectorAll('#queue-list .queue-item.pending .queue-num')].map(e => e.textContent)")
    # the first can not go up, the last can not go down
    assert page.page.get_by_role("button", name=f"Move {numbers[0]} up").is_disabled()
    assert page.page.get_by_role("button", name=f"Move {numbers[2]} down").is_disabled()
    page.page.get_by_role("button", name=f"Move {numbers[2]} up").click()
    page.page.wait_for_function("n => document.querySelectorAll('#queue-list .queue-item.pending .queue-num')[1].textContent === n",
                                arg=numbers[2], timeout=10000)
    assert pending_ids(server) == [order[0], order[2], order[1]]
    page.page.get_by_role("button", name=f"Move {numbers[0]} down").click()
    page.page.wait_for_function("n => document.querySelectorAll('#queue-list .queue-item.pending .queue-num')[1].textContent === n",
                                arg=numbers[0], timeout=10000)
    assert pending_ids(server) == [order[2], order[0], order[1]]
    page.shot("55-queue-reordered.png")

    # cancel one: it leaves the queue (and the server's), the others keep their order
    page.page.get_by_role("button", name=f"Remove {numbers[0]} from the queue").click()
    page.page.wait_for_function("document.querySelectorAll('#queue-list .queue-item.pending').length === 2", timeout=10000)
    assert pending_ids(server) == [order[2], order[1]]
    assert server.get(f"v1/history/{order[0]}")["status"] == "cancelled"
    for n in (numbers[2], numbers[1]):
        page.page.get_by_role("button", name=f"Remove {n} from the queue").click()
    page.page.wait_for_function("document.querySelectorAll('#queue-list .queue-item.pending').length === 0", timeout=10000)
    page.page.click("#interrupt-btn")
    page.page.locator("#queue-list .queue-item").wait_for(state="detached", timeout=30000)
    assert server.get("v1/queue") == {"running": [], "pending": []}

    # a past run, clicked in the history: its images, loaded from the server
    entry = server.get(f"v1/history/{first['prompt_id']}")
    saved = [im["filename"] for out in entry["outputs"].values() for im in out["images"] if im["type"] == "output"]
    assert saved
    page.page.locator(f"#history-list .history-item[data-prompt='{first['prompt_id']}']").click()
    view = page.page.locator(f"#run-view[data-prompt='{first['prompt_id']}']")
    view.wait_for(state="visible", timeout=5000)
    page.page.wait_for_function("() => { const a = [...document.querySelectorAll('#run-view img')];"
                                " return a.length > 0 && a.every(i => i.complete); }", timeout=10000)
    shown = page.js("""async () => Promise.all([...document.querySelectorAll('#run-view img')].map(async i => ({
        src: i.src, w: i.naturalWidth, h: i.naturalHeight, status: (await fetch(i.src)).status})))""")
    assert all(s["status"] == 200 and s["w"] > 0 and s["h"] > 0 for s in shown), shown
    assert {f for f in saved if any(f"filename={f}" in s["src"] for s in shown)} == set(saved)
    assert page.js("chisel.workflow()")["nodes"][ks["id"]]["inputs"]["steps"] == 10000  # showing it changed nothing
    page.shot("56-history-run-images.png")

    # ... and its workflow loaded back, in a new tab since this one has edits; this tab kept as it is
    view.get_by_role("button", name="Load workflow").click()
    page.page.wait_for_function("document.querySelectorAll('#tabbar [role=tab]').length === 2")
    assert page.js("document.querySelector('#tabbar .tab.active').dataset.name").startswith("run ")
    assert page.node(ks["id"])["widgets"]["steps"] == 2 and page.node(ks["id"])["widgets"]["seed"] == seed
    loaded = page.js("chisel.workflow()")["nodes"]
    assert {i: n["inputs"] for i, n in loaded.items()} == {i: n["inputs"] for i, n in entry["workflow"]["nodes"].items()}
    page.page.get_by_role("tab", name="txt2img").click()
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).widgets.steps === 10000", arg=ks["id"])


def test_a_runs_events_mark_only_the_tab_it_was_queued_from(page, server):
    """Two tabs holding the same workflow have nodes with the same ids: the run queued from the first must not draw
    its progress, states or errors on the second's nodes while the second is on screen."""
    ks = next(n["id"] for n in page.nodes() if n["type"] == "KSampler")
    page.set_number(ks, "steps", 10000)  # long enough to switch tabs during it; interrupted below
    wf = page.js("chisel.workflow()")
    page.page.keyboard.press("Control+Enter")
    page.page.wait_for_function("i => chisel.nodes().find(n => n.id === i).status === 'running'", arg=ks, timeout=90000)

    page.js("wf => chisel.app.tabs.open(wf, { name: 'twin' })", wf)
    page.page.wait_for_function("document.querySelectorAll('#tabbar [role=tab]').length === 2")
    seen = page.js("chisel.events().filter(e => e.type === 'progress').length")
    page.page.wait_for_function("n => chisel.events().filter(e => e.type === 'progress').length >= n + 2", arg=seen,
                                timeout=60000)
    assert [n["status"] for n in page.nodes()] == [None] * len(page.nodes())
    assert page.js("i => chisel.app.nodeFor(i).progress || 0", ks) == 0
    page.page.click("#interrupt-btn")
    assert page.wait_finished(1)["status"] == "interrupted"
    assert all(n["status"] is None and not n["errors"] and not n["images"] for n in page.nodes())
    page.shot("72-run-stays-on-its-tab.png")
