"""Pictures into the canvas in a real browser against a real ``chisel serve``: an image pasted from the clipboard
(the browser's real clipboard, Ctrl+V) becomes a Load Image node with the uploaded picture, or replaces the picture of
the selected Load Image node; an image file dropped on empty canvas becomes a Load Image node; nodes copied with
Ctrl+C still paste with Ctrl+V. Screenshots go to test-artifacts/web-canvas/.
"""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from test_web_canvas_workflows import browser, page, root, saved_dir, server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")


def picture(colour, size=(40, 30), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


def put_on_clipboard(page, data: bytes) -> None:
    """The system clipboard (the browser's own) holds a PNG, as after "Copy image" in another application."""
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=page.page.url.rstrip("/"))
    page.js("""async b64 => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        await navigator.clipboard.write([new ClipboardItem({'image/png': new Blob([bytes], {type: 'image/png'})})]);
    }""", base64.b64encode(data).decode())


def load_images(page) -> list[dict]:
    return [n for n in page.nodes() if n["type"] == "LoadImage"]


def input_pixel(root, name: str):
    with Image.open(root / "input" / name) as im:
        return im.convert("RGB").getpixel((1, 1))


def test_paste_a_picture_creates_or_fills_a_load_image_node(page, root):
    page.page.click("#new-btn")
    page.page.wait_for_function("chisel.nodes().length === 0")
    put_on_clipboard(page, picture((200, 30, 30)))
    page.page.mouse.click(600, 400)  # the canvas has the focus, the pointer is where the node goes
    page.page.keyboard.press("Control+v")
    page.page.wait_for_function("chisel.nodes().some(n => n.type === 'LoadImage' && n.widgets.image.startsWith('pasted')"
                                " && n.images.length === 1)", timeout=15000)
    [node] = load_images(page)
    name = node["widgets"]["image"]
    assert name.startswith("pasted") and input_pixel(root, name) == (200, 30, 30)
    assert page.js("chisel.workflow()")["nodes"][node["id"]]["inputs"] == {"image": name}
    page.shot("60-pasted-image.png")

    # the node selected, another picture pasted: that node takes it (no new node)
    page.page.mouse.click(*page.js("i => chisel.titlePos(i)", node["id"]))
    put_on_clipboard(page, picture((20, 200, 40)))
    page.page.keyboard.press("Control+v")
    page.page.wait_for_function("([i, old]) => chisel.nodes().find(n => n.id === i).widgets.image !== old",
                                arg=[node["id"], name], timeout=15000)
    [again] = load_images(page)
    assert len(page.nodes()) == 1 and input_pixel(root, again["widgets"]["image"]) == (20, 200, 40)

    # copied nodes still paste: Ctrl+C, then a text clipboard, Ctrl+V gives a second Load Image node
    page.page.keyboard.press("Control+c")
    page.js("() => navigator.clipboard.writeText('just text')")
    page.page.mouse.move(900, 600)
    page.page.keyboard.press("Control+v")
    page.page.wait_for_function("chisel.nodes().length === 2", timeout=5000)
    assert [n["widgets"]["image"] for n in load_images(page)] == [again["widgets"]["image"]] * 2


def drop(page, data: bytes, name: str, mime: str, at=(700, 450)) -> None:
    transfer = page.page.evaluate_handle("""async ([b64, name, mime]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: mime}));
        return dt; }""", [base64.b64encode(data).decode(), name, mime])
    init = {"dataTransfer": transfer, "clientX": at[0], "clientY": at[1]}
    page.page.dispatch_event("#graph-canvas", "dragover", init)
    page.page.dispatch_event("#graph-canvas", "drop", init)


def test_dropping_a_picture_on_empty_canvas_creates_a_load_image_node(page, root):
    page.page.click("#new-btn")
    page.page.wait_for_function("chisel.nodes().length === 0")
    drop(page, picture((10, 20, 230), fmt="JPEG"), "holiday photo.jpg", "image/jpeg")
    page.page.wait_for_function("chisel.nodes().some(n => n.type === 'LoadImage' && n.widgets.image === 'holiday photo.jpg'"
                                " && n.images.length === 1)", timeout=15000)
    [node] = load_images(page)
    assert node["widgets"]["image"] == "holiday photo.jpg" and (root / "input" / "holiday photo.jpg").is_file()
    # where it was dropped: the node's corner is under the pointer
    corner = page.js("i => { const n = chisel.app.nodeFor(i); const r = chisel.app.lgcanvas.ds.convertOffsetToCanvas(n.pos);"
                     " const b = chisel.app.lgcanvas.canvas.getBoundingClientRect(); return [r[0] + b.left, r[1] + b.top]; }",
                     node["id"])
    assert abs(corner[0] - 700) < 2 and abs(corner[1] - 450) < 2
    # a PNG without a workflow is a picture too (no request that fails, no error)
    drop(page, picture((1, 2, 3)), "plain.png", "image/png", at=(300, 300))
    page.page.wait_for_function("chisel.nodes().some(n => n.type === 'LoadImage' && n.widgets.image === 'plain.png')",
                                timeout=15000)
    page.shot("61-dropped-images.png")
