// Subgraphs: a selection collapsed into one node whose inputs and outputs are the links that crossed the
// selection's edge; opened to edit its inside (double-click it, or its menu) and left by the bar above the canvas.
// Built on LiteGraph's own subgraphs (Subgraph, SubgraphNode, the input/output boundary nodes).
//
// Saved so that the workflow that runs is the flattened one, as ComfyUI names it in a prompt: each inner node is
// "<instance id>:<inner id>" (nested: "5:3:2"), and links are followed through the subgraphs' boundaries. What was
// drawn lives in the layout:
//   layout.subgraphs: [{id, name, inputs: [{name, type}], outputs: [{name, type, link}], input_node, output_node,
//                       nodes: {id: spec as drawn}, layout: {id: node layout}}]
//     (inside, a link from the subgraph's input k is {"node": "-10", "output": k}; an output's link is the inner
//      output that feeds it);
//   layout.nodes[instance]: {pos, size, subgraph: id, inputs: {input: link as drawn}, title?};
//   layout.nodes[node].links[input]: a link drawn into an instance's output (what runs comes from inside it).

import { LiteGraph, SubgraphNode, createUuidv4 } from "../vendor/litegraph/litegraph.es.js";
import { MODE_BY_NAME, MODE_NAMES, MODE_BYPASS, MODE_MUTE, editorInputs, passThroughInput } from "./modes.js";
import { graphToWorkflow } from "./format.js";
import { isNote } from "./notes.js";
import { toast } from "./panels.js";

export const SUBGRAPH_INPUT = -10;
const MAX_DEPTH = 32;

const isLink = (v) => v && typeof v === "object" && !Array.isArray(v) && typeof v.node !== "undefined";
const lgId = (id) => (/^[1-9]\d{0,14}$/.test(String(id)) ? Number(id) : String(id));
const round1 = (x) => Math.round(x * 10) / 10;

// -- node types ------------------------------------------------------------------------------------------------------
/** LiteGraph creates a subgraph's instances by its id as a node type. */
function registerType(subgraph, app) {
  const instanceData = { id: -1, type: subgraph.id, pos: [0, 0], size: [100, 100], inputs: [], outputs: [], flags: {}, order: 0, mode: 0 };
  const cls = class extends SubgraphNode {
    constructor() {
      super(subgraph.rootGraph, subgraph, instanceData);
      // the library's "enter" title button draws an icon font this page does not load: a plain arrow instead
      for (const b of this.title_buttons || []) if (b.name === "enter_subgraph") b.text = "⤵";
    }

    onWidgetChanged() {
      app.onGraphEdited?.(); // a promoted widget's value: an edit
    }
  };
  Object.defineProperty(cls, "title", { value: subgraph.name });
  LiteGraph.registerNodeType(subgraph.id, cls);
}

/** The subgraph definitions the root graph's instances use (nested ones included). */
export function usedSubgraphs(graph) {
  const all = graph.rootGraph?.subgraphs ?? graph.subgraphs;
  if (!all?.size) return [];
  const used = new Map();
  const stack = [graph];
  while (stack.length) {
    const g = stack.pop();
    for (const n of g._nodes) {
      const sg = all.get(n.type);
      if (sg && !used.has(sg.id)) {
        used.set(sg.id, sg);
        stack.push(sg);
      }
    }
  }
  return [...used.values()];
}

/** The nodes of the root graph and of every subgraph's inside. */
export function allNodes(graph) {
  return [graph, ...usedSubgraphs(graph)].flatMap((g) => g._nodes);
}

// -- saving: graph -> flattened workflow -----------------------------------------------------------------------------
function outputLink(sg, k) {
  const id = sg.outputs[k]?.linkIds?.[0];
  const link = id != null ? sg.links.get(id) : null;
  if (!link) return null;
  if (link.origin_id === SUBGRAPH_INPUT) return { node: String(SUBGRAPH_INPUT), output: link.origin_slot };
  const origin = sg.getNodeById(link.origin_id);
  const out = origin?.outputs?.[link.origin_slot];
  if (!out) return null;
  const same = origin.outputs.filter((o) => o.name === out.name).length;
  return { node: String(origin.id), output: same === 1 ? out.name : link.origin_slot };
}

