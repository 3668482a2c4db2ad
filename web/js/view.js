// Moving the view: zoom to the selected nodes (F), as "." fits the whole workflow.

import { LiteGraph, LGraphGroup } from "../vendor/litegraph/litegraph.es.js";

const PAD = 60; // screen pixels around the selection
const MAX_SCALE = 2; // a single small node is brought close, not blown up to fill the screen

/** Centre and scale the view on the selected nodes (and groups); false when nothing is selected. */
export function zoomToSelection(app) {
  const lg = app.lgcanvas;
  const boxes = [];
  for (const n of app.selectedNodes()) {
    const collapsed = !!n.flags?.collapsed;
    const w = collapsed ? (n._collapsed_width || LiteGraph.NODE_COLLAPSED_WIDTH || 80) : n.size[0];
    const h = collapsed ? 0 : n.size[1];
    boxes.push([n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT, n.pos[0] + w, n.pos[1] + h]);
  }
  for (const item of lg.selectedItems || []) {
    if (item instanceof LGraphGroup) {
      const [x, y, w, h] = item._bounding;
      boxes.push([x, y, x + w, y + h]);
    }
  }
  if (!boxes.length) return false;
  const x0 = Math.min(...boxes.map((b) => b[0])), y0 = Math.min(...boxes.map((b) => b[1]));
  const x1 = Math.max(...boxes.map((b) => b[2])), y1 = Math.max(...boxes.map((b) => b[3]));
  const wrap = document.querySelector("#canvas-wrap");
  const W = wrap.clientWidth, H = wrap.clientHeight;
  const scale = Math.max(0.1, Math.min(MAX_SCALE, (W - PAD * 2) / Math.max(1, x1 - x0), (H - PAD * 2) / Math.max(1, y1 - y0)));
  lg.ds.scale = scale;
  lg.ds.offset[0] = -x0 + (W / scale - (x1 - x0)) / 2;
  lg.ds.offset[1] = -y0 + (H / scale - (y1 - y0)) / 2;
  lg.setDirty(true, true);
  return true;
}
