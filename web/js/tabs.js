// Several workflows open at once, one per tab. The canvas holds one graph: switching tabs puts the current tab's
// workflow, undo history and view aside and brings the other's back. Each tab knows its name, the saved workflow it
// came from (if any) and whether it has edits not yet saved. All open tabs are kept in the browser's storage, so a
// reload brings every one of them back.

import { el } from "./panels.js";
import { closeTextEditor } from "./widgets.js";
import { confirmDialog } from "./dialogs.js";

export const TABS_KEY = "chisel.tabs";
const LEGACY_KEY = "chisel.workflow"; // a single autosaved workflow (before tabs)
const EMPTY = { format: "chisel-workflow", version: 1, nodes: {} };

let seq = 0;

function newTab(name, fields = {}) {
  return { id: `t${++seq}`, name, saved: null, clean: null, edited: false, stacks: null, view: null, ...fields };
}

export class Tabs {
  constructor(app) {
    this.app = app;
    this.list = [];
    this.active = null;
  }

  get current() { return this.active; }

  /** The first tabs: those kept in the browser's storage, else one with the start workflow. */
  async start() {
    this.bar = this.buildBar();
    const stored = this.readStored();
    if (stored) {
      for (const t of stored.tabs) {
        const tab = newTab(t.name || "workflow", { saved: t.saved || null, edited: !!t.modified });
        const json = JSON.stringify(t.workflow);
        tab.stacks = { undo: [], redo: [], current: json };
        tab.clean = t.modified ? (t.clean ? JSON.stringify(t.clean) : null) : json;
        this.list.push(tab);
      }
      const index = Math.min(Math.max(0, stored.active | 0), this.list.length - 1);
      this.activate(this.list[index], { stash: false, fit: true });
      return;
    }
    this.active = newTab("workflow");
    this.list.push(this.active);
    await this.app.files.openInitialWorkflow();
    this.opened(this.app.name);
    this.render();
  }

  readStored() {
    let data = null;
    try {
      data = JSON.parse(localStorage.getItem(TABS_KEY) || "null");
    } catch { data = null; }
    if (data && Array.isArray(data.tabs)) {
      const tabs = data.tabs.filter((t) => t && t.workflow && typeof t.workflow === "object" && t.workflow.nodes);
      if (tabs.length) return { active: data.active, tabs };
    }
    return null;
  }

  // -- what the app tells the tabs -----------------------------------------------------------------
  /** A workflow was put on the canvas as a new start (a file opened, a bundled one, New): the tab takes its name. */
  opened(name, { saved = null } = {}) {
    const tab = this.active;
    if (!tab) return;
    tab.name = name || tab.name;
    tab.saved = saved;
    tab.edited = false;
    tab.clean = this.app.history?.current ?? null;
    this.render();
  }

  /** The history changed (a step, an undo, a run's change kept): keep every tab, redraw the marks. */
  changed(history, { step = false } = {}) {
    const tab = this.active;
    if (!tab) return;
    if (step) tab.edited = true;
    if (tab.clean === null && !tab.edited) tab.clean = history.current;
    this.persist();
    this.render();
  }

  /** The tab's workflow was saved on the server under `name`. */
  savedAs(name, tab = this.active) {
    tab.name = name;
    tab.saved = name;
    tab.edited = false;
    tab.clean = tab === this.active ? this.app.history.current : tab.stacks?.current ?? null;
    if (tab === this.active) this.app.setTitle(name);
    this.persist();
    this.render();
  }

  /** A saved workflow was renamed or deleted on the server: the tabs that show it follow. */
  renamedOnServer(from, to) {
    for (const t of this.list) {
      if (t.saved !== from) continue;
      t.saved = to;
      if (to) t.name = to;
      else t.edited = true; // its file is gone: what the tab holds is not saved anywhere now
    }
    if (this.active && to && this.active.saved === to) this.app.setTitle(to);
    this.persist();
    this.render();
  }

  isModified(tab) {
    const current = tab === this.active ? this.app.history?.current : tab.stacks?.current;
    return tab.edited && current !== tab.clean;
  }

  // -- switching, opening, closing -----------------------------------------------------------------
  stash() {
    const app = this.app;
    const tab = this.active;
    if (!tab) return;
    closeTextEditor(true);
    app.history.check({ force: true });
    tab.stacks = { undo: app.history.undoStack, redo: app.history.redoStack, current: app.history.current };
    tab.view = { offset: [...app.lgcanvas.ds.offset], scale: app.lgcanvas.ds.scale };
    tab.name = app.name;
  }

  activate(tab, { stash = true, fit = false } = {}) {
    if (!tab || (tab === this.active && stash)) return;
    if (stash) this.stash();
    const app = this.app;
    const h = app.history;
    this.active = tab;
    h.paused++;
    try {
      app.loadWorkflow(JSON.parse(tab.stacks.current), { history: false, keepView: !fit || !!tab.view, quiet: true, name: tab.name });
    } finally {
      h.paused--;
    }
    h.undoStack = tab.stacks.undo;
    h.redoStack = tab.stacks.redo;
    h.current = h.capture();
    if (tab.clean === tab.stacks.current) tab.clean = h.current; // the same workflow, as this page writes it
    if (tab.view) {
      app.lgcanvas.ds.offset[0] = tab.view.offset[0];
      app.lgcanvas.ds.offset[1] = tab.view.offset[1];
      app.lgcanvas.ds.scale = tab.view.scale;
      app.lgcanvas.setDirty(true, true);
    }
    h.onChange(h);
    this.render();
  }