function defFromGraph(sg, scopeFn) {
  const { nodes, layoutNodes, modes, extras } = scopeFn(sg);
  for (const [id, mode] of Object.entries(modes)) if (layoutNodes[id]) layoutNodes[id].mode = MODE_NAMES[mode];
  const bounds = (io) => [...io.boundingRect].map(round1);
  return {
    id: sg.id, name: sg.name,
    inputs: sg.inputs.map((i) => ({ name: i.name, type: String(i.type ?? "*") })),
    outputs: sg.outputs.map((o, k) => ({ name: o.name, type: String(o.type ?? "*"), link: outputLink(sg, k) })),
    input_node: bounds(sg.inputNode), output_node: bounds(sg.outputNode),
    nodes, layout: layoutNodes, ...(extras || {}), // its groups, notes and reroute dots
  };
}

/** A literal that reaches an inner input through a subgraph's boundary (an instance's promoted widget). */
class Value {
  constructor(value) {
    this.value = value;
  }
}

function slotIndex(slots, output) {
  return typeof output === "number" ? output : slots.findIndex((s) => s.name === output);
}

/**
 * The nodes that run, from the root graph's nodes as drawn (instances included) and the subgraph definitions:
 * every instance replaced by its inner nodes (ids prefixed), links followed through the boundaries. A bypassed
 * instance (its layout's mode) runs nothing: each of its outputs passes on its input of the same type, as a
 * bypassed node does; a muted one's inner nodes are all muted (they and what needs them do not run).
 * rootLayout: the root graph's node layouts (an instance's mode). Returns {nodes, modes}: modes of inner nodes by
 * their flattened id.
 */
export function flattenNodes(rootNodes, defs, rootLayout = {}) {
  const out = {};
  const modes = {};
  const defOf = (spec) => (spec ? defs[spec.type] : undefined);
  const modeOf = (scope, id) => MODE_BY_NAME[scope.layout?.[id]?.mode];
  const inside = (spec, id, scope) => {
    const def = defs[spec.type];
    return {
      nodes: def.nodes || {}, layout: def.layout || {}, prefix: `${scope.prefix}${id}:`, depth: scope.depth + 1,
      muted: scope.muted || modeOf(scope, id) === MODE_MUTE,
      boundary: (def.inputs || []).map((i) => {
        const v = spec.inputs?.[i.name];
        if (isLink(v)) return resolve(v, scope);
        return v === undefined ? null : new Value(v); // a promoted widget's value
      }),
    };
  };
  function resolve(link, scope, hops = 0) {
    if (scope.depth > MAX_DEPTH || hops > 1000) return null;
    if (String(link.node) === String(SUBGRAPH_INPUT)) return scope.boundary?.[Number(link.output)] ?? null;
    const spec = scope.nodes[link.node];
    const def = defOf(spec);
    if (def && modeOf(scope, String(link.node)) === MODE_BYPASS) {
      // a bypassed subgraph node: the output takes its input of the same type (the same position first)
      const name = passThroughInput({ inputs: def.inputs || [], outputs: def.outputs || [] }, link.output);
      const v = name != null ? spec.inputs?.[name] : undefined;
      return isLink(v) ? resolve(v, scope, hops + 1) : null;
    }
    if (def) {
      const inner = def.outputs?.[slotIndex(def.outputs, link.output)]?.link;
      return inner ? resolve(inner, inside(spec, String(link.node), scope)) : null;
    }
    return { node: `${scope.prefix}${link.node}`, output: link.output };
  }
  function emit(scope) {
    if (scope.depth > MAX_DEPTH) return;
    for (const [id, spec] of Object.entries(scope.nodes)) {
      if (defOf(spec)) {
        if (modeOf(scope, id) !== MODE_BYPASS) emit(inside(spec, id, scope));
        continue;
      }
      const inputs = {};
      for (const [name, v] of Object.entries(spec.inputs || {})) {
        if (!isLink(v)) inputs[name] = v;
        else {
          const r = resolve(v, scope);
          if (r instanceof Value) inputs[name] = r.value;
          else if (r) inputs[name] = r;
        }
      }
      out[`${scope.prefix}${id}`] = { ...spec, inputs };
      const mode = scope.muted ? MODE_MUTE : modeOf(scope, id);
      if (scope.depth && mode) modes[`${scope.prefix}${id}`] = mode;
    }
  }
  // the root graph's own nodes' modes are applied by the caller; only its instances' count here
  const instancesOnly = Object.fromEntries(Object.entries(rootLayout || {}).filter(([id]) => defOf(rootNodes[id])));
  emit({ nodes: rootNodes, layout: instancesOnly, prefix: "", boundary: null, depth: 0, muted: false });
  return { nodes: out, modes };
}

