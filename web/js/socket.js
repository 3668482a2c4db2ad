// The engine's events over the WebSocket, shown on the canvas: node states, progress, live previews, results
// and errors. One method per event type.

import { setNodeImages } from "./nodes.js";
import { describeError } from "./errors.js";
import { toast } from "./panels.js";

const $ = (sel) => document.querySelector(sel);
const LOGGED = ["started", "cached", "executing", "progress", "executed", "error", "interrupted", "finished"];

export class RunEvents {
  constructor(app) {
    this.app = app;
  }

  bind(api) {
    api.on("open", () => this.app.refreshQueue());
    api.on("queue", (d) => this.app.sidebar.setQueue(d));
    for (const type of LOGGED) {
      api.on(type, (d) => {
        this.log(type, d);
        if (this.mine(d)) this[type](d);
      });
    }
    api.on("preview", (blob) => this.preview(blob));
    api.connect();
  }

  log(type, data) {
    const events = this.app.events;
    events.push({ type, ...data, t: Date.now() });
    if (events.length > 500) events.splice(0, 100);
  }

  mine(data) {
    // The server sends engine events only for this client's prompts. Some arrive before the HTTP reply that
    // names the prompt (a fast first node), so any prompt id counts.
    if (!data?.prompt_id) return false;
    const prompts = this.app.prompts;
    if (!prompts.has(data.prompt_id)) prompts.set(data.prompt_id, {});
    return true;
  }

  node(id) {
    return this.app.nodeFor(id);
  }

  redraw() {
    this.app.lgcanvas.setDirty(true, true);
  }

  started(d) {
    const app = this.app;
    app.clearRunState();
    app.running = { prompt_id: d.prompt_id };
    app.sidebar.setRunning({ title: "Starting…", note: `prompt #${app.prompts.get(d.prompt_id)?.number ?? ""}` });
    app.sidebar.setPreview(null);
    this.redraw();
  }

  cached(d) {
    for (const id of d.nodes || []) {
      const n = this.node(id);
      if (n?.chisel) n.chisel.status = "cached";
    }
    this.redraw();
  }

  executing(d) {
    const app = this.app;
    const prev = this.node(app.running?.node_id);
    if (prev?.chisel?.status === "running") prev.chisel.status = "done";
    const n = this.node(d.node_id);
    app.running = { prompt_id: d.prompt_id, node_id: d.node_id };
    if (n?.chisel) {
      n.chisel.status = "running";
      n.chisel.activity = null;
      n.progress = 0;
    }
    app.sidebar.setRunning({ title: n ? n.title : `node ${d.node_id}`, note: "running" });
    this.redraw();
  }

  progress(d) {
    // d.activity: what the node does when it is not plain running ("loading" a model, "saving"); d.stage: what now
    const n = this.node(d.node_id);
    if (n) n.progress = d.max ? Math.min(1, d.value / d.max) : 0;
    if (n?.chisel) n.chisel.activity = d.activity || null;
    this.app.sidebar.setRunning({ title: n ? n.title : `node ${d.node_id}`, value: d.value, max: d.max,
                                  activity: d.activity, stage: d.stage });
    this.redraw();
  }

  preview(blob) {
    const app = this.app;
    if (!app.running) return;
    const url = URL.createObjectURL(blob);
    app.sidebar.setPreview(url);
    const n = this.node(app.running.node_id);
    if (n?.chisel) {
      const old = n.chisel.previewUrl;
      n.chisel.previewUrl = url;
      setNodeImages(n, [url], "preview");
      if (old) setTimeout(() => URL.revokeObjectURL(old), 2000);
    }
    window.chisel.previews = (window.chisel.previews || 0) + 1;
  }

  executed(d) {
    const n = this.node(d.node_id);
    if (n?.chisel) {
      // an output node whose result came from the cache is reported again (to show its images): still "cached"
      n.chisel.status = d.cached ? "cached" : "done";
      n.progress = 0;
      if (!d.cached && typeof d.seconds === "number") n.chisel.seconds = d.seconds;
      const images = d.ui?.images || d.output?.images || [];
      if (images.length) {
        setNodeImages(n, images.map((im) => this.app.api.viewUrl(im)));
      } else if (n.chisel.previewUrl) {
        setNodeImages(n, []);
        n.chisel.previewUrl = null;
      }
    }
    const images = d.ui?.images || [];
    if (images.length) this.app.sidebar.addToGallery(images.map((image) => ({ image, prompt_id: d.prompt_id, node_id: d.node_id })));
    this.redraw();
  }

  error(d) {
    const err = { ...(d.error || {}), node_id: d.node_id ?? d.error?.node_id };
    const n = this.node(err.node_id);
    if (n?.chisel) n.chisel.status = "error";
    this.app.showServerErrors([err], { clear: false });
    toast(describeError(err, n), "error", 8000);
  }

  interrupted() {
    toast("Interrupted");
  }

  finished(d) {
    const app = this.app;
    for (const node of app.allNodes()) {
      if (node.chisel?.status === "running") node.chisel.status = d.status === "success" ? "done" : null;
      node.progress = 0;
      if (node.chisel?.previewUrl) {
        URL.revokeObjectURL(node.chisel.previewUrl);
        node.chisel.previewUrl = null;
        setNodeImages(node, []);
      }
    }
    app.running = null;
    app.sidebar.setRunning(null);
    app.sidebar.setPreview(null);
    $("#last-run").textContent = `Last run: ${d.status}`;
    $("#last-run").dataset.status = d.status;
    if (d.outputs || d.timings) app.results.apply(d.prompt_id, d);
    else app.results.afterRun(d.prompt_id);
    if (d.status === "error" && d.errors?.length) app.showServerErrors(d.errors);
    app.results.refreshHistory();
    this.redraw();
  }
}
