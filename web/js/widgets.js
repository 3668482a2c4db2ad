// Chisel's own canvas widgets: a multiline text box (edited in a textarea laid over the canvas) and an image
// area for results and live previews. Both are plain LiteGraph custom widgets (draw / computeLayoutSize /
// onPointerDown); the library's built-in widgets cover numbers, one-line text, toggles and combos.

import { LiteGraph } from "../vendor/litegraph/litegraph.es.js";

const MARGIN = 15;

function wrapLines(ctx, text, width, maxLines) {
  const out = [];
  for (const para of String(text).split("\n")) {
    let line = "";
    for (const word of para.split(/(\s+)/)) {
      const next = line + word;
      if (ctx.measureText(next).width > width && line) {
        out.push(line);
        line = word.trimStart();
        while (ctx.measureText(line).width > width && line.length > 1) {
          let cut = line.length - 1;
          while (cut > 1 && ctx.measureText(line.slice(0, cut)).width > width) cut--;
          out.push(line.slice(0, cut));
          line = line.slice(cut);
        }
      } else {
        line = next;
      }
      if (out.length >= maxLines) return out;
    }
    out.push(line);
    if (out.length >= maxLines) return out;
  }
  return out;
}

/** Where a graph-space rectangle lies on the page, in CSS pixels. */
export function graphRectToClient(lgcanvas, x, y, w, h) {
  const r = lgcanvas.canvas.getBoundingClientRect();
  const [cx, cy] = lgcanvas.ds.convertOffsetToCanvas([x, y]);
  const s = lgcanvas.ds.scale;
  return { left: r.left + cx, top: r.top + cy, width: w * s, height: h * s };
}

let openEditor = null;

/** Close the textarea editor, keeping (commit) or dropping what was typed. */
export function closeTextEditor(commit = true) {
  if (!openEditor) return;
  const ed = openEditor;
  openEditor = null;
  ed.finish(commit);
}

export function isTextEditorOpen() {
  return !!openEditor;
}

export function makeMultilineWidget(node, name, value, options = {}) {
  const widget = {
    type: "chisel_multiline",
    name,
    value: value ?? "",
    options: { multiline: true, ...options },
    tooltip: options.tooltip,
    y: 0,
    computeLayoutSize() {
      return { minHeight: 64, minWidth: 220 };
    },
    draw(ctx, n, width, y, H) {
      const h = Math.max((this.computedHeight || 64) - 6, 20);
      const disabled = this.computedDisabled;
      ctx.save();
      // LiteGraph's widget colours (the theme sets them)
      ctx.fillStyle = LiteGraph.WIDGET_BGCOLOR;
      ctx.strokeStyle = this.chiselError ? "#ff5050" : LiteGraph.WIDGET_OUTLINE_COLOR;
      ctx.lineWidth = this.chiselError ? 2 : 1;
      ctx.beginPath();
      ctx.roundRect(MARGIN, y, width - MARGIN * 2, h, 6);
      ctx.fill();
      ctx.stroke();
      ctx.font = "12px Arial, sans-serif";
      ctx.textAlign = "left";
      const lineH = 15;
      const maxLines = Math.max(1, Math.floor((h - 6) / lineH));
      ctx.beginPath();
      ctx.rect(MARGIN, y, width - MARGIN * 2, h);
      ctx.clip();
      if (disabled) {
        ctx.fillStyle = LiteGraph.WIDGET_SECONDARY_TEXT_COLOR;
        ctx.fillText(`${name} (from a link)`, MARGIN + 6, y + 15);
      } else if (!this.value) {
        ctx.fillStyle = LiteGraph.WIDGET_SECONDARY_TEXT_COLOR;
        ctx.fillText(name, MARGIN + 6, y + 15);
      } else {
        ctx.fillStyle = LiteGraph.WIDGET_TEXT_COLOR;
        const lines = wrapLines(ctx, this.value, width - MARGIN * 2 - 12, maxLines);
        lines.forEach((line, i) => ctx.fillText(line, MARGIN + 6, y + 15 + i * lineH));
      }
      ctx.restore();
    },
    onPointerDown(pointer, n, lgcanvas) {
      if (this.computedDisabled) return false;
      pointer.onClick = () => openTextEditor(lgcanvas, n, this);
      return true;
    },
  };
  return widget;
}