/**
 * Turn wf (its nodes: the root graph's as drawn, instances included) into the flattened workflow with the drawn
 * structure in its layout. Returns a function that writes the links drawn into instances' outputs (call it after
 * the modes have been applied: those links are the ones drawn, whatever runs).
 */
export function flattenJson(wf, defList) {
  const defs = Object.fromEntries(defList.map((d) => [d.id, d]));
  const drawnRoot = wf.nodes;
  const { nodes, modes } = flattenNodes(drawnRoot, defs, wf.layout?.nodes);
  wf.nodes = nodes;
  if (!wf.layout) return { modes, drawn: () => {} };
  const lay = (wf.layout.nodes ||= {});
  for (const [id, spec] of Object.entries(drawnRoot)) {
    if (!defs[spec.type]) continue;
    const entry = (lay[id] ||= {});
    entry.subgraph = spec.type;
    entry.inputs = { ...(spec.inputs || {}) }; // links as drawn, and promoted widgets' values
    if (spec.title) entry.title = spec.title;
  }
  wf.layout.subgraphs = defList;
  const drawn = () => {
    for (const [id, spec] of Object.entries(drawnRoot)) {
      if (defs[spec.type]) continue;
      for (const [name, v] of Object.entries(spec.inputs || {})) {
        if (isLink(v) && defs[drawnRoot[v.node]?.type]) ((lay[id] ||= {}).links ||= {})[name] = v;
      }
    }
  };
  return { modes, drawn };
}

/** A node of the graph (or inside its subgraphs) by its flattened id. */
export function nodeAtPath(graph, id) {
  const parts = String(id).split(":");
  let g = graph;
  for (let i = 0; i < parts.length - 1; i++) {
    const inst = g.getNodeById(lgId(parts[i]));
    if (!inst?.subgraph) return g.getNodeById(lgId(id));
    g = inst.subgraph;
  }
  return g.getNodeById(lgId(parts.at(-1)));
}

/** graphToWorkflow's part for a graph with subgraphs (wf.nodes: the root graph's nodes as drawn). */
export function flattenSubgraphs(wf, graph, scopeFn, rootModes) {
  const defList = usedSubgraphs(graph).map((sg) => defFromGraph(sg, scopeFn));
  // a subgraph node's own bypass or mute: kept in its layout, applied as its inside is flattened
  for (const [id, mode] of Object.entries(rootModes)) {
    if (wf.layout?.nodes?.[id] && defList.some((d) => d.id === wf.nodes[id]?.type)) wf.layout.nodes[id].mode = MODE_NAMES[mode];
  }
  const { modes, drawn } = flattenJson(wf, defList);
  const all = { ...modes };
  for (const [id, mode] of Object.entries(rootModes)) if (wf.nodes[id]) all[id] = mode;
  return { modes: all, byId: (id) => nodeAtPath(graph, id), drawn };
}

// -- loading: flattened workflow -> graph ----------------------------------------------------------------------------
function validDef(d) {
  return d && typeof d === "object" && typeof d.id === "string" && d.id && d.nodes && typeof d.nodes === "object"
    && Array.isArray(d.inputs ?? []) && Array.isArray(d.outputs ?? []);
}

/**
 * The drawn structure of a saved workflow: {nodes, layout} of the root graph (instances as nodes of their
 * subgraph's type) and the subgraph definitions. nodes: the saved nodes with their drawn links already merged.
 */
