// The minimap: a small overview of the whole graph in the canvas's corner, the visible part outlined. Click or drag
// on it to move the view there (the point under the pointer becomes the centre of the view).

import { LiteGraph } from "../vendor/litegraph/litegraph.es.js";

const PAD = 6; // CSS px around the drawing

export class Minimap {
  constructor(app, el) {
    this.app = app;
    this.el = el;
    this.ctx = el.getContext("2d");
    this.map = null; // {x0, y0, scale}: graph -> minimap CSS px, as last drawn
    this.queued = false;
    el.addEventListener("pointerdown", (e) => this.onDown(e));
  }

  get lg() { return this.app.lgcanvas; }

  /** Redraw on the next frame (called after every canvas frame; cheap, at most once a frame). */
  schedule() {
    if (this.queued || this.el.hidden) return;
    this.queued = true;
    requestAnimationFrame(() => {
      this.queued = false;
      this.draw();
    });
  }

  /** The view in graph units: [x, y, width, height]. */
  view() {
    const { ds, canvas } = this.lg;
    return [-ds.offset[0], -ds.offset[1], canvas.clientWidth / ds.scale, canvas.clientHeight / ds.scale];
  }

  bounds() {
    const [vx, vy, vw, vh] = this.view();
    let x0 = vx, y0 = vy, x1 = vx + vw, y1 = vy + vh;
    for (const n of this.app.lgcanvas.graph._nodes) { // the graph shown
      const b = n.boundingRect;
      x0 = Math.min(x0, b[0]);
      y0 = Math.min(y0, b[1]);
      x1 = Math.max(x1, b[0] + b[2]);
      y1 = Math.max(y1, b[1] + b[3]);
    }
    return [x0, y0, x1 - x0, y1 - y0];
  }

  draw() {
    const el = this.el;
    const dpr = Math.max(1, window.devicePixelRatio || 1);
    const w = el.clientWidth, h = el.clientHeight;
    if (!w || !h) return;
    if (el.width !== Math.round(w * dpr)) el.width = Math.round(w * dpr);
    if (el.height !== Math.round(h * dpr)) el.height = Math.round(h * dpr);
    const ctx = this.ctx;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const [bx, by, bw, bh] = this.bounds();
    const scale = Math.min((w - 2 * PAD) / bw, (h - 2 * PAD) / bh);
    // centre the drawing in the box
    const x0 = bx - ((w - 2 * PAD) / scale - bw) / 2, y0 = by - ((h - 2 * PAD) / scale - bh) / 2;
    this.map = { x0, y0, scale };
    const at = (x, y) => [PAD + (x - x0) * scale, PAD + (y - y0) * scale];
    const style = getComputedStyle(el);
    const plain = style.getPropertyValue("--muted").trim() || LiteGraph.NODE_DEFAULT_BGCOLOR;
    for (const n of this.app.lgcanvas.graph._nodes) { // the graph shown
      const b = n.boundingRect;
      const [x, y] = at(b[0], b[1]);
      ctx.fillStyle = n.bgcolor || plain; // a node's own colour, else one that shows on the panel
      ctx.fillRect(x, y, Math.max(2, b[2] * scale), Math.max(2, b[3] * scale));
    }
    const [vx, vy, vw, vh] = this.view();
    const [x, y] = at(vx, vy);
    ctx.strokeStyle = style.getPropertyValue("--accent").trim() || "#7aa2f7";
    ctx.lineWidth = 1.5;
    ctx.strokeRect(x, y, vw * scale, vh * scale);
  }

  /** A point of the minimap (CSS px from its corner) in graph units. */
  toGraph(mx, my) {
    const { x0, y0, scale } = this.map;
    return [x0 + (mx - PAD) / scale, y0 + (my - PAD) / scale];
  }

  /** A graph point on the page (client px): where to click on the minimap to go there. */
  toClient(gx, gy) {
    if (!this.map) this.draw();
    const { x0, y0, scale } = this.map;
    const r = this.el.getBoundingClientRect();
    return [r.left + PAD + (gx - x0) * scale, r.top + PAD + (gy - y0) * scale];
  }

  /** Centre the view on a graph point. */
  centreOn(gx, gy) {
    const [, , vw, vh] = this.view();
    const { ds } = this.lg;
    ds.offset[0] = vw / 2 - gx;
    ds.offset[1] = vh / 2 - gy;
    this.lg.setDirty(true, true);
  }

  onDown(e) {
    if (e.button !== 0 || !this.map) return;
    e.preventDefault();
    e.stopPropagation();
    // the mapping stays as it was when the drag began, so the view follows the pointer smoothly
    const map = { ...this.map };
    const r = this.el.getBoundingClientRect();
    const go = (ev) => {
      const gx = map.x0 + (ev.clientX - r.left - PAD) / map.scale;
      const gy = map.y0 + (ev.clientY - r.top - PAD) / map.scale;
      this.centreOn(gx, gy);
    };
    go(e);
    this.el.setPointerCapture(e.pointerId);
    const move = (ev) => go(ev);
    const up = () => {
      this.el.removeEventListener("pointermove", move);
      this.el.removeEventListener("pointerup", up);
      this.el.removeEventListener("pointercancel", up);
    };
    this.el.addEventListener("pointermove", move);
    this.el.addEventListener("pointerup", up);
    this.el.addEventListener("pointercancel", up);
  }
}
