// Opening ComfyUI's UI format: the server converts the runnable part (the same rules it runs by). Around that,
// the canvas keeps what the server's conversion has no place for (bypass and mute, notes, seed controls, node
// colours, collapsed nodes) and says plainly what could not be kept.

import { MODE_NAMES } from "./modes.js";

const CONTROLS = ["fixed", "increment", "decrement", "randomize"];

function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

/**
 * Before conversion: a copy of the file for the server (every node active, so bypassed and muted nodes are
 * converted too) and what the canvas keeps itself.
 */
export function prepareComfyUi(data, schemas) {
  const copy = JSON.parse(JSON.stringify(data));
  const kept = { modes: {}, notes: [], controls: {}, looks: {} };
  const lost = [];
  const counts = { reroute: 0, primitive: 0, unknownMode: 0 };
  copy.nodes = (copy.nodes || []).filter((n) => {
    if (!n || typeof n !== "object") return false;
    const id = String(n.id);
    if (n.type === "Note" || n.type === "MarkdownNote") {
      kept.notes.push({
        title: n.title || (n.type === "Note" ? "Note" : "Markdown Note"), text: String(n.widgets_values?.[0] ?? ""),
        pos: Array.isArray(n.pos) ? n.pos : [0, 0], size: Array.isArray(n.size) ? n.size : undefined,
        ...(n.type === "MarkdownNote" ? { markdown: true } : {}), ...(n.color ? { color: n.color } : {}),
        ...(n.bgcolor ? { bgcolor: n.bgcolor } : {}),
      });
      return false;
    }
    if (n.type === "Reroute") counts.reroute++;
    if (n.type === "PrimitiveNode") counts.primitive++;
    if (MODE_NAMES[n.mode]) {
      kept.modes[id] = MODE_NAMES[n.mode];
      n.mode = 0;
    } else if (n.mode && n.mode !== 0) {
      counts.unknownMode++;
    }
    const look = {};
    if (n.color) look.color = n.color;
    if (n.bgcolor) look.bgcolor = n.bgcolor;
    if (n.flags?.collapsed) look.collapsed = true;
    if (Object.keys(look).length) kept.looks[id] = look;
    const schema = schemas[n.type];
    if (schema && Array.isArray(n.widgets_values)) {
      // the value after each seed widget is its "control after generate"
      let i = 0;
      for (const inp of schema.inputs) {
        if (!["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"].includes(inp.type)) continue;
        i++;
        if (!inp.seed) continue;
        const c = n.widgets_values[i];
        if (typeof c === "string" && CONTROLS.includes(c)) {
          (kept.controls[id] ||= {})[inp.name] = c;
          i++;
        }
      }
    }
    return true;
  });
  if (counts.reroute) lost.push(`${plural(counts.reroute, "reroute node")} (now direct links)`);
  if (counts.primitive) lost.push(`${plural(counts.primitive, "primitive node")} (their values are now in the inputs they fed)`);
  if (counts.unknownMode) lost.push(`${plural(counts.unknownMode, "node")} in a mode other than bypass or mute (now active)`);
  return { copy, kept, lost };
}

/** After conversion: put back what the canvas kept. */
export function restoreComfyUi(wf, kept) {
  const layout = (wf.layout ||= {});
  const nodes = (layout.nodes ||= {});
  // a subgraph node is no node of wf.nodes (its inside is): its mode goes to its layout all the same
  for (const [id, mode] of Object.entries(kept.modes)) if (wf.nodes[id] || nodes[id]?.subgraph) (nodes[id] ||= {}).mode = mode;
  for (const [id, look] of Object.entries(kept.looks)) if (wf.nodes[id]) Object.assign((nodes[id] ||= {}), look);
  for (const [id, controls] of Object.entries(kept.controls)) {
    if (wf.nodes[id]) (nodes[id] ||= {}).controls = { ...(nodes[id].controls || {}), ...controls };
  }
  if (kept.notes.length) layout.notes = [...(layout.notes || []), ...kept.notes];
  return wf;
}

/** What a converted ComfyUI API file lost (inputs the nodes here do not have). */
export function apiLosses(wf) {
  const dropped = wf?.meta?.dropped_inputs || [];
  return dropped.length ? [`${plural(dropped.length, "input")} these nodes do not have (${dropped.slice(0, 4).join(", ")}${dropped.length > 4 ? ", …" : ""})`] : [];
}