export function nestedScopes(saved, nodes, problems) {
  const layNodes = saved.layout?.nodes || {};
  const list = Array.isArray(saved.layout?.subgraphs) ? saved.layout.subgraphs : [];
  if (!list.length) return { nodes, layout: layNodes, subgraphs: [] };
  const defs = {};
  for (const d of list) {
    if (validDef(d)) defs[d.id] = JSON.parse(JSON.stringify(d));
    else problems.push({ text: "a subgraph in the file could not be read; it was left out." });
  }
  const instances = Object.keys(layNodes).filter((id) => defs[layNodes[id]?.subgraph]);
  const inner = (id) => instances.some((p) => String(id).startsWith(`${p}:`));
  const root = {};
  for (const [id, spec] of Object.entries(nodes)) if (!inner(id)) root[id] = spec;
  const seeded = new Set();
  for (const p of instances) {
    if (inner(p)) continue;
    const l = layNodes[p];
    root[p] = { type: l.subgraph, inputs: { ...(l.inputs || {}) }, ...(l.title ? { title: l.title } : {}) };
    // the values that run (e.g. a seed moved on) are those of the flattened nodes: the first instance's
    const def = defs[l.subgraph];
    if (seeded.has(def.id)) continue;
    seeded.add(def.id);
    for (const [i, spec] of Object.entries(def.nodes)) {
      const flat = saved.nodes[`${p}:${i}`];
      if (!flat || defs[spec.type]) continue;
      for (const [name, v] of Object.entries(flat.inputs || {})) {
        if (!isLink(v) && !isLink(spec.inputs?.[name])) (spec.inputs ||= {})[name] = v; // drawn links stay
      }
    }
  }
  return { nodes: root, layout: layNodes, subgraphs: Object.values(defs) };
}

/** The drawn structure of a saved workflow (see nestedScopes), its drawn links merged. */
export function scopesOf(saved) {
  const lay = saved.layout?.nodes || {};
  const nodes = {};
  for (const [id, spec] of Object.entries(saved.nodes)) nodes[id] = { ...spec, inputs: editorInputs(spec, lay[id]) };
  return nestedScopes(saved, nodes, []);
}

/** Create the subgraph definitions in the (cleared) root graph and fill each with its nodes. */
export function buildSubgraphs(graph, defs, populate, decorate, problems) {
  const made = [];
  for (const d of defs) {
    const io = (b, x) => ({ bounding: Array.isArray(b) && b.length === 4 ? b.map(Number) : [x, 0, 120, 60] });
    const slot = (s) => ({ id: createUuidv4(), name: String(s.name ?? ""), type: String(s.type ?? "*"), linkIds: [] });
    const data = {
      id: d.id, name: typeof d.name === "string" && d.name ? d.name : "Subgraph", version: 1, revision: 0, config: {},
      state: { lastNodeId: 0, lastLinkId: 0, lastGroupId: 0, lastRerouteId: 0 },
      inputNode: { id: SUBGRAPH_INPUT, ...io(d.input_node, -200) }, outputNode: { id: -20, ...io(d.output_node, 600) },
      inputs: (d.inputs || []).map(slot), outputs: (d.outputs || []).map(slot), widgets: [],
      nodes: [], links: [], groups: [], reroutes: [],
    };
    made.push([d, graph.createSubgraph(data)]); // its node type: see Subgraphs.bind

  }
  for (const [d, sg] of made) {
    const created = populate(sg, d.nodes, d.layout || {});
    (d.outputs || []).forEach((o, k) => {
      if (!isLink(o.link)) return;
      const src = created[String(o.link.node)];
      const i = src ? (typeof o.link.output === "number" ? o.link.output : src.findOutputSlot(String(o.link.output))) : -1;
      if (src && i >= 0 && src.outputs[i]) sg.outputs[k].connect(src.outputs[i], src);
      else problems.push({ text: `the output “${o.name}” of subgraph “${sg.name}” could not be connected.` });
    });
    decorate(sg, d, created); // its groups, notes and reroute dots
  }
}

