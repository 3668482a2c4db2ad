// Workflows in and out: open a file (native, ComfyUI API or UI format, a Chisel PNG), save, the bundled list,
// the workflow the page starts with (the browser's autosave, else the bundled txt2img).

import { graphToWorkflow, detectFormat } from "./format.js";
import { closeTextEditor } from "./widgets.js";
import { toast, el } from "./panels.js";
import { prepareComfyUi, restoreComfyUi, apiLosses } from "./comfyimport.js";
import { toComfyApi } from "./comfyexport.js";

export const AUTOSAVE_KEY = "chisel.workflow";
const EMPTY = { format: "chisel-workflow", version: 1, nodes: {} };
const $ = (sel) => document.querySelector(sel);

/** A bundled workflow as the server sends it: the workflow itself or wrapped in {workflow}. */
function unwrap(wf) {
  return wf.workflow && wf.workflow.nodes ? wf.workflow : wf;
}

export class Files {
  constructor(app) {
    this.app = app;
  }

  get api() { return this.app.api; }

  /** Any workflow JSON a user may bring: native, ComfyUI API format, or ComfyUI UI format (converted by the server). */
  async openJson(data, name) {
    const kind = detectFormat(data);
    let wf = data;
    let lost = [];
    if (kind === "comfy_ui") {
      // the server converts ComfyUI's formats exactly as it runs them (the same schemas, the same rules);
      // the canvas keeps what has no place in that (bypass, mute, notes, seed controls, colours)
      const { copy, kept, lost: notKept } = prepareComfyUi(data, this.app.schemas);
      wf = await this.convertOnServer(copy);
      if (!wf) return false;
      wf = restoreComfyUi(wf, kept);
      lost = notKept;
    } else if (kind === "comfy_api") {
      wf = await this.convertOnServer(data);
      if (!wf) return false;
      lost = apiLosses(wf);
    } else if (kind !== "native") {
      toast("That file is not a workflow (neither Chisel's format nor ComfyUI's).", "error", 6000);
      return false;
    }
    this.app.loadWorkflow(wf, { name });
    this.lastLosses = lost;
    if (lost.length) toast(`Opened ${name}, but not everything in it could be kept: ${lost.join("; ")}.`, "warn", 15000).classList.add("load-losses");
    else toast(`Opened ${name}`);
    return true;
  }

  async convertOnServer(data) {
    // ComfyUI's UI format needs the node schemas to map widget values to inputs: the server converts it.
    const r = await this.api.request("POST", "v1/workflow/convert", { json: { workflow: data }, allowError: true });
    if (r.ok && r.data?.workflow) return r.data.workflow;
    toast(`The server could not read that ComfyUI file: ${r.data?.error?.message || `HTTP ${r.status}`}`, "error", 8000);
    if (r.data?.errors?.length) this.app.showServerErrors(r.data.errors);
    return null;
  }

  async openFile(file) {
    const name = file.name.replace(/\.(json|png)$/i, "");
    if (file.type === "image/png" || /\.png$/i.test(file.name)) return this.openPng(file, name);
    let data;
    try {
      data = JSON.parse(await file.text());
    } catch (e) {
      toast(`${file.name} is not valid JSON: ${e.message}`, "error", 6000);
      return false;
    }
    return this.openJson(data, name);
  }

  async openPng(blob, name = "image") {
    const r = await this.api.request("POST", "v1/workflow/from-png", {
      body: blob, headers: { "Content-Type": "image/png" }, allowError: true,
    });
    if (!r.ok || !r.data?.workflow) {
      toast(r.data?.error?.message || "That picture carries no Chisel workflow.", "error", 6000);
      return false;
    }
    return this.openJson(r.data.workflow, name);
  }

  save() {
    closeTextEditor(true);
    this.download(graphToWorkflow(this.app.graph), `${this.app.name || "workflow"}.json`);
  }

  /** The workflow in ComfyUI's API format (what ComfyUI's "Export (API)" gives), as a file. */
  exportApi() {
    closeTextEditor(true);
    const api = toComfyApi(graphToWorkflow(this.app.graph), this.app.schemas);
    this.download(api, `${this.app.name || "workflow"}.api.json`);
    return api;
  }

