// Markdown notes drawn on the canvas: a small subset (headings, paragraphs, bullet and numbered lists, block quotes,
// fenced code, rules; bold, italic, inline code, links) parsed into styled runs of plain text and painted with the
// canvas's text calls. Nothing is ever handed to the page as HTML, so markup in a note (<script>, <img onerror>, ...)
// shows as the characters it is; links and images are shown, never followed or fetched.

import { LiteGraph } from "../vendor/litegraph/litegraph.es.js";

const MARGIN = 15; // as the text widgets
const FONT = "Arial, sans-serif";
const MONO = "ui-monospace, Menlo, Consolas, monospace";
const SIZES = { h1: 20, h2: 17, h3: 15, p: 12.5, li: 12.5, quote: 12.5, code: 12 };

/** Inline runs of a line: [{text, bold, italic, code, link}] (link: the target, shown only in the text's style). */
export function parseInline(text) {
  const runs = [];
  const push = (t, style) => {
    if (!t) return;
    const last = runs[runs.length - 1];
    if (last && !last.code && !style.code && last.bold === !!style.bold && last.italic === !!style.italic && last.link === (style.link || null)) {
      last.text += t;
    } else runs.push({ text: t, bold: !!style.bold, italic: !!style.italic, code: !!style.code, link: style.link || null });
  };
  const walk = (s, style) => {
    let i = 0;
    let plain = "";
    const flush = () => { push(plain, style); plain = ""; };
    while (i < s.length) {
      const c = s[i];
      if (c === "\\" && i + 1 < s.length && /[\\`*_[\]()#!>-]/.test(s[i + 1])) {
        plain += s[i + 1];
        i += 2;
        continue;
      }
      if (c === "`") {
        const end = s.indexOf("`", i + 1);
        if (end > i) {
          flush();
          push(s.slice(i + 1, end), { ...style, code: true });
          i = end + 1;
          continue;
        }
      }
      const image = c === "!" && s[i + 1] === "[";
      if (c === "[" || image) {
        const open = image ? i + 1 : i;
        const close = s.indexOf("]", open + 1);
        const m = close > open && s[close + 1] === "(" ? /^\(([^()\s]*)(?:\s+"[^"]*")?\)/.exec(s.slice(close + 1)) : null;
        if (m) {
          flush();
          const label = s.slice(open + 1, close);
          if (image) push(`[image: ${label || m[1]}]`, { ...style, italic: true });
          else walk(label, { ...style, link: m[1] });
          i = close + 1 + m[0].length;
          continue;
        }
      }
      if (c === "*" || c === "_") {
        const strong = s[i + 1] === c;
        const mark = strong ? c + c : c;
        const end = s.indexOf(mark, i + mark.length);
        // an opening mark is followed by a non-space; "_" inside a word (snake_case) is text
        const opens = end > i + mark.length && s[i + mark.length] !== " " && !(c === "_" && /\w/.test(s[i - 1] || ""));
        if (opens) {
          flush();
          walk(s.slice(i + mark.length, end), strong ? { ...style, bold: true } : { ...style, italic: true });
          i = end + mark.length;
          continue;
        }
      }
      plain += c;
      i++;
    }
    flush();
  };
  walk(text, {});
  return runs;
}

/** Blocks of a note: [{kind: h1|h2|h3|p|li|quote|code|hr, runs, bullet?}]. */
export function parseMarkdown(text) {
  const blocks = [];
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  let para = null;
  const endPara = () => { para = null; };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (/^\s*```/.test(line)) { // fenced code: its lines as they are
      endPara();
      const code = [];
      for (i++; i < lines.length && !/^\s*```/.test(lines[i]); i++) code.push(lines[i]);
      blocks.push({ kind: "code", runs: [{ text: code.join("\n"), code: true, bold: false, italic: false, link: null }] });
      continue;
    }
    if (!line.trim()) { endPara(); continue; }
    let m;
    if ((m = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line))) {
      endPara();
      blocks.push({ kind: `h${Math.min(3, m[1].length)}`, runs: parseInline(m[2]) });
    } else if (/^\s{0,3}([-*_])(\s*\1){2,}\s*$/.test(line)) {
      endPara();
      blocks.push({ kind: "hr", runs: [] });
    } else if ((m = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/.exec(line))) {
      endPara();
      const bullet = /\d/.test(m[2]) ? m[2] : "•";
      blocks.push({ kind: "li", bullet, indent: Math.min(3, Math.floor(m[1].length / 2)), runs: parseInline(m[3]) });
    } else if ((m = /^\s{0,3}>\s?(.*)$/.exec(line))) {
      endPara();
      blocks.push({ kind: "quote", runs: parseInline(m[1]) });
    } else if (para) {
      para.runs.push(...parseInline(" " + line.trim()));
    } else {
      para = { kind: "p", runs: parseInline(line.trim()) };
      blocks.push(para);
    }
  }
  return blocks;
}

function fontOf(kind, run) {
  const size = SIZES[kind] || SIZES.p;
  if (run.code || kind === "code") return `${size}px ${MONO}`;
  const bold = run.bold || kind.startsWith("h");
  return `${run.italic ? "italic " : ""}${bold ? "bold " : ""}${size}px ${FONT}`;
}