  /** A new tab with this workflow (an empty one when none is given). */
  open(workflow = EMPTY, { name = null, saved = null } = {}) {
    this.stash();
    const tab = newTab(name || this.freshName(), { saved });
    tab.stacks = { undo: [], redo: [], current: JSON.stringify(workflow) };
    tab.clean = tab.stacks.current;
    this.list.splice(this.list.indexOf(this.active) + 1, 0, tab);
    this.activate(tab, { stash: false, fit: true });
    if (workflow === EMPTY) this.app.fitView();
    this.persist();
    return tab;
  }

  /** Where a workflow opened from the browser goes: the current tab when it holds nothing worth keeping (an
   *  unsaved, unedited workflow), else a new tab. */
  openWorkflow(workflow, { name, saved = null } = {}) {
    const tab = this.active;
    if (tab && !tab.saved && !tab.edited) {
      const problems = this.app.loadWorkflow(workflow, { name });
      this.opened(name, { saved });
      this.persist();
      return problems;
    }
    this.open(workflow, { name, saved });
    return [];
  }

  async close(tab) {
    if (this.isModified(tab)) {
      this.activate(tab);
      const ok = await confirmDialog(`“${tab.name}” has changes that are not saved. Close it anyway?`,
        { ok: "Close without saving", title: "Unsaved changes" });
      if (!ok) return false;
    }
    const i = this.list.indexOf(tab);
    if (i < 0) return false;
    this.list.splice(i, 1);
    if (tab === this.active) {
      this.active = null;
      if (!this.list.length) {
        this.open(EMPTY, { name: "workflow" });
        return true;
      }
      this.activate(this.list[Math.min(i, this.list.length - 1)], { stash: false });
    }
    this.persist();
    this.render();
    return true;
  }

  freshName() {
    const names = new Set(this.list.map((t) => t.name));
    for (let n = 1; ; n++) {
      const name = n === 1 ? "workflow" : `workflow ${n}`;
      if (!names.has(name)) return name;
    }
  }

  // -- storage -------------------------------------------------------------------------------------
  persist() {
    const h = this.app.history;
    const tabs = this.list.map((t) => {
      const current = t === this.active ? h?.current : t.stacks?.current;
      if (!current) return null;
      const modified = this.isModified(t);
      const out = { name: t === this.active ? this.app.name : t.name, saved: t.saved, modified, workflow: JSON.parse(current) };
      if (modified && t.clean) out.clean = JSON.parse(t.clean);
      return out;
    }).filter(Boolean);
    if (!tabs.length) return;
    try {
      localStorage.setItem(TABS_KEY, JSON.stringify({ active: Math.max(0, this.list.indexOf(this.active)), tabs }));
      localStorage.removeItem(LEGACY_KEY);
    } catch { /* storage full or disabled: a convenience only */ }
  }

  // -- the tab bar ---------------------------------------------------------------------------------
  buildBar() {
    const bar = el("div", { id: "tabbar", class: "tabbar" });
    const list = el("div", { class: "tab-list", role: "tablist", "aria-label": "Open workflows" });
    const add = el("button", { type: "button", class: "tab-new", title: "A new tab with an empty workflow", "aria-label": "New tab",
      onclick: () => this.open() }, "+");
    bar.append(list, add);
    document.querySelector("main").before(bar); // a strip between the toolbar and the canvas
    list.addEventListener("keydown", (e) => {
      if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
      const i = this.list.indexOf(this.active) + (e.key === "ArrowRight" ? 1 : -1);
      if (i < 0 || i >= this.list.length) return;
      e.preventDefault();
      this.activate(this.list[i]);
      list.querySelector('[aria-selected="true"]')?.focus();
    });
    this.listEl = list;
    return bar;
  }

  render() {
    if (!this.listEl) return;
    const items = this.list.map((t) => {
      const active = t === this.active;
      const name = active ? this.app.name : t.name;
      const modified = this.isModified(t);
      const tab = el("button", { type: "button", role: "tab", class: `tab${active ? " active" : ""}${modified ? " modified" : ""}`,
        "aria-selected": String(active), tabindex: active ? "0" : "-1", title: t.saved ? `${name} (saved on the server)` : name,
        dataset: { tab: t.id, name, saved: t.saved || "" }, onclick: () => this.activate(t) },
      el("span", { class: "tab-name" }, name), modified ? el("span", { class: "tab-dot", "aria-label": "unsaved changes" }, " •") : null);
      tab.addEventListener("auxclick", (e) => { if (e.button === 1) { e.preventDefault(); this.close(t); } });
      const close = el("button", { type: "button", class: "tab-close", "aria-label": `Close ${name}`, title: `Close ${name}`,
        onclick: (e) => { e.stopPropagation(); this.close(t); } }, "×");
      return el("div", { class: "tab-wrap" }, tab, close);
    });
    this.listEl.replaceChildren(...items);
  }
}
