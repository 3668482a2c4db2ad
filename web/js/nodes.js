// Node classes built from the server's schema export (GET /v1/nodes) alone: a node added in Python shows up here
// with its sockets and widgets and no change to the web code.

import { LiteGraph, LGraphNode, LGraphCanvas, LGraphBadge } from "../vendor/litegraph/litegraph.es.js";
import { makeImageWidget, makeMultilineWidget } from "./widgets.js";
import { MODE_BYPASS, MODE_MUTE } from "./modes.js";

export const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);
export const SEED_CONTROLS = ["fixed", "increment", "decrement", "randomize"];
export const CONTROL_SUFFIX = " control";
export const MAX_SAFE_SEED = Number.MAX_SAFE_INTEGER;

// Socket colours, one per type (our own palette); unknown types get a stable colour from their name.
const TYPE_COLORS = {
  MODEL: "#a78bfa", CLIP: "#facc15", VAE: "#f87171", CONDITIONING: "#fb923c", LATENT: "#f472b6",
  IMAGE: "#60a5fa", MASK: "#4ade80", INT: "#5eead4", FLOAT: "#a3e635", STRING: "#e5e7eb",
  BOOLEAN: "#94a3b8", COMBO: "#cbd5e1",
};

export function typeColor(type) {
  if (TYPE_COLORS[type]) return TYPE_COLORS[type];
  let h = 0;
  for (const c of String(type)) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${h % 360}, 65%, 65%)`;
}

export function applyTypeColors(lgcanvas, types) {
  for (const t of types) {
    if (t === "*") continue;
    const c = typeColor(t);
    LGraphCanvas.link_type_colors[t] = c;
    lgcanvas.default_connection_color_byType[t] = c;
    lgcanvas.default_connection_color_byTypeOff[t] = c;
  }
}

function decimals(x) {
  if (typeof x !== "number" || !isFinite(x)) return 0;
  const s = String(x);
  if (s.includes("e-")) return Number(s.split("e-")[1]);
  return s.includes(".") ? s.split(".")[1].length : 0;
}

/** The number a widget should hold: clamped, on its step grid, an integer for INT. */
export function normalizeNumber(inp, v) {
  let value = Number(v);
  if (!isFinite(value)) value = Number(inp.default ?? 0);
  const isInt = inp.type === "INT";
  if (inp.seed && value === -1) return -1;
  if (inp.min != null && value < inp.min) value = inp.min;
  if (inp.max != null && value > inp.max) value = inp.max;
  const grid = inp.round === false ? null : (typeof inp.round === "number" && inp.round > 0 ? inp.round : inp.step);
  if (grid && grid > 0 && !(isInt && grid === 1)) {
    const base = isInt && inp.min != null && Number.isSafeInteger(inp.min) ? inp.min : 0;
    value = base + Math.round((value - base) / grid) * grid;
    value = Number(value.toFixed(Math.min(10, decimals(grid) + 1)));
    if (inp.max != null && value > inp.max) value -= grid;
    if (inp.min != null && value < inp.min) value += grid;
  }
  if (isInt) value = Math.round(value);
  return value;
}

export function randomSeed(inp) {
  const lo = Math.max(0, inp.min ?? 0);
  const hi = Math.min(MAX_SAFE_SEED, inp.max ?? MAX_SAFE_SEED);
  // two 32-bit draws give a uniform 53-bit integer
  const a = Math.floor(Math.random() * 2 ** 21);
  const b = Math.floor(Math.random() * 2 ** 32);
  const r = a * 2 ** 32 + b;
  return lo + (r % (hi - lo + 1));
}

function defaultFor(inp) {
  if (inp.default !== undefined) return inp.default;
  switch (inp.type) {
    case "INT": case "FLOAT": return inp.min != null && inp.min > 0 ? inp.min : 0;
    case "BOOLEAN": return false;
    case "COMBO": return inp.choices?.[0] ?? "";
    default: return "";
  }
}

function addWidgetFor(node, inp) {
  const name = inp.name;
  const value = defaultFor(inp);
  const changed = () => {};
  let w;
  switch (inp.type) {
    case "INT":
    case "FLOAT": {
      const step = inp.step ?? (inp.type === "INT" ? 1 : 0.01);
      const precision = inp.type === "INT" ? 0 : Math.min(4, Math.max(decimals(step), decimals(inp.round), 1));
      w = node.addWidget("number", name, normalizeNumber(inp, value), function (v) {
        const fixed = normalizeNumber(inp, v);
        if (fixed !== this.value) this.value = fixed;
      }, {
        min: inp.seed ? Math.min(inp.min ?? 0, -1) : inp.min, max: inp.max, step: step * 10, step2: step,
        precision,
      });
      break;
    }
    case "STRING":
      if (inp.multiline) w = node.addCustomWidget(makeMultilineWidget(node, name, value, { tooltip: inp.tooltip }));
      else w = node.addWidget("text", name, String(value ?? ""), changed, {});
      break;
    case "BOOLEAN":
      w = node.addWidget("toggle", name, !!value, changed, {});
      break;
    case "COMBO":
      w = node.addWidget("combo", name, value, changed, { values: [...(inp.choices || [])] });
      if (inp.files) w.options.chiselFiles = inp.files;
      break;
  }
  if (w) {
    w.tooltip = inp.tooltip;
    w.chiselInput = inp;
  }
  return w;
}

/** A node type for each schema. Category and display name come from the schema. */
export function registerSchemas(schemas, app) {
  for (const schema of Object.values(schemas)) {
    const title = schema.display_name || schema.type;
    class ChiselNode extends LGraphNode {
      constructor(t) {
        super(t || title, schema.type);
        this.serialize_widgets = true;
        this.chisel = { schema, status: null, errors: [], images: [] };
        this.description = schema.description || "";
        for (const inp of schema.inputs) {
          if (!WIDGET_TYPES.has(inp.type)) {
            const slot = this.addInput(inp.name, inp.type === "*" ? "*" : inp.type, { tooltip: inp.tooltip });
            if (inp.optional) slot.shape = LiteGraph.SlotShape.HollowCircle;
            continue;
          }
          const w = addWidgetFor(this, inp);
          this.addInput(inp.name, inp.type, { widget: { name: inp.name }, tooltip: inp.tooltip });
          if (inp.type === "COMBO" && inp.files === "input" && w) {
            const label = inp.name === "image" ? "upload an image…" : `upload an image for ${inp.name}…`;
            const up = this.addWidget("button", label, null, () => app.uploadFor?.(this, w), {});
            up.serialize = false;
            up.chiselUploadFor = inp.name;
          }
          if (inp.seed && w) {
            const first = app?.settings?.get("seedControl") || "randomize"; // the user's setting for new nodes
            const ctl = this.addWidget("combo", inp.name + CONTROL_SUFFIX, first, () => {},
              { values: SEED_CONTROLS });
            ctl.chiselControlFor = inp.name;
            ctl.label = "control after queue";
          }
        }
        for (const out of schema.outputs) this.addOutput(out.name, out.type === "*" ? "*" : out.type);
        this.chisel.imageWidget = null;
        this.strokeStyles.running = function () {
          if (this.chisel?.status === "running") return { color: "#3ddc84", lineWidth: 3, padding: 6 };
        };
        this.badges = [() => statusBadge(this)];
      }

      onResize() {
        // resized by the user (a drag) while showing images: that size is the one to keep
        if (this.chisel?.baseSize && app.lgcanvas?.pointer?.isDown && app.lgcanvas.resizing_node === this) this.chisel.baseSize = null;
      }

      onNodeCreated() {
        const size = this.computeSize();
        this.setSize([preferredWidth(this), size[1]]);
      }

      onWidgetChanged(name, value, old) {
        const w = this.widgets?.find((x) => x.name === name);
        if (w?.options?.chiselFiles === "input") app.showInputImage?.(this, w);
        app.onGraphEdited?.();
      }

      onDblClick() {
        if (this.chisel.images.length) app.openLightbox?.(this.chisel.images, 0);
      }

      onDrawForeground(ctx) {
        drawMode(this, ctx);
        drawErrors(this, ctx);
      }
    }
    ChiselNode.title = title;
    LiteGraph.registerNodeType(schema.type, ChiselNode);
    ChiselNode.category = schema.category || "other";
    ChiselNode.title = title;
    ChiselNode.chiselSchema = schema;
  }
}

// bypassed: a purple veil; muted: a dark one (and the badge says which)
const MODE_VEILS = { [MODE_BYPASS]: "rgba(150, 60, 190, 0.40)", [MODE_MUTE]: "rgba(8, 8, 12, 0.62)" };

function drawMode(node, ctx) {
  const veil = MODE_VEILS[node.mode];
  if (!veil) return;
  const th = LiteGraph.NODE_TITLE_HEIGHT;
  const w = node.flags?.collapsed ? node._collapsed_width || node.size[0] : node.size[0];
  const h = node.flags?.collapsed ? 0 : node.size[1];
  ctx.save();
  ctx.fillStyle = veil;
  ctx.beginPath();
  ctx.roundRect(0, -th, w, h + th, 8);
  ctx.fill();
  ctx.restore();
}

const BADGES = {
  cached: { text: "cached", bgColor: "#2a4d69" },
  done: { bgColor: "#1f5130" },
  running: { text: "running", bgColor: "#2d6a3e" },
  error: { text: "error", bgColor: "#8b1e1e" },
  skipped: { text: "skipped", bgColor: "#555" },
};

function statusBadge(node) {
  if (node.mode === MODE_BYPASS) return new LGraphBadge({ text: "bypassed", bgColor: "#7d3c98", fgColor: "#fff" });
  if (node.mode === MODE_MUTE) return new LGraphBadge({ text: "muted", bgColor: "#444", fgColor: "#bbb" });
  const st = node.chisel?.status;
  if (!st || !BADGES[st]) return new LGraphBadge({ text: "" });
  const spec = { ...BADGES[st] };
  if (st === "done") spec.text = node.chisel.seconds != null ? `${node.chisel.seconds.toFixed(2)} s` : "done";
  if (st === "running" && node.chisel.activity) spec.text = node.chisel.activity; // "loading", "saving"
  return new LGraphBadge({ text: spec.text, bgColor: spec.bgColor, fgColor: "#fff" });
}

/** Red outlines on the widgets an error names, and the messages under the node. */
function drawErrors(node, ctx) {
  const errors = node.chisel?.errors;
  if (!errors?.length || node.flags?.collapsed) return;
  ctx.save();
  for (const err of errors) {
    if (!err.input) continue;
    const w = node.widgets?.find((x) => x.name === err.input);
    if (w && w.last_y != null) {
      const h = w.computedHeight ? w.computedHeight - 4 : LiteGraph.NODE_WIDGET_HEIGHT;
      ctx.strokeStyle = "#ff5050";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.roundRect(12, w.last_y - 2, node.size[0] - 24, h + 4, 8);
      ctx.stroke();
    }
  }
  ctx.font = "12px Arial, sans-serif";
  ctx.textAlign = "left";
  let y = node.size[1] + 18;
  const maxW = Math.max(node.size[0], 260);
  for (const err of errors) {
    const lines = wrap(ctx, "⚠ " + err.text, maxW);
    for (const line of lines) {
      ctx.fillStyle = "rgba(20,0,0,0.75)";
      ctx.fillRect(0, y - 13, Math.min(maxW, ctx.measureText(line).width + 8), 17);
      ctx.fillStyle = "#ff8080";
      ctx.fillText(line, 4, y);
      y += 17;
    }
  }
  ctx.restore();
}

function wrap(ctx, text, width) {
  const words = text.split(" ");
  const lines = [];
  let line = "";
  for (const w of words) {
    const next = line ? `${line} ${w}` : w;
    if (ctx.measureText(next).width > width - 8 && line) {
      lines.push(line);
      line = w;
    } else line = next;
  }
  if (line) lines.push(line);
  return lines.slice(0, 6);
}

/**
 * Show images (result files or a preview blob URL) in the node's image area, growing the node to fit. The size
 * the node had before is kept (chisel.baseSize) and is the one saved: a run growing a node is not an edit. It
 * comes back when the images go; a user who resizes the node meanwhile makes the new size the saved one.
 */
export function setNodeImages(node, urls, caption = "") {
  let w = node.chisel.imageWidget;
  if (urls.length && !node.chisel.baseSize) node.chisel.baseSize = [...node.size];
  if (!w) {
    w = makeImageWidget();
    node.addCustomWidget(w);
    node.chisel.imageWidget = w;
  }
  const old = w.images;
  w.caption = caption;
  w.images = urls.map((u) => {
    const prev = old.find((im) => im.dataset.url === u);
    if (prev) return prev;
    const im = new Image();
    im.dataset.url = u;
    im.onload = () => {
      if (!w.images.includes(im)) return; // replaced (or the preview ended) before it loaded
      const need = node.computeSize()[1] + 100;
      if (node.size[1] < need) node.setSize([node.size[0], need]);
      node.setDirtyCanvas(true, true);
    };
    im.onerror = () => {}; // a missing file just leaves the area empty
    im.src = u;
    return im;
  });
  node.chisel.images = caption === "preview" ? [] : urls;
  if (!urls.length && node.chisel.baseSize) {
    // the images are gone (a live preview is over): give the node back its size
    const size = node.chisel.baseSize;
    node.chisel.baseSize = null;
    node.setSize(size);
  }
  node.setDirtyCanvas(true, true);
}

/** The size to save: the node's own, not what showing images made it (see setNodeImages). */
export function savedSize(node) {
  return node.chisel?.baseSize ?? node.size;
}

/** A width that shows each widget's label and value in full (within reason). */
export function preferredWidth(node) {
  const ctx = preferredWidth.ctx ||= document.createElement("canvas").getContext("2d");
  ctx.font = `${LiteGraph.NODE_TEXT_SIZE}px Arial, sans-serif`;
  let w = node.computeSize()[0];
  for (const wd of node.widgets || []) {
    if (wd.type === "chisel_multiline" || wd.type === "chisel_images") continue;
    const text = `${wd.label || wd.name}  ${String(wd.value ?? "")}`;
    w = Math.max(w, ctx.measureText(text).width + 80);
  }
  return Math.min(Math.max(w, 240), 440);
}

/** A stand-in for a node whose type the server does not know: it keeps the node's data so nothing is lost. */
export class MissingNode extends LGraphNode {
  constructor(title) {
    super(title || "Missing node", "chisel/missing");
    this.chisel = { schema: null, status: null, errors: [], images: [], raw: null };
    this.color = "#6b1d1d";
    this.bgcolor = "#3b1414";
  }

  onDrawForeground(ctx) {
    drawErrors(this, ctx);
  }
}
LiteGraph.registerNodeType("chisel/missing", MissingNode);
MissingNode.skip_list = true;