/** Edits inside a subgraph are edits of the workflow (undo steps, autosave), as on the root graph. */
function hookEdits(sg, root) {
  sg.onAfterChange = () => root.onAfterChange?.();
  sg.onNodeAdded = () => root.onNodeAdded?.();
  sg.onNodeRemoved = () => root.onNodeRemoved?.();
}

// -- creating a subgraph from a selection ----------------------------------------------------------------------------
function typeOfInput(app, scope, id, name) {
  const spec = scope.nodes[id];
  const def = scope.defs[spec?.type];
  if (def) return def.inputs.find((i) => i.name === name)?.type ?? "*";
  return app.schemas[spec?.type]?.inputs?.find((i) => i.name === name)?.type ?? "*";
}

function outputSlot(app, scope, link) {
  const spec = scope.nodes[link.node];
  const def = scope.defs[spec?.type];
  const outs = def ? def.outputs : app.schemas[spec?.type]?.outputs || [];
  const k = slotIndex(outs, link.output);
  return { name: String(outs[k]?.name ?? link.output), type: String(outs[k]?.type ?? "*") };
}

function uniqueName(taken, name) {
  let n = name || "value";
  for (let i = 2; taken.has(n); i++) n = `${name} ${i}`;
  taken.add(n);
  return n;
}

/**
 * The drawn structure with the selected nodes of one graph (the root, or a subgraph's inside) moved into a new
 * subgraph; links that crossed the selection's edge become the new subgraph's inputs and outputs.
 */
export function collapse(app, scopes, graphId, selected, instanceId, name) {
  const defs = Object.fromEntries(scopes.subgraphs.map((d) => [d.id, d]));
  const host = graphId == null ? null : defs[graphId];
  const scope = host ? { nodes: host.nodes, layout: (host.layout ||= {}), defs } : { nodes: scopes.nodes, layout: scopes.layout, defs };
  const sel = new Set(selected.map(String));
  const def = { id: createUuidv4(), name, inputs: [], outputs: [], nodes: {}, layout: {} };
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const id of sel) {
    def.nodes[id] = JSON.parse(JSON.stringify(scope.nodes[id]));
    const l = { ...(scope.layout[id] || {}) };
    delete l.links;
    def.layout[id] = l;
    const [x, y] = l.pos || [0, 0];
    const [w, h] = l.size || [200, 100];
    x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
  }
  const instance = { type: def.id, inputs: {} };
  const inNames = new Set(), outNames = new Set();
  const inputFor = new Map(); // an outside source -> the subgraph input it comes through
  for (const id of sel) {
    for (const [input, v] of Object.entries(def.nodes[id].inputs || {})) {
      if (!isLink(v) || sel.has(String(v.node))) continue;
      const key = JSON.stringify([String(v.node), v.output]);
      if (!inputFor.has(key)) {
        const slotName = uniqueName(inNames, input);
        inputFor.set(key, def.inputs.length);
        def.inputs.push({ name: slotName, type: typeOfInput(app, scope, id, input) });
        instance.inputs[slotName] = v;
      }
      def.nodes[id].inputs[input] = { node: String(SUBGRAPH_INPUT), output: inputFor.get(key) };
    }
  }
  const outputFor = new Map();
  const exposeOutput = (v) => {
    const key = JSON.stringify([String(v.node), v.output]);
    if (!outputFor.has(key)) {
      const { name: outName, type } = outputSlot(app, scope, v);
      const slotName = uniqueName(outNames, outName);
      outputFor.set(key, slotName);
      def.outputs.push({ name: slotName, type, link: { node: String(v.node), output: v.output } });
    }
    return { node: instanceId, output: outputFor.get(key) };
  };
  for (const [id, spec] of Object.entries(scope.nodes)) {
    if (sel.has(id)) continue;
    for (const [input, v] of Object.entries(spec.inputs || {})) {
      if (isLink(v) && sel.has(String(v.node))) spec.inputs[input] = exposeOutput(v);
    }
  }
  if (host) host.outputs.forEach((o) => { if (isLink(o.link) && sel.has(String(o.link.node))) o.link = exposeOutput(o.link); });
  for (const id of sel) {
    delete scope.nodes[id];
    delete scope.layout[id];
  }
  scope.nodes[instanceId] = instance;
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  scope.layout[instanceId] = { pos: [round1(cx - 110), round1(cy - 40)] };
  def.input_node = [round1(x0 - 200), round1(cy - 40), 120, 80];
  def.output_node = [round1(x1 + 80), round1(cy - 40), 120, 80];
  scopes.subgraphs.push(def);
  return def;
}

