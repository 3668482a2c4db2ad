// The toolbar's buttons, the keyboard shortcuts and dropping files on the page.

import { isTextEditorOpen } from "./widgets.js";
import { toast, el } from "./panels.js";
import { MODE_BYPASS, MODE_MUTE } from "./modes.js";
import { zoomToSelection } from "./view.js";

const $ = (sel) => document.querySelector(sel);

export function isEditable(target) {
  const t = target?.localName;
  return t === "input" || t === "textarea" || t === "select" || target?.isContentEditable;
}

export function bindToolbar(app) {
  $("#queue-btn").addEventListener("click", () => app.queue());
  $("#interrupt-btn").addEventListener("click", () => app.interrupt());
  $("#save-btn").addEventListener("click", () => app.save());
  $("#download-btn").addEventListener("click", () => app.download());
  $("#open-btn").addEventListener("click", () => $("#file-input").click());
  $("#file-input").addEventListener("change", async (e) => {
    const f = e.target.files?.[0];
    e.target.value = "";
    if (f) await app.openFile(f);
  });
  $("#new-btn").addEventListener("click", () => app.tabs.open());
  $("#workflows-btn").addEventListener("click", () => app.browser.toggle());
  $("#undo-btn").addEventListener("click", () => app.history.undo());
  $("#redo-btn").addEventListener("click", () => app.history.redo());
  $("#check-btn").addEventListener("click", () => app.validate());
  $("#export-btn").addEventListener("click", () => app.files.exportApi());
  $("#export-ui-btn").addEventListener("click", () => app.files.exportComfyUi());
  $("#fit-btn").addEventListener("click", () => app.fitView());
  $("#help-btn").addEventListener("click", () => showShortcuts());
  $("#settings-btn").addEventListener("click", () => app.settings.toggle());
  $("#panels-btn").addEventListener("click", (e) => {
    const open = document.body.classList.toggle("panels-open");
    e.currentTarget.setAttribute("aria-expanded", String(open));
  });
  $("#workflows-select").addEventListener("change", async (e) => {
    const name = e.target.value;
    e.target.value = "";
    if (name) await app.files.openBundled(name);
  });
}

export function bindKeys(app) {
  document.addEventListener("keydown", (e) => {
    const mod = e.ctrlKey || e.metaKey;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (mod && key === "Enter") {
      e.preventDefault();
      app.queue();
      return;
    }
    if (mod && key === "s") {
      e.preventDefault(); // never the browser's own "save page" dialog
      if (app.palette.isOpen || app.lightbox.root || app.maskEditor.isOpen || document.querySelector("#shortcuts, .modal-back")) return;
      if (e.shiftKey) app.download();
      else app.save();
      return;
    }
    if (app.palette.isOpen || app.lightbox.root || app.maskEditor.isOpen || document.querySelector("#shortcuts")) return;
    if (mod && key === "o") {
      e.preventDefault();
      $("#file-input").click();
      return;
    }
    if (isEditable(e.target) || isTextEditorOpen()) return;
    if (mod && !e.shiftKey && (key === "b" || key === "m")) {
      e.preventDefault();
      app.toggleMode(key === "b" ? MODE_BYPASS : MODE_MUTE, app.selectedNodes());
      return;
    }
    if (!mod && !e.altKey && handlePlainKey(app, e)) {
      e.preventDefault();
      return;
    }
    if (mod && !e.shiftKey && key === "g") {
      e.preventDefault();
      app.groupSelection();
      return;
    }
    if (e.altKey && !mod && e.code === "KeyC") {
      e.preventDefault();
      app.collapseSelection();
      return;
    }
    if (mod && !e.shiftKey && key === "z") {
      e.preventDefault();
      app.history.undo();
    } else if (mod && ((e.shiftKey && key === "z") || key === "y")) {
      e.preventDefault();
      app.history.redo();
    }
  }, true);
}

/** Single keys on the canvas: "/" searches, "." fits the view, "F" zooms to the selection, "W" opens the workflow
 *  browser, "?" lists the shortcuts. */
