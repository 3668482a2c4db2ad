// A small, stable surface for tests and the browser console (window.chisel): it reads what the page shows.

import { LiteGraph } from "../vendor/litegraph/litegraph.es.js";
import { MissingNode } from "./nodes.js";
import { graphToWorkflow } from "./format.js";
import { graphRectToClient } from "./widgets.js";

/** A node of the graph the canvas shows (a subgraph's inside when one is open), else of the workflow. */
function onCanvas(app, id) {
  const shown = app.lgcanvas.graph;
  if (shown !== app.graph) {
    const n = shown.getNodeById(/^[1-9]\d{0,14}$/.test(String(id)) ? Number(id) : String(id));
    if (n) return n;
  }
  return app.nodeFor(id);
}

function slotClient(app, id, kind, name) {
  const node = onCanvas(app, id);
  if (!node) return null;
  let p;
  if (kind === "output") {
    const i = typeof name === "number" ? name : node.findOutputSlot(name);
    if (i < 0) return null;
    p = node.getOutputPos(i);
  } else {
    const i = typeof name === "number" ? name : node.findInputSlot(name);
    if (i < 0) return null;
    const slot = node.inputs[i];
    if (slot.widget) {
      // a widget input: a link dropped anywhere on its widget connects to it
      const w = node.widgets.find((x) => x.name === slot.widget.name);
      p = [node.pos[0] + node.size[0] / 2, node.pos[1] + (w?.last_y ?? 0) + 10];
    } else p = node.getInputPos(i);
  }
  const r = graphRectToClient(app.lgcanvas, p[0], p[1], 0, 0);
  return [r.left, r.top];
}

export function testSurface(app) {
  return {
    app,
    ready: false,
    workflow: () => graphToWorkflow(app.graph),
    load: (wf) => app.loadWorkflow(wf),
    nodes: () => app.lgcanvas.graph._nodes.map((n) => ({ // the graph shown (a subgraph when one is open)
      id: String(n.id), type: n.type, title: n.title, pos: [...n.pos], size: [...n.size],
      status: n.chisel?.status ?? null, mode: n.mode ?? 0, collapsed: !!n.flags?.collapsed, color: n.color ?? null,
      errors: (n.chisel?.errors || []).map((e) => ({ ...e })),
      images: [...(n.chisel?.images || [])], missing: n instanceof MissingNode,
      widgets: Object.fromEntries((n.widgets || []).filter((w) => w.serialize !== false).map((w) => [w.name, w.value])),
    })),
    slotPos: (id, kind, name) => slotClient(app, id, kind, name),
    widgetPos: (id, name) => {
      const n = onCanvas(app, id);
      const w = n?.widgets?.find((x) => x.name === name);
      if (!w) return null;
      const h = w.computedHeight ? w.computedHeight / 2 - 2 : 10;
      const r = graphRectToClient(app.lgcanvas, n.pos[0] + n.size[0] / 2, n.pos[1] + (w.last_y ?? w.y) + h, 0, 0);
      return [r.left, r.top];
    },
    titlePos: (id) => {
      const n = onCanvas(app, id);
      if (!n) return null;
      // well right of the collapse dot, whatever the zoom
      const r = graphRectToClient(app.lgcanvas, n.pos[0] + Math.min(n.size[0] / 2, 80), n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT / 2, 0, 0);
      return [r.left, r.top];
    },
    /** Where the middle of the link into a node's input is drawn (after the first frame). */
    linkCenter: (id, input) => {
      const n = onCanvas(app, id);
      const slot = n?.inputs?.[n.findInputSlot(input)];
      const link = slot?.link != null ? n.graph.links.get(slot.link) : null;
      if (!link?._pos) return null;
      const r = graphRectToClient(app.lgcanvas, link._pos[0], link._pos[1], 0, 0);
      return [r.left, r.top];
    },
    // the graph shown (a subgraph's inside when one is open)
    reroutes: () => [...app.lgcanvas.graph.reroutes.values()].map((r) => ({ id: r.id, pos: [...r.pos], links: r.linkIds.size })),
    groups: () => app.lgcanvas.graph._groups.map((g) => ({ title: g.title, bounding: [...g._bounding], color: g.color ?? null })),
    events: () => app.events.map((e) => ({ ...e })),
    undoDepth: () => app.history.undoStack.length,
  };
}
