// Pictures brought onto the canvas: pasted from the clipboard (onto the selected Load Image node, which takes it, or
// else as a new Load Image node under the pointer) or dropped as a file on empty canvas (a new Load Image node
// there; a PNG that carries a workflow still opens that workflow). The picture is uploaded into the input folder.

import { toast } from "./panels.js";
import { isEditable } from "./controls.js";
import { isTextEditorOpen } from "./widgets.js";

export const LOAD_IMAGE = "LoadImage";
const PASTE_WAIT_MS = 40; // how long LiteGraph's Ctrl+V node paste waits for the clipboard's own paste event
const WORKFLOW_KEYS = new Set(["workflow", "prompt"]);

/** The widget of a node that names a file in the input folder (Load Image's "image"), or null. */
export function imageWidget(node) {
  return node?.widgets?.find((w) => w.options?.chiselFiles === "input") || null;
}

/** Whether a PNG has a text chunk named "workflow" or "prompt" (what the server reads a workflow from). */
export async function pngCarriesWorkflow(file) {
  let bytes;
  try {
    bytes = new Uint8Array(await file.arrayBuffer());
  } catch { return false; }
  const sig = [137, 80, 78, 71, 13, 10, 26, 10];
  if (bytes.length < 8 || sig.some((b, i) => bytes[i] !== b)) return false;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 8;
  while (at + 8 <= bytes.length) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    const start = at + 8;
    if (start + length > bytes.length) return false;
    if (type === "tEXt" || type === "iTXt" || type === "zTXt") {
      const end = bytes.subarray(start, Math.min(start + length, start + 80)).indexOf(0);
      const key = String.fromCharCode(...bytes.subarray(start, start + (end < 0 ? 0 : end)));
      if (WORKFLOW_KEYS.has(key)) return true;
    }
    if (type === "IEND") return false;
    at = start + length + 4; // data, then the CRC
  }
  return false;
}

export class ImagesIn {
  constructor(app) {
    this.app = app;
    this.pendingNodePaste = null;
  }

  bind() {
    const lg = this.app.lgcanvas;
    // Ctrl+V: LiteGraph pastes its copied nodes on keydown, before the browser's paste event tells whether the
    // clipboard holds a picture; the node paste waits a moment, and a picture cancels it.
    const paste = lg.pasteFromClipboard.bind(lg);
    lg.pasteFromClipboard = (options) => {
      if (window.event?.type !== "keydown") return paste(options);
      clearTimeout(this.pendingNodePaste);
      this.pendingNodePaste = setTimeout(() => { this.pendingNodePaste = null; paste(options); }, PASTE_WAIT_MS);
      return undefined;
    };
    document.addEventListener("paste", (e) => this.onPaste(e));
  }

  onPaste(e) {
    if (isEditable(e.target) || isTextEditorOpen() || this.app.maskEditor?.isOpen || document.querySelector(".modal-back")) return;
    const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (!file) return; // text or nothing: LiteGraph's node paste goes ahead
    e.preventDefault();
    clearTimeout(this.pendingNodePaste);
    this.pendingNodePaste = null;
    this.pasteImage(file);
  }

  /** The selected Load Image node takes the picture; with none selected, a new node under the pointer does. */
  async pasteImage(file) {
    const app = this.app;
    const selected = app.selectedNodes();
    const target = selected.length === 1 && imageWidget(selected[0]) ? selected[0] : null;
    const named = file.name && file.name !== "image.png" ? file : new File([file], `pasted.${(file.type.split("/")[1] || "png").replace("jpeg", "jpg")}`, { type: file.type });
    if (target) return app.uploadFor(target, imageWidget(target), named);
    const [x, y] = app.lgcanvas.graph_mouse || [0, 0];
    return this.newLoadImage(named, [x, y]);
  }

  /** A file dropped on the canvas at graph position `pos`; true when it was taken as a picture. */
  async drop(file, pos) {
    if (!file.type.startsWith("image/")) return false;
    if (file.type === "image/png" && (await pngCarriesWorkflow(file))) return false; // opened as its workflow
    await this.newLoadImage(file, pos);
    return true;
  }

  async newLoadImage(file, pos) {
    const app = this.app;
    if (!app.schemas[LOAD_IMAGE]) {
      toast("This server has no Load Image node.", "error");
      return null;
    }
    const node = app.addNodeAt(LOAD_IMAGE, pos);
    const name = await app.uploadFor(node, imageWidget(node), file);
    if (name === null) { // the upload failed (said in a toast): no empty node left behind
      app.graph.remove(node);
      app.edited();
    }
    return name;
  }
}
