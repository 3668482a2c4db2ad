// Notes on the canvas (ComfyUI's Note and MarkdownNote): text boxes that never run. They are saved in the
// workflow's layout ("notes"), not among its nodes, so a file with notes runs unchanged from the CLI.

import { LiteGraph, LGraphNode } from "../vendor/litegraph/litegraph.es.js";
import { makeMultilineWidget } from "./widgets.js";
import { drawMarkdown } from "./markdown.js";

export const NOTE_TYPES = { note: "Note", markdown: "MarkdownNote" };

export class NoteNode extends LGraphNode {
  constructor(title) {
    super(title || "Note", NOTE_TYPES.note);
    this.chisel = { schema: null, status: null, errors: [], images: [], note: true, markdown: false };
    this.textWidget = this.addCustomWidget(makeMultilineWidget(this, "text", "", {}));
    this.color = "#4a4228";
    this.bgcolor = "#5c5233";
    this.size = [300, 140];
  }

  onWidgetChanged() {
    this.graph?.onAfterChange?.(); // an edit: the undo history takes a step
  }

  get text() { return this.textWidget.value; }
  set text(v) { this.textWidget.value = String(v ?? ""); }
}

export class MarkdownNoteNode extends NoteNode {
  constructor(title) {
    super(title || "Markdown Note");
    this.type = NOTE_TYPES.markdown;
    this.chisel.markdown = true;
    const widget = this.textWidget; // drawn rendered (never as HTML); clicking it edits the Markdown text
    widget.draw = (ctx, node, width, y) => drawMarkdown(ctx, node, width, y, widget);
  }
}

export function registerNotes() {
  LiteGraph.registerNodeType(NOTE_TYPES.note, NoteNode);
  NoteNode.title = "Note";
  NoteNode.category = "utils";
  LiteGraph.registerNodeType(NOTE_TYPES.markdown, MarkdownNoteNode);
  MarkdownNoteNode.title = "Markdown Note";
  MarkdownNoteNode.category = "utils";
}

export function isNote(node) {
  return node instanceof NoteNode;
}

/** A note as saved in layout.notes. */
export function noteToLayout(node, round) {
  const out = { title: node.title, text: node.text, pos: [...node.pos].map(round), size: [...node.size].map(round) };
  if (node.chisel.markdown) out.markdown = true;
  if (node.color) out.color = node.color;
  if (node.bgcolor) out.bgcolor = node.bgcolor;
  if (node.flags?.collapsed) out.collapsed = true;
  return out;
}

/** A note node from layout.notes (null for an entry that is not a note). */
export function noteFromLayout(n) {
  if (!n || typeof n !== "object") return null;
  const node = n.markdown || n.type === NOTE_TYPES.markdown ? new MarkdownNoteNode(n.title) : new NoteNode(n.title);
  node.text = typeof n.text === "string" ? n.text : "";
  if (Array.isArray(n.pos)) node.pos = [Number(n.pos[0]) || 0, Number(n.pos[1]) || 0];
  if (Array.isArray(n.size)) node.size = [Math.max(120, Number(n.size[0]) || 300), Math.max(60, Number(n.size[1]) || 140)];
  if (n.color) node.color = n.color;
  if (n.bgcolor) node.bgcolor = n.bgcolor;
  return node;
}
