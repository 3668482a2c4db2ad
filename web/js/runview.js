// One past run, opened from the history panel: its output images (click one for the lightbox) and "Load workflow",
// which opens the workflow that run had (in a new tab unless the current one holds nothing worth keeping).

import { el, toast } from "./panels.js";

const $ = (sel) => document.querySelector(sel);

/** The images a history entry lists, saved ones first (temp previews do not outlive the server). */
export function runImages(entry) {
  const all = Object.entries(entry.outputs || {}).flatMap(([node, o]) => (o?.images || []).map((image) => ({ node, image })));
  return [...all.filter((x) => x.image.type !== "temp"), ...all.filter((x) => x.image.type === "temp")];
}

export class RunView {
  constructor(app) {
    this.app = app;
    this.entry = null;
  }

  get api() { return this.app.api; }

  /** Show a history entry (GET /v1/history item); a second click on the same run closes it. */
  toggle(entry) {
    if (this.entry?.prompt_id === entry.prompt_id) this.close();
    else this.show(entry);
  }

  show(entry) {
    this.entry = entry;
    const box = $("#run-view");
    const label = `#${entry.number ?? "?"}`;
    $("#run-view-title").textContent = `Run ${label}, ${entry.status}`;
    const images = runImages(entry);
    const urls = images.map((x) => this.api.viewUrl(x.image));
    const grid = el("div", { class: "run-view-images" }, ...images.map((x, i) => {
      const img = el("img", { src: urls[i], alt: `${x.image.filename} (node ${x.node})`, title: x.image.filename });
      const gone = () => img.replaceWith(el("span", { class: "run-view-gone muted" }, `${x.image.filename}: no longer on the server`));
      img.addEventListener("error", gone, { once: true });
      return el("button", { type: "button", class: "run-view-image", "aria-label": `Open ${x.image.filename}`,
        onclick: () => this.app.openLightbox(urls, i) }, img);
    }));
    const why = entry.status === "success" ? "This run saved no images."
      : `This run ${entry.status === "error" ? "failed" : `was ${entry.status}`}: no images.`;
    const empty = images.length ? null : el("p", { class: "muted" }, why);
    const load = el("button", { type: "button", class: "primary", id: "run-view-load", disabled: !entry.workflow,
      title: "Open the workflow this run had", onclick: () => this.loadWorkflow() }, "Load workflow");
    const close = el("button", { type: "button", "aria-label": "Close the run", onclick: () => this.close() }, "Close");
    $("#run-view-body").replaceChildren(grid, ...(empty ? [empty] : []), el("div", { class: "run-view-bar" }, load, close));
    box.hidden = false;
    box.dataset.prompt = entry.prompt_id;
    this.markSelected();
    box.scrollIntoView({ block: "nearest" });
  }

  loadWorkflow() {
    const entry = this.entry;
    if (!entry?.workflow) {
      toast("This run has no workflow to load.", "warn");
      return;
    }
    this.app.tabs.openWorkflow(entry.workflow, { name: `run ${entry.number ?? entry.prompt_id.slice(0, 6)}` });
  }

  close() {
    this.entry = null;
    const box = $("#run-view");
    box.hidden = true;
    delete box.dataset.prompt;
    $("#run-view-body").replaceChildren();
    this.markSelected();
  }

  /** The history rows were drawn again: the open run keeps its mark. */
  markSelected() {
    for (const b of document.querySelectorAll("#history-list .history-item")) {
      b.setAttribute("aria-pressed", String(b.dataset.prompt === this.entry?.prompt_id));
    }
  }
}