/** Edit a multiline widget in a textarea laid exactly over it; Escape reverts, clicking away keeps. */
export function openTextEditor(lgcanvas, node, widget) {
  closeTextEditor(true);
  const h = Math.max((widget.computedHeight || 64) - 6, 20);
  const rect = graphRectToClient(lgcanvas, node.pos[0] + MARGIN, node.pos[1] + widget.y,
    node.size[0] - MARGIN * 2, h);
  const ta = document.createElement("textarea");
  ta.className = "chisel-text-editor";
  ta.dataset.node = String(node.id);
  ta.dataset.input = widget.name;
  ta.spellcheck = false;
  ta.value = widget.value ?? "";
  const scale = lgcanvas.ds.scale;
  Object.assign(ta.style, {
    left: `${rect.left + window.scrollX}px`, top: `${rect.top + window.scrollY}px`,
    width: `${Math.max(rect.width, 160)}px`, height: `${Math.max(rect.height, 60)}px`,
    fontSize: `${Math.max(12 * scale, 11)}px`,
  });
  document.body.append(ta);
  const original = widget.value;
  const onKey = (e) => {
    e.stopPropagation();
    if (e.key === "Escape") {
      e.preventDefault();
      closeTextEditor(false);
    }
  };
  ta.addEventListener("keydown", onKey);
  ta.addEventListener("input", () => {
    widget.value = ta.value;
    node.setDirtyCanvas(true, false);
  });
  ta.addEventListener("blur", () => {
    // keep focus changes inside the editor (e.g. window switches) from closing it twice
    setTimeout(() => { if (openEditor && openEditor.ta === ta && document.activeElement !== ta) closeTextEditor(true); }, 0);
  });
  openEditor = {
    ta,
    finish(commit) {
      ta.remove();
      const old = original;
      if (!commit) widget.value = old;
      else widget.value = ta.value;
      if (widget.value !== old) node.onWidgetChanged?.(widget.name, widget.value, old, widget);
      node.setDirtyCanvas(true, false);
      lgcanvas.canvas.focus();
    },
  };
  ta.focus();
  ta.setSelectionRange(ta.value.length, ta.value.length);
  return ta;
}

/** An area below a node's widgets that shows images (results or the live sampling preview). */
export function makeImageWidget() {
  return {
    type: "chisel_images",
    name: "$$images",
    value: "",
    serialize: false,
    disabled: true, // not a control: clicks and drags go to the node (double-click opens the picture)
    options: {},
    y: 0,
    images: [], // HTMLImageElement[]
    caption: "",
    computeLayoutSize() {
      return { minHeight: this.images.length ? 120 : 0, minWidth: 100 };
    },
    draw(ctx, node, width, y) {
      const imgs = this.images.filter((im) => im.complete && im.naturalWidth);
      const h = (this.computedHeight || 0) - 4;
      if (!imgs.length || h <= 10) return;
      ctx.save();
      ctx.globalAlpha = 1;
      const cols = Math.ceil(Math.sqrt(imgs.length));
      const rows = Math.ceil(imgs.length / cols);
      const cw = (width - 20) / cols;
      const ch = (h - (this.caption ? 14 : 0)) / rows;
      imgs.forEach((im, i) => {
        const s = Math.min(cw / im.naturalWidth, ch / im.naturalHeight);
        const w = im.naturalWidth * s;
        const hh = im.naturalHeight * s;
        const x = 10 + (i % cols) * cw + (cw - w) / 2;
        const yy = y + Math.floor(i / cols) * ch + (ch - hh) / 2;
        ctx.imageSmoothingEnabled = s < 1 || im.naturalWidth >= 256;
        ctx.drawImage(im, x, yy, w, hh);
      });
      if (this.caption) {
        ctx.fillStyle = "#aaa";
        ctx.font = "11px Arial, sans-serif";
        ctx.textAlign = "center";
        ctx.fillText(this.caption, width / 2, y + h - 2);
      }
      ctx.restore();
    },
  };
}
