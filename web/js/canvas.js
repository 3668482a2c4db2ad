// LiteGraph glue: the library's settings, the canvas element (sizing, focus, undo checkpoints), our palette in
// place of the library's search box, the context menus, adding nodes and fitting the view.

import { LiteGraph, LGraph, LGraphCanvas, CanvasPointer } from "../vendor/litegraph/litegraph.es.js";
import { applyTypeColors } from "./nodes.js";
import { closeTextEditor } from "./widgets.js";
import { toast } from "./panels.js";
import { MODE_BYPASS, MODE_MUTE } from "./modes.js";

const $ = (sel) => document.querySelector(sel);

export function configureLiteGraph() {
  LiteGraph.release_link_on_empty_shows_menu = true;
  LiteGraph.dialog_close_on_mouse_leave = false;
  LiteGraph.search_hide_on_mouse_leave = false;
  LiteGraph.alt_drag_do_clone_nodes = true;
  LiteGraph.middle_click_slot_add_default_node = false;
  LiteGraph.NODE_TEXT_SIZE = 13;
}

/** The graph and its canvas, wired to the app (palette, menus, undo). */
export function createCanvas(app) {
  const canvasEl = $("#graph-canvas");
  const graph = new LGraph();
  const lg = new LGraphCanvas(canvasEl, graph);
  app.graph = graph;
  app.lgcanvas = lg;
  lg.allow_searchbox = true;
  lg.render_canvas_border = false;
  lg.show_info = false;
  const types = new Set();
  for (const s of Object.values(app.schemas)) {
    s.inputs.forEach((i) => types.add(i.type));
    s.outputs.forEach((o) => types.add(o.type));
  }
  applyTypeColors(lg, types);
  bindPalette(app, lg, canvasEl);
  bindMenus(app, lg);
  bindResize(lg, canvasEl);
  bindLinkFeedback(app, lg);
  // edits end with a pointer or key release: record an undo step then (only when something changed)
  canvasEl.addEventListener("pointerdown", () => { closeTextEditor(true); canvasEl.focus(); });
  // (after LiteGraph's own handlers: each gesture or key is one step, however fast the next one follows)
  canvasEl.addEventListener("pointerup", () => app.history.check());
  canvasEl.addEventListener("keyup", () => app.history.check());
  canvasEl.addEventListener("wheel", () => closeTextEditor(true), { passive: true });
  graph.onAfterChange = () => app.history?.schedule();
  graph.onNodeAdded = () => app.history?.schedule();
  graph.onNodeRemoved = () => app.history?.schedule();
}

function bindPalette(app, lg, canvasEl) {
  // our palette instead of the library's search box and connection menu
  lg.showSearchBox = (e, opts = {}) => {
    const from = opts.node_from ? { node: opts.node_from, slot: opts.slot_from, direction: "output", slotType: opts.type_filter_in }
      : opts.node_to ? { node: opts.node_to, slot: opts.slot_from, direction: "input", slotType: opts.type_filter_out } : null;
    if (from) openPalette(app, e, from); // a plain double-click is handled below, by the browser's dblclick
  };
  // The browser's own double-click (its timing, the user's settings) opens the palette on empty canvas.
  canvasEl.addEventListener("dblclick", (e) => {
    if (app.subgraphs.justOpened()) return; // this double-click opened a subgraph
    const [x, y] = lg.convertEventToCanvasOffset(e);
    const graph = lg.graph;
    const group = graph.getGroupTitlebarOnPos?.(x, y);
    if (group && !graph.getNodeOnPos(x, y)) {
      // double-click a group's title to rename it
      lg.prompt("Group title", group.title, (v) => {
        if (v && v !== group.title) {
          group.title = v;
          app.edited();
        }
      }, e);
      return;
    }
    if (graph.getNodeOnPos(x, y)) return;
    if (graph.getRerouteOnPos?.(x, y)) return;
    if (graph.getIoNodeOnPos?.(x, y)) return;
    e.preventDefault();
    openPalette(app, e, null);
  });
  CanvasPointer.doubleClickTime = 500;
  lg.showConnectionMenu = (opts = {}) => {
    const e = opts.e;
    if (opts.nodeFrom) openPalette(app, e, { node: opts.nodeFrom, slot: opts.slotFrom, direction: "output", slotType: opts.slotFrom?.type });
    else if (opts.nodeTo) openPalette(app, e, { node: opts.nodeTo, slot: opts.slotTo, direction: "input", slotType: opts.slotTo?.type });
  };
}

function bindMenus(app, lg) {
  lg.getMenuOptions = () => [
    { content: "Add node…", callback: (v, o, e) => openPalette(app, e, null) },
    { content: "Add group", callback: LGraphCanvas.onGroupAdd },
    null,
    { content: "Queue", callback: () => app.queue() },
    { content: "Check for errors", callback: () => app.validate() },
    { content: "Refresh model lists", callback: () => app.refreshModels(true) },
  ];
  const baseNodeMenu = lg.getNodeMenuOptions.bind(lg);
  lg.getNodeMenuOptions = (node) => {
    const hide = new Set(["Mode", "Properties", "Properties Panel", "Convert to Subgraph 🆕", "Inputs", "Outputs"]);
    const opts = baseNodeMenu(node).filter((o) => !o || !hide.has(o.content));
    if (node.chisel?.extraInputs && Object.keys(node.chisel.extraInputs).length) {
      opts.unshift({ content: "Remove unknown inputs", callback: () => { delete node.chisel.extraInputs; app.edited(); } });
    }
    if (node.chisel?.images?.length) opts.unshift({ content: "Open image", callback: () => app.openLightbox(node.chisel.images, 0) });
    const picture = node.widgets?.find((w) => w.options?.chiselFiles === "input" && w.value);
    if (picture) opts.unshift({ content: "Open in mask editor", callback: () => app.maskEditor.open(node, picture) });
    const targets = () => (lg.selected_nodes?.[node.id] ? Object.values(lg.selected_nodes) : [node]);
    opts.unshift(
      { content: node.mode === MODE_BYPASS ? "Stop bypassing (Ctrl+B)" : "Bypass (Ctrl+B)", callback: () => app.toggleMode(MODE_BYPASS, targets()) },
      { content: node.mode === MODE_MUTE ? "Unmute (Ctrl+M)" : "Mute (Ctrl+M)", callback: () => app.toggleMode(MODE_MUTE, targets()) },
      ...app.subgraphs.menu(node, targets()),
      null,
    );
    return opts;
  };
}

