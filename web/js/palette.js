// The node palette: double-click the canvas (or drop a link on empty space) to search every node type,
// grouped by category, found by fuzzy search (typos, initials). Arrow keys move, Enter adds, Escape closes.

import { LiteGraph } from "../vendor/litegraph/litegraph.es.js";
import { fuzzyScore, words } from "./fuzzy.js";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function compatible(slotType, otherType) {
  return LiteGraph.isValidConnection(slotType, otherType);
}

export class Palette {
  constructor(app) {
    this.app = app;
    this.root = null;
  }

  get isOpen() {
    return !!this.root;
  }

  /**
   * Open at a page position. `from`: {node, slot, direction: "output"|"input"} when a dragged link was dropped
   * on empty canvas: only node types that can take (or give) that link are listed, and the new node is connected.
   */
  open(clientX, clientY, graphPos, from = null) {
    this.close();
    const schemas = this.app.schemas;
    const notes = from ? [] : [
      { type: "Note", title: "Note", category: "utils", description: "A text note on the canvas (never runs)", schema: null },
      { type: "MarkdownNote", title: "Markdown Note", category: "utils", description: "A Markdown note (shown as text)", schema: null },
    ];
    const entries = Object.values(schemas).map((s) => ({
      type: s.type, title: s.display_name || s.type, category: s.category || "other",
      description: s.description || "", schema: s,
    })).concat(notes).filter((e) => {
      if (!from) return true;
      const t = from.slotType;
      if (from.direction === "output") return e.schema.inputs.some((i) => compatible(t, i.type));
      return e.schema.outputs.some((o) => compatible(o.type, t));
    });
    const input = el("input", { type: "text", placeholder: "Search nodes…", "aria-label": "Search nodes", spellcheck: "false" });
    const list = el("div", { class: "palette-list", role: "listbox" });
    const hint = el("div", { class: "palette-hint" });
    const root = el("div", { class: "chisel-palette", role: "dialog", "aria-label": "Add a node" }, input, list, hint);
    document.body.append(root);
    const w = 340, h = 420;
    root.style.left = `${Math.max(4, Math.min(clientX - 20, window.innerWidth - w - 8))}px`;
    root.style.top = `${Math.max(4, Math.min(clientY - 20, window.innerHeight - h - 8))}px`;
    this.root = root;
    let items = [];
    let active = 0;
    const render = () => {
      const q = input.value.trim().toLowerCase();
      const scores = new Map();
      if (q) {
        for (const e of entries) {
          const sc = fuzzyScore(q, [e.title, e.type], e.category);
          if (sc !== null) scores.set(e, sc);
        }
      }
      const match = (e) => !q || scores.has(e);
      const score = (e) => scores.get(e) ?? 0;
      const found = entries.filter(match);
      list.replaceChildren();
      items = [];
      if (q) {
        // best matches first; on a tie the shorter name, in words, of title or type ("chekpoint": Load Checkpoint
        // before Image Only Checkpoint Loader; "cte": CLIPTextEncode before CLIPTextEncodeSDXL); category beside each
        const size = (e) => Math.min(words(e.title).length, words(e.type).length);
        found.sort((a, b) => score(a) - score(b) || size(a) - size(b) || a.title.localeCompare(b.title));
        for (const e of found) items.push(e);
        for (const e of items) list.append(this.row(e, true));
      } else {
        const cats = {};
        for (const e of found) (cats[e.category] ||= []).push(e);
        for (const cat of Object.keys(cats).sort()) {
          list.append(el("div", { class: "palette-category" }, cat));
          for (const e of cats[cat].sort((a, b) => a.title.localeCompare(b.title))) {
            items.push(e);
            list.append(this.row(e, false));
          }
        }
      }
      active = 0;
      mark();
      hint.textContent = found.length ? `${found.length} node type${found.length === 1 ? "" : "s"} · Enter adds · Esc closes`
        : "No node type matches";
    };
    const rows = () => [...list.querySelectorAll(".palette-item")];
    const mark = () => {
      rows().forEach((r, i) => r.classList.toggle("active", i === active));
      rows()[active]?.scrollIntoView({ block: "nearest" });
    };
    const choose = (i) => {
      const e = items[i];
      if (!e) return;
      this.close();
      this.app.addNodeAt(e.type, graphPos, from);
    };
    input.addEventListener("input", render);
    input.addEventListener("keydown", (ev) => {
      ev.stopPropagation();
      if (ev.key === "ArrowDown") { active = Math.min(items.length - 1, active + 1); mark(); ev.preventDefault(); }
      else if (ev.key === "ArrowUp") { active = Math.max(0, active - 1); mark(); ev.preventDefault(); }
      else if (ev.key === "Enter") { choose(active); ev.preventDefault(); }
      else if (ev.key === "Escape") { this.close(); ev.preventDefault(); }
    });
    list.addEventListener("pointerdown", (ev) => ev.preventDefault()); // keep the focus in the search box
    list.addEventListener("click", (ev) => {
      const row = ev.target.closest(".palette-item");
      if (row) choose(rows().indexOf(row));
    });
    this.outside = (ev) => { if (this.root && !this.root.contains(ev.target)) this.close(); };
    setTimeout(() => document.addEventListener("pointerdown", this.outside, true), 0);
    render();
    input.focus();
  }

  row(e, showCategory) {
    const title = el("span", { class: "palette-title" }, e.title);
    const row = el("div", { class: "palette-item", role: "option", dataset: { type: e.type } }, title);
    if (showCategory) row.append(el("span", { class: "palette-cat" }, e.category));
    if (e.description) row.title = e.description;
    return row;
  }

  close() {
    if (!this.root) return;
    document.removeEventListener("pointerdown", this.outside, true);
    this.root.remove();
    this.root = null;
    this.app.lgcanvas?.canvas.focus();
  }
}
