// What runs leave behind: timings, cached marks and images on the nodes, the gallery, the lightbox with
// "Open its workflow".

import { setNodeImages } from "./nodes.js";
import { toast } from "./panels.js";

export class Results {
  constructor(app) {
    this.app = app;
  }

  get api() { return this.app.api; }

  /** Timings and outputs come with "finished" (or, from older servers, with the history entry). */
  async afterRun(promptId) {
    let h;
    try {
      h = await this.api.get(`v1/history/${encodeURIComponent(promptId)}`);
    } catch {
      return;
    }
    this.apply(promptId, h);
  }

  apply(promptId, h) {
    const app = this.app;
    for (const id of h.cached || []) {
      const n = app.nodeFor(id);
      if (n?.chisel && !n.chisel.status) n.chisel.status = "cached";
    }
    for (const [id, secs] of Object.entries(h.timings || {})) {
      const n = app.nodeFor(id);
      if (n?.chisel && n.chisel.status === "done" && typeof secs === "number") n.chisel.seconds = secs;
    }
    for (const [id, out] of Object.entries(h.outputs || {})) {
      const n = app.nodeFor(id);
      const images = out?.images || [];
      if (n?.chisel && images.length && !n.chisel.images.length) setNodeImages(n, images.map((im) => this.api.viewUrl(im)));
      if (images.length) app.sidebar.addToGallery(images.map((image) => ({ image, prompt_id: promptId, node_id: id })));
    }
    app.lgcanvas.setDirty(true, true);
  }

  /** The gallery and the history panel, from the server's history. */
  async loadGallery() {
    try {
      const h = await this.api.get("v1/history", { limit: 20 });
      this.app.sidebar.setHistory((h.items || []).filter((e) => ["success", "error", "interrupted"].includes(e.status)));
      const items = [];
      for (const entry of h.items || []) {
        for (const [id, out] of Object.entries(entry.outputs || {})) {
          // temp files (previews) do not outlive the server, so older ones are left out
          for (const image of out?.images || []) {
            if (image.type !== "temp") items.push({ image, prompt_id: entry.prompt_id, node_id: id });
          }
        }
      }
      this.app.sidebar.addToGallery(items, { append: true });
    } catch { /* an empty gallery */ }
  }

  async refreshHistory() {
    try {
      const h = await this.api.get("v1/history", { limit: 20 });
      this.app.sidebar.setHistory((h.items || []).filter((e) => ["success", "error", "interrupted"].includes(e.status)));
    } catch { /* kept as it was */ }
  }

  openGallery(key) {
    const app = this.app;
    const items = app.sidebar.galleryItems();
    const i = Math.max(0, items.findIndex((x) => x.key === key));
    app.lightbox.open(items.map((x) => x.full), i, [{
      label: "Open its workflow",
      run: async (url, idx) => {
        const it = items[idx];
        try {
          const h = await this.api.get(`v1/history/${encodeURIComponent(it.prompt_id)}`);
          if (h.workflow) {
            app.lightbox.close();
            app.tabs.openWorkflow(h.workflow, { name: `run ${it.prompt_id.slice(0, 6)}` });
          }
        } catch (e) {
          toast(`Could not open it: ${e.message}`, "error");
        }
      },
    }]);
  }
}
