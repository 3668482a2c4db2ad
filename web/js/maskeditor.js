// The mask editor for Load Image: paint (or erase) over the picture; saving uploads the mask as a mask upload
// (the server writes the picture with the painted area transparent, its colours kept: ComfyUI's convention, Load
// Image's MASK is 1 where the alpha is 0) as a new input file, and the node loads it.

import { el, toast } from "./panels.js";

const MAX_UNDO = 30;

export class MaskEditor {
  constructor(app) {
    this.app = app;
    this.root = null;
  }

  get isOpen() { return !!this.root; }

  /** Open for a node's file widget (the picture it loads). */
  async open(node, widget) {
    const value = widget.value;
    if (!value) {
      toast("Pick or upload a picture first.", "warn");
      return;
    }
    const slash = value.lastIndexOf("/");
    const image = { filename: value.slice(slash + 1), subfolder: slash > 0 ? value.slice(0, slash) : "", type: "input" };
    const img = new Image();
    img.src = this.app.api.viewUrl(image);
    try {
      await img.decode();
    } catch {
      toast(`Could not load ${value}.`, "error");
      return;
    }
    this.build(node, widget, img, value);
  }

  build(node, widget, img, name) {
    this.close();
    const w = img.naturalWidth, h = img.naturalHeight;
    const picture = el("canvas", { class: "mask-picture", width: w, height: h });
    const mask = el("canvas", { class: "mask-layer", width: w, height: h, "aria-label": "Mask: paint the area to change" });
    const pctx = picture.getContext("2d");
    pctx.drawImage(img, 0, 0);
    const mctx = mask.getContext("2d", { willReadFrequently: true });
    // a mask already in the picture (transparent pixels) is shown and kept
    const px = pctx.getImageData(0, 0, w, h);
    const start = mctx.createImageData(w, h);
    for (let i = 0; i < w * h; i++) start.data[i * 4 + 3] = 255 - px.data[i * 4 + 3];
    for (let i = 0; i < w * h; i++) {
      start.data[i * 4] = 255;
      start.data[i * 4 + 1] = 255;
      start.data[i * 4 + 2] = 255;
      px.data[i * 4 + 3] = 255;
    }
    mctx.putImageData(start, 0, 0);
    pctx.putImageData(px, 0, 0);
    const scale = Math.min(1, (window.innerWidth * 0.85) / w, (window.innerHeight * 0.7) / h);
    const view = Math.max(scale, Math.min(8, (window.innerWidth * 0.85) / w, (window.innerHeight * 0.7) / h));
    const stage = el("div", { class: "mask-stage" }, picture, mask);
    stage.style.width = `${Math.round(w * view)}px`;
    stage.style.height = `${Math.round(h * view)}px`;
    const size = el("input", { type: "range", min: "1", max: String(Math.max(8, Math.round(Math.max(w, h) / 2))),
      value: String(Math.max(2, Math.round(Math.max(w, h) / 12))), id: "mask-brush-size", "aria-label": "Brush size" });
    const erase = el("input", { type: "checkbox", id: "mask-erase" });
    const undos = [];
    const snapshot = () => {
      undos.push(mctx.getImageData(0, 0, w, h));
      if (undos.length > MAX_UNDO) undos.shift();
    };
    const undo = () => { if (undos.length) mctx.putImageData(undos.pop(), 0, 0); };
    const toPixel = (e) => {
      const r = mask.getBoundingClientRect();
      return [((e.clientX - r.left) / r.width) * w, ((e.clientY - r.top) / r.height) * h];
    };
    let last = null;
    const paint = (e) => {
      const [x, y] = toPixel(e);
      mctx.save();
      mctx.globalCompositeOperation = erase.checked || e.buttons === 2 ? "destination-out" : "source-over";
      mctx.strokeStyle = mctx.fillStyle = "#fff";
      mctx.lineWidth = Number(size.value);
      mctx.lineCap = "round";
      mctx.beginPath();
      if (last) {
        mctx.moveTo(last[0], last[1]);
        mctx.lineTo(x, y);
        mctx.stroke();
      } else {
        mctx.arc(x, y, Number(size.value) / 2, 0, Math.PI * 2);
        mctx.fill();
      }
      mctx.restore();
      last = [x, y];
    };
    mask.addEventListener("contextmenu", (e) => e.preventDefault());
    mask.addEventListener("pointerdown", (e) => {
      mask.setPointerCapture(e.pointerId);
      snapshot();
      last = null;
      paint(e);
    });
    mask.addEventListener("pointermove", (e) => { if (e.buttons) paint(e); });
    mask.addEventListener("pointerup", () => { last = null; });
    const save = async () => {
      const out = el("canvas", { width: w, height: h });
      const octx = out.getContext("2d");
      const pic = pctx.getImageData(0, 0, w, h);
      const m = mctx.getImageData(0, 0, w, h);
      for (let i = 0; i < w * h; i++) pic.data[i * 4 + 3] = 255 - m.data[i * 4 + 3];
      octx.putImageData(pic, 0, 0);
      const blob = await new Promise((resolve) => out.toBlob(resolve, "image/png"));
      const base = name.slice(name.lastIndexOf("/") + 1).replace(/\.[^.]+$/, "").replace(/-mask$/, "");
      const file = new File([blob], `${base}-mask.png`, { type: "image/png" });
      this.close();
      // the server puts this alpha into the original picture (its colours kept where the mask is)
      const slash = name.lastIndexOf("/");
      const original = { filename: name.slice(slash + 1), subfolder: slash > 0 ? name.slice(0, slash) : "", type: "input" };
      await this.app.uploadFor(node, widget, file, { overwrite: true, fields: { kind: "mask", original_ref: JSON.stringify(original) } });
    };
    const bar = el("div", { class: "mask-bar" },
      el("label", {}, "Brush ", size),
      el("label", {}, erase, " Erase"),
      el("button", { type: "button", onclick: undo }, "Undo"),
      el("button", { type: "button", onclick: () => { snapshot(); mctx.clearRect(0, 0, w, h); } }, "Clear"),
      el("span", { class: "spacer" }),
      el("button", { type: "button", onclick: () => this.close() }, "Cancel"),
      el("button", { type: "button", class: "primary", id: "mask-save", onclick: save }, "Save mask"));
    this.root = el("div", { class: "modal-back mask-editor", role: "dialog", "aria-label": `Mask editor: ${name}` },
      el("div", { class: "mask-box" }, stage, bar));
    this.key = (e) => {
      if (e.key === "Escape") { e.stopPropagation(); this.close(); }
      else if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") { e.preventDefault(); e.stopPropagation(); undo(); }
    };
    document.addEventListener("keydown", this.key, true);
    document.body.append(this.root);
  }

  close() {
    if (!this.root) return;
    document.removeEventListener("keydown", this.key, true);
    this.root.remove();
    this.root = null;
  }
}