/** Why a link dropped on a node was refused ("MODEL cannot go into CLIP"), or null when it was not refused. */
export function refusedLinkReason(lc, node, x, y) {
  const links = lc.renderLinks;
  const first = links[0];
  if (!first || links.every((l) => l.node === node)) return null;
  const fromType = first.fromSlot?.type;
  if (lc.state.connectingTo === "input") {
    const input = node.getInputOnPos([x, y]) ?? node.getSlotFromWidget(lc.overWidget);
    if (input) {
      if (links.some((l) => l.canConnectToInput(node, input))) return null;
      return `${fromType} cannot go into ${input.type} (“${input.label || input.name}” on ${node.title}).`;
    }
    if ((node.inputs || []).some((i) => links.some((l) => l.canConnectToInput(node, i)))) return null;
    return `${node.title} has no input that takes ${fromType}.`;
  }
  if (lc.state.connectingTo === "output") {
    const output = node.getOutputOnPos([x, y]);
    if (output) {
      if (links.some((l) => l.canConnectToOutput(node, output))) return null;
      return `${output.type} cannot go into ${fromType} (“${first.fromSlot.label || first.fromSlot.name}” on ${first.node.title}).`;
    }
    if ((node.outputs || []).some((o) => links.some((l) => l.canConnectToOutput(node, o)))) return null;
    return `${node.title} has no output that gives ${fromType}.`;
  }
  return null;
}

function bindLinkFeedback(app, lg) {
  const lc = lg.linkConnector;
  lc.events.addEventListener("after-drop-links", (e) => {
    const { canvasX, canvasY } = e.detail.event;
    const node = app.graph.getNodeOnPos(canvasX, canvasY);
    const reason = node ? refusedLinkReason(lc, node, canvasX, canvasY) : null;
    if (reason) toast(`Not connected: ${reason}`, "warn", 6000).classList.add("link-refused");
  });
}

function bindResize(lg, canvasEl) {
  const resize = () => {
    const wrap = $("#canvas-wrap");
    const dpr = Math.max(1, window.devicePixelRatio || 1);
    const w = wrap.clientWidth, h = wrap.clientHeight;
    canvasEl.width = Math.round(w * dpr);
    canvasEl.height = Math.round(h * dpr);
    canvasEl.style.width = `${w}px`;
    canvasEl.style.height = `${h}px`;
    lg.bgcanvas.width = canvasEl.width;
    lg.bgcanvas.height = canvasEl.height;
    canvasEl.getContext("2d").scale(dpr, dpr);
    lg.setDirty(true, true);
  };
  new ResizeObserver(resize).observe($("#canvas-wrap"));
  resize();
}

export function openPalette(app, e, from) {
  const cx = e?.clientX ?? window.innerWidth / 2;
  const cy = e?.clientY ?? window.innerHeight / 2;
  const pos = e ? app.lgcanvas.convertEventToCanvasOffset(e) : app.lgcanvas.convertCanvasToOffset([300, 200]);
  app.palette.open(cx, cy, [pos[0], pos[1]], from);
}

/** Add a node from the palette; connect it when the palette was opened by dropping a link. */
export function addNodeAt(app, type, pos, from) {
  const node = LiteGraph.createNode(type);
  if (!node) return null;
  node.pos = [pos[0], pos[1]];
  app.lgcanvas.graph.add(node);
  if (from?.node) {
    if (from.direction === "output") {
      const i = from.node.findOutputSlot(from.slot?.name);
      if (i >= 0) from.node.connectByType(i, node, from.node.outputs[i].type);
    } else {
      const i = from.node.findInputSlot(from.slot?.name);
      if (i >= 0) from.node.connectByTypeOutput(i, node, from.node.inputs[i].type);
    }
  }
  app.lgcanvas.selectNode(node);
  app.edited();
  return node;
}

/** Scale and centre the view on every node. */
export function fitView(graph, lg) {
  const nodes = graph._nodes;
  if (!nodes.length) {
    lg.ds.scale = 1;
    lg.ds.offset[0] = 0;
    lg.ds.offset[1] = 0;
    return;
  }
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {
    x0 = Math.min(x0, n.pos[0]);
    y0 = Math.min(y0, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
    x1 = Math.max(x1, n.pos[0] + n.size[0]);
    y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const wrap = $("#canvas-wrap");
  const W = wrap.clientWidth, H = wrap.clientHeight;
  const pad = 40;
  const scale = Math.max(0.3, Math.min(1, (W - pad * 2) / (x1 - x0), (H - pad * 2) / (y1 - y0)));
  lg.ds.scale = scale;
  lg.ds.offset[0] = -x0 + (W / scale - (x1 - x0)) / 2;
  lg.ds.offset[1] = -y0 + (H / scale - (y1 - y0)) / 2;
  lg.setDirty(true, true);
}
