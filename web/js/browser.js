// The workflow browser: the workflows bundled with Chisel and the user's saved workflows (kept by the server in the
// Chisel root, /v1/user/workflows), with open, save, save as, rename and delete. Opening puts the workflow in a new
// tab unless the current tab holds nothing worth keeping.

import { el, toast } from "./panels.js";
import { closeTextEditor } from "./widgets.js";
import { graphToWorkflow, detectFormat } from "./format.js";
import { confirmDialog, promptDialog } from "./dialogs.js";

const ROUTE = "v1/user/workflows";
const EMPTY = { format: "chisel-workflow", version: 1, nodes: {} };

const MAX_NAME = 100;
const MAX_NAME_BYTES = 200;
const BAD_CHAR = /[/\\:*?"<>|\x00-\x1f\x7f]/;

/** What is wrong with a name to save a workflow under (the server's rules, said before asking it), or null. */
export function nameProblem(name) {
  if (!name.trim()) return "Type a name to save the workflow under.";
  if (name.length > MAX_NAME) return `A workflow name is at most ${MAX_NAME} characters (this one has ${name.length}).`;
  const bytes = new TextEncoder().encode(name).length;
  if (bytes > MAX_NAME_BYTES) return `A workflow name is at most ${MAX_NAME_BYTES} bytes as UTF-8 (this one has ${bytes}).`;
  const bad = name.match(BAD_CHAR);
  if (bad) {
    const shown = bad[0] < " " || bad[0] === "\x7f" ? "control characters" : `'${bad[0]}'`;
    return `A workflow name cannot contain ${shown}; not allowed: / \\ : * ? " < > | and control characters.`;
  }
  if (name.startsWith(".") || name.endsWith(".") || name !== name.trim()) {
    return "A workflow name cannot start with a dot, end with a dot, or start or end with a space.";
  }
  return null;
}

/** A bundled workflow as the server sends it: the workflow itself or wrapped in {workflow}. */
function unwrap(wf) {
  return wf && wf.workflow && wf.workflow.nodes ? wf.workflow : wf;
}

function messageOf(r) {
  return r.data?.error?.message || (typeof r.data === "string" && r.data.trim()) || `HTTP ${r.status}`;
}

export class WorkflowBrowser {
  constructor(app) {
    this.app = app;
    this.root = null;
    this.saved = [];
    this.bundled = [];
  }

  get api() { return this.app.api; }
  get isOpen() { return !!this.root; }

  toggle() {
    if (this.root) this.close();
    else this.open();
  }

  // -- the panel -----------------------------------------------------------------------------------
  open() {
    if (this.root) return;
    const name = el("input", { id: "browser-name", type: "text", autocomplete: "off", "aria-label": "Name to save as",
      placeholder: "Name", value: this.app.tabs.current?.saved || this.app.name || "" });
    const saveAs = el("button", { type: "submit", class: "primary" }, "Save as");
    const form = el("form", { class: "browser-save", "aria-label": "Save the current tab on the server" }, name, saveAs);
    form.addEventListener("submit", (e) => { e.preventDefault(); this.saveAs(name.value); });
    this.saveBtn = el("button", { type: "button", id: "browser-save-btn", onclick: () => this.save() }, "Save");
    this.errorEl = el("p", { class: "browser-error", role: "alert", hidden: true });
    this.savedList = el("ul", { class: "browser-list", id: "saved-workflows", "aria-labelledby": "saved-title" });
    this.bundledList = el("ul", { class: "browser-list", id: "bundled-workflows", "aria-labelledby": "bundled-title" });
    const close = el("button", { type: "button", class: "small", "aria-label": "Close the workflow browser", onclick: () => this.close() }, "×");
    this.root = el("section", { id: "workflow-browser", class: "browser-panel", role: "dialog", "aria-labelledby": "browser-title" },
      el("div", { class: "browser-head" }, el("h2", { id: "browser-title" }, "Workflows"), close),
      el("div", { class: "browser-actions" }, this.saveBtn, el("span", { class: "muted small" }, "saves this tab on the server")),
      form, this.errorEl,
      el("h3", { id: "saved-title" }, "Saved"), this.savedList,
      el("h3", { id: "bundled-title" }, "Bundled with Chisel"), this.bundledList);
    this.onKey = (e) => {
      if (e.key !== "Escape" || document.querySelector(".modal-back") || this.app.palette.isOpen) return;
      if (e.target?.closest?.(".browser-rename")) return; // Escape there cancels the rename only
      e.preventDefault();
      e.stopPropagation();
      this.close();
    };
    document.addEventListener("keydown", this.onKey, true);
    document.body.append(this.root);
    this.placePanel ||= () => { // under the toolbar and the tabs, however many rows the toolbar wraps to
      if (this.root) this.root.style.top = `${Math.round(document.querySelector("main").getBoundingClientRect().top + 6)}px`;
    };
    this.placePanel();
    window.addEventListener("resize", this.placePanel);
    document.querySelector("#workflows-btn")?.setAttribute("aria-expanded", "true");
    this.updateSaveButton();
    name.focus();
    name.select();
    return this.refresh();
  }

  close() {
    if (!this.root) return;
    this.root.remove();
    this.root = null;
    document.removeEventListener("keydown", this.onKey, true);
    window.removeEventListener("resize", this.placePanel);
    const btn = document.querySelector("#workflows-btn");
    btn?.setAttribute("aria-expanded", "false");
    btn?.focus();
  }

  showError(text) {
    if (this.errorEl) {
      this.errorEl.textContent = text || "";
      this.errorEl.hidden = !text;
    }
    if (text) toast(text, "error", 8000);
  }

  updateSaveButton() {
    if (!this.saveBtn) return;
    const saved = this.app.tabs.current?.saved;
    this.saveBtn.disabled = !saved;
    this.saveBtn.title = saved ? `Save this tab as “${saved}” on the server` : "This tab is not saved on the server yet: use Save as";
  }

  async refresh() {
    const [saved, bundled] = await Promise.all([
      this.api.request("GET", ROUTE, { allowError: true }).catch((e) => ({ ok: false, status: 0, data: { error: { message: e.message } } })),
      this.api.request("GET", "v1/workflows", { allowError: true }).catch(() => ({ ok: false, data: [] })),
    ]);
    if (!this.root) return;
    if (!saved.ok) this.showError(`Could not list the saved workflows: ${messageOf(saved)}`);
    this.saved = saved.ok && Array.isArray(saved.data) ? saved.data : [];
    this.bundled = bundled.ok && Array.isArray(bundled.data) ? bundled.data : [];
    this.renderSaved();
    this.renderBundled();
  }

  renderSaved() {
    const items = this.saved.map((w) => {
      const when = new Date(w.modified * 1000).toLocaleString();
      const open = el("button", { type: "button", class: "browser-open", title: `Open “${w.name}” (saved ${when})`,
        "aria-label": `Open ${w.name}`, onclick: () => this.openSaved(w.name) }, w.name);
      const rename = el("button", { type: "button", class: "small", "aria-label": `Rename ${w.name}`, onclick: () => this.startRename(li, w.name) }, "Rename");
      const del = el("button", { type: "button", class: "small danger", "aria-label": `Delete ${w.name}`, onclick: () => this.remove(w.name) }, "Delete");
      const li = el("li", { class: "browser-item", dataset: { name: w.name } }, open, rename, del);
      return li;
    });
    if (!items.length) items.push(el("li", { class: "muted" }, "Nothing saved yet: name this tab above and press Save as."));
    this.savedList.replaceChildren(...items);
  }

  renderBundled() {
    const items = this.bundled.map((w) => el("li", { class: "browser-item", dataset: { name: w.name } },
      el("button", { type: "button", class: "browser-open", "aria-label": `Open bundled ${w.title || w.name}`, title: w.name,
        onclick: () => this.openBundled(w.name) }, w.title || w.name)));
    if (!items.length) items.push(el("li", { class: "muted" }, "No bundled workflows."));
    this.bundledList.replaceChildren(...items);
  }

  // -- opening -------------------------------------------------------------------------------------
  /** Put a workflow (any format the canvas opens) in a tab: a new one unless the current one may be reused. */
  async place(data, name, saved) {
    const tabs = this.app.tabs;
    const tab = tabs.current;
    const reuse = tab && !tab.saved && !tab.edited;
    if (!reuse) tabs.open(EMPTY, { name });
    const ok = await this.app.files.openJson(data, name);
    // a saved ComfyUI file stays ComfyUI's: saving this tab asks for a name rather than write over it
    if (ok) tabs.opened(name, { saved: detectFormat(data) === "native" ? saved : null });
    this.updateSaveButton();
    return ok;
  }

  async openSaved(name) {
    const open = this.app.tabs.list.find((t) => t.saved === name);
    if (open) { // already open in a tab: that tab, as it is
      this.app.tabs.activate(open);
      this.updateSaveButton();
      return true;
    }
    const r = await this.api.request("GET", `${ROUTE}/${encodeURIComponent(name)}`, { allowError: true });
    if (!r.ok) {
      this.showError(`Could not open “${name}”: ${messageOf(r)}`);
      return false;
    }
    return this.place(r.data, name, name);
  }

  async openBundled(name) {
    const r = await this.api.request("GET", `v1/workflows/${encodeURIComponent(name)}`, { allowError: true });
    if (!r.ok) {
      this.showError(`Could not open the bundled “${name}”: ${messageOf(r)}`);
      return false;
    }
    return this.place(unwrap(r.data), name, null);
  }

  // -- saving --------------------------------------------------------------------------------------
  async save() {
    const saved = this.app.tabs.current?.saved;
    if (!saved) return false;
    return this.write(saved, { overwrite: true });
  }

  /** Ctrl+S: the tab saved on the server under its saved name; the first time, under a name asked for (the tab's
   *  name offered). A name already taken asks before replacing it. */
  async quickSave() {
    const tab = this.app.tabs.current;
    if (tab?.saved) return this.write(tab.saved, { overwrite: true });
    const offered = String(tab?.name || this.app.name || "workflow").replace(/\.json$/i, "");
    const name = await promptDialog("Save this workflow on the server as", {
      value: offered, ok: "Save", title: "Save workflow", label: "Workflow name", check: nameProblem,
    });
    if (name == null) return false;
    const list = await this.api.request("GET", ROUTE, { allowError: true }).catch(() => ({ ok: false }));
    const taken = list.ok && Array.isArray(list.data) && list.data.some((w) => w.name === name);
    if (taken && !(await this.askReplace(name))) return false;
    return this.write(name, { overwrite: false, asked: taken }); // (not asked: a file saved meanwhile still asks)
  }

  async saveAs(raw) {
    const name = String(raw ?? "").trim().replace(/\.json$/i, "");
    const problem = nameProblem(name);
    if (problem) {
      this.showError(problem);
      return false;
    }
    if (this.saved.some((w) => w.name === name) && !(await this.askReplace(name))) return false;
    return this.write(name, { overwrite: false, asked: true });
  }

  askReplace(name, by = null) {
    return confirmDialog(by ? `A saved workflow is already called “${name}”. Replace it with “${by}”?`
      : `A saved workflow is already called “${name}”. Replace it?`, { ok: "Replace", title: "Replace it?" });
  }

  async write(name, { overwrite, asked = false }) {
    closeTextEditor(true);
    this.app.history.check({ force: true });
    const workflow = graphToWorkflow(this.app.graph);
    const url = `${ROUTE}/${encodeURIComponent(name)}`;
    // (asked already: the name is in the list; a 409 still guards a file saved meanwhile by another window)
    const keep = !overwrite && !asked;
    let r = await this.api.request("PUT", url, { json: { workflow }, params: { overwrite: keep ? "false" : undefined }, allowError: true });
    if (r.status === 409 && r.data?.error?.kind === "exists") {
      if (!(await this.askReplace(name))) return false;
      r = await this.api.request("PUT", url, { json: { workflow }, allowError: true });
    }
    if (!r.ok) {
      this.showError(`Not saved: ${messageOf(r)}`);
      return false;
    }
    this.showError("");
    this.app.tabs.savedAs(r.data.name);
    toast(`Saved “${r.data.name}” on the server.`);
    this.updateSaveButton();
    if (this.root) await this.refresh();
    return true;
  }

  // -- rename and delete ---------------------------------------------------------------------------
  startRename(li, name) {
    const input = el("input", { type: "text", value: name, "aria-label": `New name for ${name}` });
    const form = el("form", { class: "browser-rename" }, input,
      el("button", { type: "submit", class: "small primary" }, "Rename"),
      el("button", { type: "button", class: "small", onclick: () => this.renderSaved() }, "Cancel"));
    form.addEventListener("submit", (e) => { e.preventDefault(); this.rename(name, input.value); });
    input.addEventListener("keydown", (e) => {
      if (e.key !== "Escape") return;
      e.preventDefault();
      this.renderSaved();
    });
    li.replaceChildren(form);
    input.focus();
    input.select();
  }

  async rename(from, raw) {
    const to = String(raw ?? "").trim().replace(/\.json$/i, "");
    if (to === from) {
      this.renderSaved();
      return true;
    }
    const problem = nameProblem(to);
    if (problem) {
      this.showError(problem);
      return false;
    }
    const url = `${ROUTE}/${encodeURIComponent(from)}/rename`;
    const taken = this.saved.some((w) => w.name === to);
    if (taken && !(await this.askReplace(to, from))) return false;
    let r = await this.api.request("POST", url, { json: { to, overwrite: taken }, allowError: true });
    if (r.status === 409 && r.data?.error?.kind === "exists") {
      if (!(await this.askReplace(to, from))) return false;
      r = await this.api.request("POST", url, { json: { to, overwrite: true }, allowError: true });
    }
    if (!r.ok) {
      this.showError(`Not renamed: ${messageOf(r)}`);
      return false;
    }
    this.showError("");
    this.app.tabs.renamedOnServer(from, r.data.name);
    toast(`Renamed “${from}” to “${r.data.name}”.`);
    await this.refresh();
    return true;
  }

  async remove(name) {
    const ok = await confirmDialog(`Delete the saved workflow “${name}”? This cannot be undone.`, { ok: "Delete", title: "Delete it?" });
    if (!ok) return false;
    const r = await this.api.request("DELETE", `${ROUTE}/${encodeURIComponent(name)}`, { allowError: true });
    if (!r.ok) {
      this.showError(`Not deleted: ${messageOf(r)}`);
      return false;
    }
    this.showError("");
    this.app.tabs.renamedOnServer(name, null);
    toast(`Deleted “${name}”.`);
    this.updateSaveButton();
    await this.refresh();
    return true;
  }
}