  /** The workflow in ComfyUI's UI format (what ComfyUI's frontend saves and opens), as a file. The server writes
   *  it, exactly as `chisel export --comfy-ui` does; returns the exported workflow, or null when it could not. */
  async exportComfyUi() {
    closeTextEditor(true);
    let r;
    try {
      r = await this.api.request("POST", "v1/workflow/export", {
        json: { workflow: graphToWorkflow(this.app.graph), format: "comfy_ui" }, allowError: true,
      });
    } catch (e) {
      r = { ok: false, status: 0, data: { error: { kind: "network", message: `the server could not be reached (${e.message})` } } };
    }
    if (r.ok && r.data?.workflow) {
      this.download(r.data.workflow, `${this.app.name || "workflow"}.comfyui.json`);
      return r.data.workflow;
    }
    this.exportFailed(r);
    return null;
  }

  /** A refused export, said in a toast: what failed, the server's reason and kind, and each node's problem
   *  (those are also outlined on their nodes). */
  exportFailed(r) {
    const error = (r.data && typeof r.data === "object" ? r.data.error : null) || {};
    const errors = (r.data && Array.isArray(r.data.errors)) ? r.data.errors : [];
    const reason = error.message || (typeof r.data === "string" && r.data.trim()) || `HTTP ${r.status}`;
    const details = errors.map((e) => el("li", {}, [e.node_id && `node ${e.node_id}`, e.input, e.message]
      .filter(Boolean).join(": ")));
    const t = toast("", "error", 12000);
    t.classList.add("export-error");
    t.dataset.kind = error.kind || (r.status ? `http_${r.status}` : "network");
    t.append(el("strong", {}, "Export as a ComfyUI workflow failed"), el("div", {}, `${reason} (${t.dataset.kind})`));
    if (details.length) t.append(el("ul", {}, ...details));
    if (errors.length) this.app.showServerErrors(errors);
  }

  download(data, filename) {
    const blob = new Blob([JSON.stringify(data, null, 2) + "\n"], { type: "application/json" });
    const a = el("a", { href: URL.createObjectURL(blob), download: filename });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 5000);
  }

  async openBundled(name) {
    try {
      const wf = await this.api.get(`v1/workflows/${encodeURIComponent(name)}`);
      this.app.loadWorkflow(unwrap(wf), { name });
      return true;
    } catch (e) {
      toast(`Could not open ${name}: ${e.message}`, "error");
      return false;
    }
  }

  async loadBundledList() {
    const sel = $("#workflows-select");
    try {
      const list = await this.api.get("v1/workflows");
      const items = Array.isArray(list) ? list : list.items || list.workflows || [];
      for (const w of items) sel.append(el("option", { value: w.name }, w.title || w.name));
    } catch { /* no bundled workflows */ }
  }

  async openInitialWorkflow() {
    let saved = null;
    try {
      saved = JSON.parse(localStorage.getItem(AUTOSAVE_KEY) || "null");
    } catch { saved = null; }
    if (saved?.workflow?.nodes) {
      this.app.loadWorkflow(saved.workflow, { name: saved.name || "workflow", quiet: true });
      return;
    }
    try {
      const wf = (await this.app.startWorkflow) ?? await this.api.get("v1/workflows/txt2img"); // asked for at start
      this.app.loadWorkflow(unwrap(wf), { name: "txt2img" });
    } catch {
      this.app.loadWorkflow(EMPTY, { name: "workflow" });
    }
  }

  newWorkflow() {
    this.app.loadWorkflow(EMPTY, { name: "workflow", history: false });
    this.app.history.check();
  }

  /** Keep the workflow in the browser's storage (a convenience: a full or disabled storage is ignored). */
  autosave(workflowJson) {
    try {
      localStorage.setItem(AUTOSAVE_KEY, JSON.stringify({ name: this.app.name, workflow: JSON.parse(workflowJson) }));
    } catch { /* storage full or disabled */ }
  }
}
