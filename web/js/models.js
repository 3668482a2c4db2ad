// File lists from the server (checkpoints, LoRAs, input images) in the combo widgets, and image upload into
// a Load Image node.

import { setNodeImages } from "./nodes.js";
import { toast, el } from "./panels.js";

export class Models {
  constructor(app) {
    this.app = app;
  }

  async refresh(announce = false) {
    const { api, schemas, graph } = this.app;
    const kinds = new Set();
    for (const s of Object.values(schemas)) for (const i of s.inputs) if (i.files) kinds.add(i.files);
    for (const kind of kinds) {
      let files;
      try {
        const r = await api.get(`v1/models/${encodeURIComponent(kind)}`);
        files = Array.isArray(r) ? r : r.files || r.items || r.models || [];
        files = files.map((f) => (typeof f === "string" ? f : f.name || f.filename)).filter(Boolean);
      } catch {
        continue;
      }
      for (const s of Object.values(schemas)) {
        for (const i of s.inputs) if (i.files === kind) i.choices = [...files];
      }
      for (const node of graph._nodes) {
        for (const w of node.widgets || []) {
          if (w.options?.chiselFiles === kind) {
            w.options.values = [...files];
            if (!w.value && files.length) w.value = files[0];
            if (kind === "input") this.showInputImage(node, w);
          }
        }
      }
    }
    this.app.lgcanvas.setDirty(true, false);
    if (announce) toast("Model lists refreshed");
  }

  /** Upload a picture into the input folder and pick it in the node's file list. */
  async uploadFor(node, widget, file = null, { overwrite = false, fields = {} } = {}) {
    if (!file) {
      file = await new Promise((resolve) => {
        const input = el("input", { type: "file", accept: "image/png,image/jpeg,image/webp,image/bmp,image/gif,image/tiff" });
        input.addEventListener("change", () => resolve(input.files?.[0] || null), { once: true });
        input.click();
      });
    }
    if (!file) return null;
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("type", "input");
    if (overwrite) form.append("overwrite", "true");
    for (const [k, v] of Object.entries(fields)) form.append(k, v);
    const r = await this.app.api.request("POST", "v1/upload", { body: form, allowError: true });
    if (!r.ok) {
      toast(`Upload failed: ${r.data?.error?.message || `HTTP ${r.status}`}`, "error", 6000);
      return null;
    }
    const name = r.data.subfolder ? `${r.data.subfolder}/${r.data.name}` : r.data.name;
    await this.refresh();
    const old = widget.value;
    widget.value = name;
    node.onWidgetChanged?.(widget.name, name, old, widget);
    this.app.history.check();
    toast(`Uploaded ${name}`);
    return name;
  }

  /** A Load Image node shows the picture it will load (when the server lists that file). */
  showInputImage(node, widget) {
    const v = widget.value;
    if (!v || !(widget.options.values || []).includes(v)) {
      if (node.chisel.images.length) setNodeImages(node, []);
      return;
    }
    const slash = v.lastIndexOf("/");
    const image = { filename: v.slice(slash + 1), subfolder: slash > 0 ? v.slice(0, slash) : "", type: "input" };
    setNodeImages(node, [this.app.api.viewUrl(image)]);
  }
}