/**
 * The drawn structure with a subgraph node replaced by the nodes inside it (ids that are taken get new numbers),
 * its inputs' links and values going straight to the inner inputs they fed. Returns {old id: new id}.
 */
export function unpack(scopes, graphId, instanceId) {
  const defs = Object.fromEntries(scopes.subgraphs.map((d) => [d.id, d]));
  const host = graphId == null ? null : defs[graphId];
  const scope = host ? { nodes: host.nodes, layout: (host.layout ||= {}) } : { nodes: scopes.nodes, layout: scopes.layout };
  const inst = scope.nodes[instanceId];
  const def = defs[inst?.type];
  if (!def) return null;
  let next = Math.max(0, ...Object.keys(scope.nodes).map(Number).filter(Number.isFinite)) + 1;
  const ids = {};
  for (const i of Object.keys(def.nodes)) ids[i] = i in scope.nodes ? String(next++) : i;
  const outer = (k) => inst.inputs?.[def.inputs[Number(k)]?.name]; // what fed the subgraph's input k
  const mapLink = (v) => {
    if (String(v.node) === String(SUBGRAPH_INPUT)) return outer(v.output);
    return ids[String(v.node)] != null ? { ...v, node: ids[String(v.node)] } : undefined;
  };
  const lay = def.layout || {};
  const pts = Object.keys(def.nodes).map((i) => lay[i]?.pos || [0, 0]);
  const x0 = Math.min(...pts.map((p) => p[0])), y0 = Math.min(...pts.map((p) => p[1]));
  const [px, py] = scope.layout[instanceId]?.pos || [x0, y0];
  for (const [i, spec] of Object.entries(def.nodes)) {
    const inputs = {};
    for (const [name, v] of Object.entries(spec.inputs || {})) {
      const m = isLink(v) ? mapLink(v) : v;
      if (m !== undefined) inputs[name] = m;
    }
    scope.nodes[ids[i]] = { ...JSON.parse(JSON.stringify(spec)), inputs: JSON.parse(JSON.stringify(inputs)) };
    const l = { ...(lay[i] || {}) };
    delete l.reroutes; // the dots stay with the subgraph's inside
    const [x, y] = l.pos || [0, 0];
    l.pos = [round1(px + x - x0), round1(py + y - y0)];
    scope.layout[ids[i]] = l;
  }
  // its notes and groups come along, moved as its nodes are (into the host subgraph's entry, or the root's layout)
  const extras = host || (scopes.extras ||= {});
  const dx = px - x0, dy = py - y0;
  for (const n of Array.isArray(def.notes) ? def.notes : []) {
    const pos = Array.isArray(n?.pos) ? [round1(Number(n.pos[0]) + dx), round1(Number(n.pos[1]) + dy)] : n?.pos;
    (extras.notes ||= []).push({ ...n, pos });
  }
  for (const g of Array.isArray(def.groups) ? def.groups : []) {
    const b = Array.isArray(g?.bounding) && g.bounding.length === 4 ? g.bounding.map(Number) : null;
    (extras.groups ||= []).push(b ? { ...g, bounding: [round1(b[0] + dx), round1(b[1] + dy), b[2], b[3]] } : g);
  }
  const mapOutput = (v) => {
    const link = def.outputs?.[slotIndex(def.outputs, v.output)]?.link;
    return isLink(link) ? mapLink(link) : undefined;
  };
  for (const [id, spec] of Object.entries(scope.nodes)) {
    for (const [name, v] of Object.entries(spec.inputs || {})) {
      if (!isLink(v) || String(v.node) !== String(instanceId)) continue;
      const m = mapOutput(v);
      if (m === undefined) delete spec.inputs[name];
      else spec.inputs[name] = m;
    }
  }
  if (host) host.outputs.forEach((o) => { if (isLink(o.link) && String(o.link.node) === String(instanceId)) o.link = mapOutput(o.link) ?? null; });
  delete scope.nodes[instanceId];
  delete scope.layout[instanceId];
  return ids;
}