/** Lines to draw: [{y, h, x0, kind, bullet?, items: [{x, text, font, run}]}], wrapped to `width`. */
export function layoutMarkdown(ctx, blocks, width) {
  const lines = [];
  let y = 0;
  for (const b of blocks) {
    const size = SIZES[b.kind] || SIZES.p;
    const lineH = Math.round(size * 1.35);
    if (b.kind === "hr") {
      lines.push({ y, h: 10, x0: 0, kind: "hr", items: [] });
      y += 10;
      continue;
    }
    const x0 = b.kind === "li" ? 16 + (b.indent || 0) * 14 : b.kind === "quote" || b.kind === "code" ? 10 : 0;
    let line = { y, h: lineH, x0, kind: b.kind, bullet: b.bullet, items: [] };
    let x = x0;
    const newLine = () => {
      lines.push(line);
      y += lineH;
      line = { y, h: lineH, x0, kind: b.kind, items: [] };
      x = x0;
    };
    for (const run of b.runs) {
      const font = fontOf(b.kind, run);
      ctx.font = font;
      // code keeps its line breaks; other text wraps at spaces (a word longer than the line is cut)
      const pieces = b.kind === "code" ? run.text.split(/(\n)/) : run.text.split(/(\s+)/);
      for (const piece of pieces) {
        if (piece === "\n") { newLine(); continue; }
        if (!piece) continue;
        let w = ctx.measureText(piece).width;
        if (x + w > width && x > x0) {
          if (/^\s+$/.test(piece)) continue;
          newLine();
        }
        if (/^\s+$/.test(piece) && x === x0) continue;
        let text = piece;
        while (w > width - x0 && text.length > 1) { // a very long word: as much as fits
          text = text.slice(0, -1);
          w = ctx.measureText(text).width;
        }
        line.items.push({ x, text, font, run });
        x += w;
      }
    }
    lines.push(line);
    y += lineH + (b.kind.startsWith("h") ? 4 : 3);
  }
  return lines;
}

/** A Markdown note's text widget draws the rendered note (clicking it still edits the text). */
export function drawMarkdown(ctx, node, width, y, widget) {
  const h = Math.max((widget.computedHeight || 64) - 6, 20);
  const innerW = width - MARGIN * 2 - 16;
  ctx.save();
  ctx.fillStyle = LiteGraph.WIDGET_BGCOLOR;
  ctx.strokeStyle = LiteGraph.WIDGET_OUTLINE_COLOR;
  ctx.beginPath();
  ctx.roundRect(MARGIN, y, width - MARGIN * 2, h, 6);
  ctx.fill();
  ctx.stroke();
  ctx.beginPath();
  ctx.rect(MARGIN, y, width - MARGIN * 2, h);
  ctx.clip();
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
  const text = widget.value || "";
  if (!text.trim()) {
    ctx.font = `12px ${FONT}`;
    ctx.fillStyle = LiteGraph.WIDGET_SECONDARY_TEXT_COLOR;
    ctx.fillText("Markdown: # heading, **bold**, *italic*, - list, `code`", MARGIN + 8, y + 17);
    widget.rendered = [];
    ctx.restore();
    return;
  }
  if (widget.renderedFor !== text || widget.renderedWidth !== innerW) {
    widget.rendered = layoutMarkdown(ctx, parseMarkdown(text), innerW);
    widget.renderedFor = text;
    widget.renderedWidth = innerW;
  }
  const left = MARGIN + 8;
  const top = y + 6;
  for (const line of widget.rendered) {
    if (line.y > h) break;
    const base = top + line.y + line.h * 0.78;
    if (line.kind === "hr") {
      ctx.fillStyle = LiteGraph.WIDGET_OUTLINE_COLOR;
      ctx.fillRect(left, top + line.y + 4, innerW, 1);
      continue;
    }
    if (line.kind === "quote" || line.kind === "code") {
      ctx.fillStyle = line.kind === "code" ? "rgba(127,127,127,.18)" : LiteGraph.WIDGET_OUTLINE_COLOR;
      ctx.fillRect(left + (line.kind === "code" ? 4 : 2), top + line.y, line.kind === "code" ? innerW - 4 : 3, line.h);
    }
    if (line.bullet) {
      ctx.font = `${SIZES.li}px ${FONT}`;
      ctx.fillStyle = LiteGraph.WIDGET_SECONDARY_TEXT_COLOR;
      ctx.fillText(line.bullet, left + line.x0 - (line.bullet === "•" ? 10 : ctx.measureText(line.bullet).width + 4), base);
    }
    for (const it of line.items) {
      ctx.font = it.font;
      ctx.fillStyle = it.run.link ? "#7aa2f7" : LiteGraph.WIDGET_TEXT_COLOR;
      if (it.run.code && line.kind !== "code") {
        const w = ctx.measureText(it.text).width;
        ctx.save();
        ctx.fillStyle = "rgba(127,127,127,.22)";
        ctx.fillRect(left + it.x - 2, top + line.y + 1, w + 4, line.h - 2);
        ctx.restore();
      }
      ctx.fillText(it.text, left + it.x, base);
      if (it.run.link) ctx.fillRect(left + it.x, base + 2, ctx.measureText(it.text).width, 1);
    }
  }
  ctx.restore();
}
