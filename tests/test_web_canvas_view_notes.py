"""Zoom to selection (F, listed under "?") and Markdown notes drawn rendered on the canvas, in a real browser against
a real ``chisel serve``. A note's markup is never handed to the page as HTML: <script> and <img onerror> in a note
are drawn as the characters they are, and its links and images are never fetched.
Screenshots go to test-artifacts/web-canvas/.
"""
from __future__ import annotations

import pytest

from test_web_canvas_workflows import browser, page, root, saved_dir, server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")


def on_screen(page, node_id: str) -> list[float]:
    """The node's box in the page's pixels: [left, top, right, bottom]."""
    return page.js("""i => { const n = chisel.app.nodeFor(i), ds = chisel.app.lgcanvas.ds;
        const b = chisel.app.lgcanvas.canvas.getBoundingClientRect();
        const a = ds.convertOffsetToCanvas(n.pos), z = ds.convertOffsetToCanvas([n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
        return [a[0] + b.left, a[1] + b.top, z[0] + b.left, z[1] + b.top]; }""", node_id)


def test_zoom_to_the_selected_nodes(page):
    nodes = {n["type"]: n["id"] for n in page.nodes()}
    page.page.keyboard.press(".")
    whole = page.js("chisel.app.lgcanvas.ds.scale")
    # select two nodes (click, shift+click on their titles), then F
    page.page.mouse.click(*page.js("i => chisel.titlePos(i)", nodes["KSampler"]))
    page.page.keyboard.down("Shift")
    page.page.mouse.click(*page.js("i => chisel.titlePos(i)", nodes["VAEDecode"]))
    page.page.keyboard.up("Shift")
    assert len(page.js("chisel.app.selectedNodes().map(n => n.id)")) == 2
    page.page.keyboard.press("f")
    zoomed = page.js("chisel.app.lgcanvas.ds.scale")
    assert zoomed > whole
    box = page.page.locator("#graph-canvas").bounding_box()
    a, b = on_screen(page, nodes["KSampler"]), on_screen(page, nodes["VAEDecode"])
    left, top, right, bottom = min(a[0], b[0]), min(a[1], b[1]) - 30, max(a[2], b[2]), max(a[3], b[3])
    # both inside the canvas, and the pair fills most of it one way or the other
    assert box["x"] <= left and right <= box["x"] + box["width"] and box["y"] <= top and bottom <= box["y"] + box["height"]
    assert (right - left) > 0.7 * box["width"] or (bottom - top) > 0.7 * box["height"]
    # centred
    assert abs((left + right) / 2 - (box["x"] + box["width"] / 2)) < 4
    page.shot("70-zoom-to-selection.png")
    # nothing selected: F says what it needs, the view stays
    page.page.mouse.click(box["x"] + 5, box["y"] + box["height"] - 5)
    page.page.keyboard.press("f")
    page.page.get_by_text("Select the nodes to zoom to first").wait_for(timeout=5000)
    assert page.js("chisel.app.lgcanvas.ds.scale") == zoomed
    # the shortcut is in the "?" list
    page.page.keyboard.press("?")
    dialog = page.page.get_by_role("dialog", name="Keyboard shortcuts")
    assert "Zoom to the selected nodes" in dialog.inner_text()
    page.page.keyboard.press("Escape")


NOTE = """# Read me
Some **bold** and *italic* text with `code` and a [link](https://example.invalid/track.png).

- first point
- second <b>point</b>
1. numbered

<script>window.injected = 1</script><img src="https://example.invalid/x.png" onerror="window.injected = 2">
![picture](https://example.invalid/pic.png)
"""


def test_markdown_notes_are_drawn_rendered_and_never_as_html(page, root):
    requests = []
    page.page.on("request", lambda r: requests.append(r.url))
    page.page.click("#new-btn")
    page.page.wait_for_function("chisel.nodes().length === 0")
    note = page.add_node(500, 300, "Markdown Note")
    assert page.node(note)["type"] == "MarkdownNote"
    page.js("i => { const n = chisel.app.nodeFor(i); n.size = [460, 320]; chisel.app.lgcanvas.setDirty(true, true); }", note)
    page.type_text(note, "text", NOTE)
    page.page.wait_for_function("i => chisel.app.nodeFor(i).textWidget.rendered?.length > 0", arg=note, timeout=5000)
    lines = page.js("""i => chisel.app.nodeFor(i).textWidget.rendered.map(l => ({kind: l.kind, bullet: l.bullet || null,
        items: l.items.map(t => ({text: t.text, font: t.font, link: t.run.link}))}))""", note)
    text = lambda line: "".join(t["text"] for t in line["items"])  # noqa: E731
    assert lines[0]["kind"] == "h1" and text(lines[0]) == "Read me" and "bold 20px" in lines[0]["items"][0]["font"]
    items = {t["text"]: t for line in lines for t in line["items"]}
    assert "bold" in items["bold"]["font"] and "italic" in items["italic"]["font"]
    assert "monospace" in items["code"]["font"]
    assert items["link"]["link"] == "https://example.invalid/track.png"
    assert [(line["kind"], line["bullet"]) for line in lines if line["kind"] == "li"] == [("li", "•"), ("li", "•"), ("li", "1.")]
    shown = " ".join(text(line) for line in lines)
    assert "<b>point</b>" in shown  # markup shown as the characters it is
    assert "<script>window.injected = 1</script>" in shown.replace("  ", " ")
    assert "onerror=" in shown and "[image: picture]" in shown
    # nothing of it ran or was fetched, no element made from it
    assert page.js("window.injected === undefined")
    assert page.js("document.querySelectorAll('script:not([type=module]), img[src*=example]').length") == 0
    assert not [u for u in requests if "example.invalid" in u]
    page.shot("71-markdown-note.png")
    # saved as a Markdown note in the layout, and it comes back rendered after a reload
    layout = page.js("chisel.workflow()")["layout"]["notes"]
    assert [n["markdown"] for n in layout] == [True] and layout[0]["text"] == NOTE
    page.page.reload()
    page.ready()
    page.page.wait_for_function("chisel.nodes().some(n => n.type === 'MarkdownNote')")
    again = next(n["id"] for n in page.nodes() if n["type"] == "MarkdownNote")
    page.page.wait_for_function("i => chisel.app.nodeFor(i).textWidget.rendered?.[0]?.kind === 'h1'", arg=again, timeout=5000)
    assert not [u for u in requests if "example.invalid" in u]