// -- the app's side: commands, menus, the bar above the canvas -----------------------------------------------------
export class Subgraphs {
  constructor(app) {
    this.app = app;
    this.stack = []; // the graphs left on the way in (root first)
  }

  bind() {
    // every subgraph made (loaded, converted, pasted, Alt-dragged) gets its node type, and its edits count
    this.app.graph.events.addEventListener("subgraph-created", (e) => {
      registerType(e.detail.subgraph, this.app);
      hookEdits(e.detail.subgraph, this.app.graph);
    });
    const canvasEl = this.app.lgcanvas.canvas;
    this.bar = document.createElement("nav");
    this.bar.id = "subgraph-bar";
    this.bar.setAttribute("aria-label", "Subgraph you are editing");
    this.bar.hidden = true;
    canvasEl.parentElement.appendChild(this.bar);
    document.addEventListener("keydown", (e) => {
      // Esc on the canvas (or nowhere in particular) leaves the subgraph; dialogs and fields keep their own Esc
      if (e.key !== "Escape" || e.defaultPrevented || (e.target !== canvasEl && e.target !== document.body)) return;
      if (this.current) {
        e.preventDefault();
        this.leave();
      }
    });
    canvasEl.addEventListener("subgraph-opened", (e) => {
      this.openedAt = performance.now();
      this.stack.push(e.detail.closingGraph);
      this.app.lgcanvas.deselectAll?.();
      this.render();
      this.app.fitView();
    });
  }

  /** Whether a subgraph was opened a moment ago (the double-click that opened it is not one on its inside). */
  justOpened() {
    return performance.now() - (this.openedAt ?? -Infinity) < 600;
  }

  get current() {
    const g = this.app.lgcanvas.graph;
    return g === this.app.graph ? null : g;
  }

  /** Ids of the instances entered, root first (to come back to the same place after a reload). */
  path() {
    const ids = [];
    const graphs = [...this.stack, this.current].filter(Boolean);
    for (let i = 0; i + 1 < graphs.length; i++) {
      const inst = graphs[i]._nodes.find((n) => n.subgraph === graphs[i + 1]);
      if (!inst) return [];
      ids.push(inst.id);
    }
    return ids;
  }

  render() {
    const bar = this.bar;
    bar.replaceChildren();
    const graphs = [...this.stack, this.current].filter(Boolean);
    if (graphs.length <= 1) {
      bar.hidden = true;
      return;
    }
    bar.hidden = false;
    const back = document.createElement("button");
    back.textContent = "← Back";
    back.className = "subgraph-back";
    back.title = "Leave the subgraph (Esc)";
    back.addEventListener("click", () => this.leave());
    bar.appendChild(back);
    graphs.forEach((g, i) => {
      if (i) bar.appendChild(Object.assign(document.createElement("span"), { textContent: "›", className: "sep" }));
      const crumb = document.createElement("button");
      crumb.className = "crumb";
      crumb.textContent = i === 0 ? "Workflow" : g.name;
      if (i === graphs.length - 1) {
        crumb.setAttribute("aria-current", "location");
        crumb.title = "Rename this subgraph";
        crumb.addEventListener("click", (e) => this.rename(g, e));
      } else {
        crumb.addEventListener("click", () => this.leave(graphs.length - 1 - i));
      }
      bar.appendChild(crumb);
    });
  }

  /** Give a subgraph a new name (its nodes that showed the old name show the new one). */
  rename(sg, e) {
    this.app.lgcanvas.prompt("Subgraph name", sg.name, (v) => {
      const name = String(v ?? "").trim();
      if (!name || name === sg.name) return;
      for (const n of this.app.allNodes()) if (n.subgraph === sg && n.title === sg.name) n.title = name;
      sg.name = name;
      this.render();
      this.app.edited();
    }, e);
  }