function handlePlainKey(app, e) {
  if (e.key === "/") app.openPalette(null, null);
  else if (e.key === ".") app.fitView();
  else if (e.key === "?") showShortcuts();
  else if (e.key === "w" || e.key === "W") app.browser.toggle();
  else if (e.key === "f" || e.key === "F") {
    if (!zoomToSelection(app)) toast("Select the nodes to zoom to first (. fits the whole workflow).", "warn");
  }
  else return false;
  return true;
}

export const SHORTCUTS = [
  ["Ctrl+Enter", "Queue the workflow"],
  ["Double-click, /", "Search nodes to add"],
  ["Ctrl+Z, Ctrl+Shift+Z or Ctrl+Y", "Undo, redo"],
  ["Ctrl+C, Ctrl+V", "Copy, paste the selected nodes"],
  ["Delete", "Delete the selected nodes"],
  ["Ctrl+B", "Bypass the selected nodes (their inputs pass through)"],
  ["Ctrl+M", "Mute the selected nodes (they and what needs them do not run)"],
  ["Ctrl+G", "Put the selected nodes in a group"],
  ["Double-click a subgraph node, Esc", "Open the subgraph to edit its inside, leave it"],
  ["Alt+C", "Collapse or expand the selected nodes"],
  ["Alt+click a link", "Add a reroute dot"],
  [".", "Fit the view to the workflow"],
  ["F", "Zoom to the selected nodes"],
  ["Ctrl+S", "Save this tab on the server (asks for a name the first time)"],
  ["Ctrl+Shift+S, Ctrl+O", "Download the workflow as a file, open a workflow file"],
  ["W", "Saved and bundled workflows (open, save as, rename, delete)"],
  ["?", "This list"],
];

export function showShortcuts() {
  if (document.querySelector("#shortcuts")) return;
  const close = () => { back.remove(); document.removeEventListener("keydown", onKey, true); };
  const onKey = (e) => { if (e.key === "Escape" || e.key === "?") { e.preventDefault(); e.stopPropagation(); close(); } };
  const rows = SHORTCUTS.map(([k, what]) => el("tr", {}, el("th", {}, el("kbd", {}, k)), el("td", {}, what)));
  const btn = el("button", { type: "button", onclick: close }, "Close");
  const box = el("div", { class: "modal shortcuts", id: "shortcuts", role: "dialog", "aria-modal": "true", "aria-labelledby": "shortcuts-title" },
    el("h2", { id: "shortcuts-title" }, "Keyboard shortcuts"), el("table", {}, ...rows), el("div", { class: "modal-buttons" }, btn));
  const back = el("div", { class: "modal-back" }, box);
  back.addEventListener("click", (e) => { if (e.target === back) close(); });
  document.addEventListener("keydown", onKey, true);
  document.body.append(back);
  btn.focus();
}

export function bindDrop(app) {
  const wrap = document.body;
  wrap.addEventListener("dragover", (e) => {
    if ([...(e.dataTransfer?.types || [])].includes("Files")) {
      e.preventDefault();
      document.body.classList.add("dragging");
    }
  });
  wrap.addEventListener("dragleave", (e) => {
    if (e.target === document.body || e.relatedTarget === null) document.body.classList.remove("dragging");
  });
  wrap.addEventListener("drop", async (e) => {
    document.body.classList.remove("dragging");
    const file = e.dataTransfer?.files?.[0];
    if (!file) return;
    e.preventDefault();
    if (e.target === app.lgcanvas.canvas && file.type.startsWith("image/")) {
      // onto a Load Image node: upload it there; anywhere else a PNG is opened as a workflow
      const [x, y] = app.lgcanvas.convertEventToCanvasOffset(e);
      const node = app.graph.getNodeOnPos(x, y);
      const w = node?.widgets?.find((x) => x.options?.chiselFiles === "input");
      if (w) {
        await app.uploadFor(node, w, file);
        return;
      }
      // on empty canvas: a new Load Image node with it (a PNG that carries a workflow opens that instead)
      if (!node && (await app.imagesIn.drop(file, [x, y]))) return;
    }
    if (/\.(png|json)$/i.test(file.name) || file.type === "image/png" || file.type === "application/json") await app.openFile(file);
    else toast("Drop a Chisel PNG, a workflow .json file, or a picture on the canvas.", "warn");
  });
}