  /** Back out of `levels` subgraphs (all the way with Infinity). */
  leave(levels = 1) {
    let target = null;
    for (let i = 0; i < levels && this.stack.length; i++) target = this.stack.pop();
    if (!target) return;
    this.app.lgcanvas.setGraph(target);
    this.render();
    this.app.fitView();
  }

  open(node) {
    if (node?.subgraph) this.app.lgcanvas.openSubgraph(node.subgraph);
  }

  /** After the whole graph was rebuilt (undo, redo, open): back at the root, or in the same subgraph if it exists. */
  afterLoad(path) {
    this.stack = [];
    if (this.app.lgcanvas.graph !== this.app.graph) this.app.lgcanvas.setGraph(this.app.graph);
    let g = this.app.graph;
    for (const id of path || []) {
      const inst = g.getNodeById(id);
      if (!inst?.subgraph) break;
      this.stack.push(g);
      this.app.lgcanvas.setGraph(inst.subgraph);
      g = inst.subgraph;
    }
    this.render();
  }

  /** Show the graph that holds a node given by its flattened id (opening its subgraphs). */
  reveal(id) {
    const parts = String(id).split(":");
    const path = [];
    let g = this.app.graph;
    for (const part of parts.slice(0, -1)) {
      const inst = g.getNodeById(lgId(part));
      if (!inst?.subgraph) return;
      path.push(inst.id);
      g = inst.subgraph;
    }
    if (g !== this.app.lgcanvas.graph) this.afterLoad(path);
  }

  /** Collapse the selected nodes of the graph shown into a new subgraph node. */
  createFromSelection(name = "Subgraph") {
    const app = this.app;
    const graph = app.lgcanvas.graph;
    const nodes = app.selectedNodes().filter((n) => !isNote(n) && n.graph === graph);
    if (!nodes.length) {
      toast("Select the nodes to put in a subgraph first.", "warn");
      return null;
    }
    const instanceId = String(Math.max(graph.state.lastNodeId, ...graph._nodes.map((n) => Number(n.id) || 0)) + 1);
    let def;
    this.restructure((scopes) => {
      def = collapse(app, scopes, this.current?.id ?? null, nodes.map((n) => String(n.id)), instanceId, name);
    });
    const inst = app.lgcanvas.graph.getNodeById(lgId(instanceId));
    if (inst) app.lgcanvas.selectNode(inst);
    return def.id;
  }

  /** Put the nodes inside a subgraph node back in its place. */
  unpackNode(node) {
    if (!node?.subgraph) return;
    this.restructure((scopes) => unpack(scopes, this.current?.id ?? null, String(node.id)));
  }

  /** Change the drawn structure (root graph and subgraphs as JSON) and put the result on the canvas: one step. */
  restructure(change) {
    const app = this.app;
    const saved = graphToWorkflow(app.graph);
    const scopes = scopesOf(saved);
    for (const l of Object.values(scopes.layout)) delete l.links; // the nodes below hold the links drawn
    scopes.extras = { notes: [...(saved.layout.notes || [])], groups: [...(saved.layout.groups || [])] }; // the root's
    const path = this.path();
    change(scopes);
    // the drawn structure as a saved workflow (modes apply again once it is on the canvas)
    const wf = { ...saved, nodes: scopes.nodes, layout: { ...saved.layout, ...scopes.extras, nodes: scopes.layout } };
    delete wf.outputs;
    delete wf.layout.subgraphs;
    if (scopes.subgraphs.length) flattenJson(wf, scopes.subgraphs).drawn();
    app.loadWorkflow(wf, { history: false, keepView: true, quiet: true });
    this.afterLoad(path);
    app.history.check({ force: true });
  }

  /** Node menu entries: collapse the selection; open a subgraph node. */
  menu(node, targets) {
    const opts = [];
    if (node.subgraph) {
      opts.push({ content: "Open subgraph", callback: () => this.open(node) },
        { content: "Unpack subgraph", callback: () => this.unpackNode(node) });
    }
    opts.push({ content: `Convert to subgraph${targets.length > 1 ? ` (${targets.length} nodes)` : ""}`, callback: () => this.createFromSelection() });
    return opts;
  }
}
