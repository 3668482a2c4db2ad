// The one place that converts between LiteGraph's graph and Chisel's native workflow JSON:
//   {"format": "chisel-workflow", "version": 1, "nodes": {id: {type, inputs, title?}},
//    "layout": {"nodes": {id: {pos, size, collapsed?, color?, bgcolor?, controls?, mode?, links?, reroutes?}},
//               "groups": [...], "notes": [...], "reroutes": [{id, pos, parent?}]}}
// Inputs are literals (widget values) or links {"node": id, "output": name}. Editor-only state (positions,
// sizes, the seed controls, reroute dots, bypass/mute: see modes.js) lives in "layout", so a workflow saved here
// runs unchanged, with the same meaning, from the CLI.

import { LiteGraph, LGraphGroup } from "../vendor/litegraph/litegraph.es.js";
import { MissingNode, WIDGET_TYPES, SEED_CONTROLS, preferredWidth, savedSize } from "./nodes.js";
import { applyModes, editorInputs, MODE_BY_NAME, MODE_NAMES } from "./modes.js";
import { isNote, noteToLayout, noteFromLayout } from "./notes.js";
import { SUBGRAPH_INPUT, usedSubgraphs, flattenSubgraphs, nestedScopes, buildSubgraphs } from "./subgraphs.js";

export const FORMAT = "chisel-workflow";

const round1 = (x) => Math.round(x * 10) / 10;

function lgId(id) {
  return /^[1-9]\d{0,14}$/.test(String(id)) ? Number(id) : String(id);
}

function sortIds(a, b) {
  const na = Number(a), nb = Number(b);
  if (Number.isFinite(na) && Number.isFinite(nb)) return na - nb;
  return String(a).localeCompare(String(b));
}

function linkValue(graph, node, slot) {
  const link = slot?.link != null ? graph.links.get(slot.link) : null;
  if (!link) return undefined;
  if (link.origin_id === SUBGRAPH_INPUT) return { node: String(SUBGRAPH_INPUT), output: link.origin_slot };
  const origin = graph.getNodeById(link.origin_id);
  if (!origin) return undefined;
  const out = origin.outputs[link.origin_slot];
  const sameName = origin.outputs.filter((o) => o.name === out?.name).length;
  return { node: String(origin.id), output: out && sameName === 1 ? out.name : link.origin_slot };
}

/**
 * One graph's nodes (the root graph, or a subgraph's inside) as native specs with their layout; links are those
 * drawn (a subgraph instance is a node of its subgraph's type, links from a subgraph's inputs come from node "-10").
 */
export function scopeToWorkflow(graph, { layout = true } = {}) {
  const nodes = {};
  const layoutNodes = {};
  const list = [...graph._nodes].filter((n) => !isNote(n)).sort((a, b) => sortIds(a.id, b.id));
  for (const node of list) {
    const id = String(node.id);
    const schema = node.chisel?.schema;
    let spec;
    if (!schema) {
      // a node whose type the server does not know: give back what was loaded, with its current links
      const raw = node.chisel?.raw || { type: node.type, inputs: {} };
      spec = { type: raw.type, inputs: { ...raw.inputs } };
      for (const slot of node.inputs || []) {
        const v = linkValue(graph, node, slot);
        if (v) spec.inputs[slot.name] = v;
        else if (raw.inputs?.[slot.name] && typeof raw.inputs[slot.name] === "object") delete spec.inputs[slot.name];
      }
      if (raw.title) spec.title = raw.title;
      if (node.isSubgraphNode?.()) {
        if (node.title && node.title !== node.subgraph.name) spec.title = node.title;
        // promoted widgets: the values this instance gives its subgraph's inputs that nothing links
        for (const w of node.widgets || []) if (!(w.name in spec.inputs) && w.value !== undefined) spec.inputs[w.name] = w.value;
      }
    } else {
      spec = { type: node.type, inputs: {} };
      for (const inp of schema.inputs) {
        const slot = node.inputs?.find((s) => s.name === inp.name);
        const link = linkValue(graph, node, slot);
        if (link) {
          spec.inputs[inp.name] = link;
          continue;
        }
        if (!WIDGET_TYPES.has(inp.type)) continue;
        const w = node.widgets?.find((x) => x.name === inp.name);
        if (w) spec.inputs[inp.name] = w.value;
      }
      for (const [k, v] of Object.entries(node.chisel?.extraInputs || {})) {
        if (!(k in spec.inputs)) spec.inputs[k] = v;
      }
      const defaultTitle = schema.display_name || schema.type;
      if (node.title && node.title !== defaultTitle) spec.title = node.title;
    }
    nodes[id] = spec;
    if (layout) {
      const size = savedSize(node);
      const lay = { pos: [round1(node.pos[0]), round1(node.pos[1])], size: [round1(size[0]), round1(size[1])] };
      if (node.flags?.collapsed) lay.collapsed = true;
      if (node.color) lay.color = node.color;
      if (node.bgcolor) lay.bgcolor = node.bgcolor;
      const controls = {};
      for (const w of node.widgets || []) if (w.chiselControlFor) controls[w.chiselControlFor] = w.value;
      if (Object.keys(controls).length) lay.controls = controls;
      const reroutes = {};
      for (const slot of node.inputs || []) {
        const link = slot.link != null ? graph.links.get(slot.link) : null;
        if (link?.parentId != null && graph.reroutes.has(link.parentId)) reroutes[slot.name] = link.parentId;
      }
      if (Object.keys(reroutes).length) lay.reroutes = reroutes;
      layoutNodes[id] = lay;
    }
  }
  const modes = {};
  for (const node of list) if (MODE_NAMES[node.mode]) modes[String(node.id)] = node.mode;
  return { nodes, layoutNodes, modes };
}

/** LiteGraph graph -> native workflow (with layout unless {layout: false}). */
export function graphToWorkflow(graph, { layout = true, meta } = {}) {
  const { nodes, layoutNodes, modes: scopeModes } = scopeToWorkflow(graph, { layout });
  const wf = { format: FORMAT, version: 1, nodes };
  if (meta && Object.keys(meta).length) wf.meta = meta;
  if (layout) wf.layout = { nodes: layoutNodes, ...scopeExtras(graph, { always: true }) };
  let modes = scopeModes;
  let byId = (id) => graph.getNodeById(lgId(id));
  let drawn = null;
  if (usedSubgraphs(graph).length) {
    // the workflow that runs is the flattened one; what was drawn (the subgraphs) stays in the layout
    const scopeFn = (g) => ({ ...scopeToWorkflow(g, { layout }), extras: layout ? scopeExtras(g) : {} });
    ({ modes, byId, drawn } = flattenSubgraphs(wf, graph, scopeFn, scopeModes));
  }
  applyModes(wf, modes, (id) => {
    const n = byId(id);
    return { inputs: (n?.inputs || []).map((i) => ({ name: i.name, type: i.type })),
      outputs: (n?.outputs || []).map((o) => ({ name: o.name, type: o.type })) };
  }, (id) => !!byId(id)?.chisel?.schema?.output_node);
  drawn?.();
  return wf;
}

/**
 * One graph's groups, notes and reroute dots as the layout keeps them (the root graph's in `layout`, a subgraph's
 * in its definition); empty ones are left out unless `always` (the root's groups and notes are always written).
 */
export function scopeExtras(graph, { always = false } = {}) {
  const out = {
    groups: graph._groups.map((g) => ({ title: g.title, bounding: [...g._bounding].map(round1), color: g.color })),
    notes: graph._nodes.filter(isNote).sort((a, b) => sortIds(a.id, b.id)).map((n) => noteToLayout(n, round1)),
    reroutes: savedReroutes(graph),
  };
  for (const key of ["groups", "notes", "reroutes"]) if (!out[key].length && (!always || key === "reroutes")) delete out[key];
  return out;
}

/** Put one graph's groups, notes and reroute dots back (extras: {groups, notes, reroutes}; created: {id: node}). */
export function restoreExtras(graph, extras, layoutNodes, created, problems) {
  restoreReroutes(graph, { layout: { nodes: layoutNodes, reroutes: extras.reroutes } }, created, problems);
  for (const n of Array.isArray(extras.notes) ? extras.notes : []) {
    const note = noteFromLayout(n);
    if (!note) continue;
    graph.add(note, true);
    if (n.collapsed) note.collapse(true);
  }
  for (const g of Array.isArray(extras.groups) ? extras.groups : []) {
    try {
      const group = new LGraphGroup(g?.title || "Group");
      if (Array.isArray(g?.bounding) && g.bounding.length === 4) group._bounding.set(g.bounding.map(Number));
      if (g?.color) group.color = g.color;
      graph.add(group);
    } catch (e) {
      problems.push({ text: `a group could not be restored: ${e.message}` });
    }
  }
}

/** The reroute dots that links pass through (chains keep their parent); loose ones are not kept. */
function savedReroutes(graph) {
  const used = new Set();
  for (const link of graph.links.values()) {
    let r = link.parentId != null ? graph.reroutes.get(link.parentId) : null;
    while (r && !used.has(r.id)) {
      used.add(r.id);
      r = r.parentId != null ? graph.reroutes.get(r.parentId) : null;
    }
  }
  return [...graph.reroutes.values()].filter((r) => used.has(r.id)).sort((a, b) => a.id - b.id).map((r) => {
    const out = { id: r.id, pos: [round1(r.pos[0]), round1(r.pos[1])] };
    if (r.parentId != null && used.has(r.parentId)) out.parent = r.parentId;
    return out;
  });
}

/** Put the saved reroute dots back on the links that pass through them. */
function restoreReroutes(graph, wf, created, problems) {
  const saved = Array.isArray(wf.layout?.reroutes) ? wf.layout.reroutes : [];
  if (!saved.length) return;
  for (const r of saved) {
    if (!Number.isInteger(r?.id) || r.id < 1 || !Array.isArray(r.pos)) continue;
    graph.setReroute({ id: r.id, pos: [Number(r.pos[0]) || 0, Number(r.pos[1]) || 0], linkIds: [] });
  }
  for (const r of saved) {
    const reroute = graph.reroutes.get(r?.id);
    if (reroute && r.parent != null && graph.reroutes.has(r.parent)) reroute.parentId = r.parent;
  }
  for (const [id, lay] of Object.entries(wf.layout?.nodes || {})) {
    const target = created[id];
    for (const [name, rid] of Object.entries(lay?.reroutes || {})) {
      const slot = target?.inputs?.[target.findInputSlot(name)];
      const link = slot?.link != null ? graph.links.get(slot.link) : null;
      let r = graph.reroutes.get(rid);
      if (!link || !r) {
        problems.push({ node_id: id, input: name, text: `a reroute dot on “${name}” could not be restored.` });
        continue;
      }
      link.parentId = rid;
      const seen = new Set();
      while (r && !seen.has(r.id)) {
        seen.add(r.id);
        r.linkIds.add(link.id);
        r = r.parentId != null ? graph.reroutes.get(r.parentId) : null;
      }
    }
  }
  for (const r of [...graph.reroutes.values()]) if (!r.linkIds.size) graph.removeReroute(r.id);
}

/** A tidy left-to-right arrangement for workflows that carry no layout: columns by depth. */
function autoLayout(wf) {
  const ids = Object.keys(wf.nodes);
  const depth = {};
  const visiting = new Set();
  const d = (id) => {
    if (depth[id] != null) return depth[id];
    if (visiting.has(id)) return 0;
    visiting.add(id);
    let best = 0;
    for (const v of Object.values(wf.nodes[id]?.inputs || {})) {
      if (v && typeof v === "object" && !Array.isArray(v) && "node" in v && wf.nodes[v.node]) best = Math.max(best, d(String(v.node)) + 1);
    }
    visiting.delete(id);
    depth[id] = best;
    return best;
  };
  ids.forEach(d);
  const cols = {};
  for (const id of ids.sort(sortIds)) (cols[depth[id]] ||= []).push(id);
  const pos = {};
  for (const [col, members] of Object.entries(cols)) {
    members.forEach((id, i) => { pos[id] = [40 + Number(col) * 380, 40 + i * 300]; });
  }
  return pos;
}

function isLink(v) {
  return v && typeof v === "object" && !Array.isArray(v) && typeof v.node !== "undefined";
}

/**
 * Native workflow -> LiteGraph graph (cleared first). Returns a list of problems found while loading
 * (links the canvas refused, unknown node types), each {node_id, input, text}.
 */
export function workflowToGraph(graph, saved, schemas) {
  const problems = [];
  graph.clear();
  const layIn = saved.layout?.nodes || {};
  // the editor's links (into bypassed nodes, subgraph instances) come back from the layout
  let nodes = {};
  for (const [id, spec] of Object.entries(saved.nodes)) nodes[id] = { ...spec, inputs: editorInputs(spec, layIn[id]) };
  // subgraphs: the root graph's nodes and instances, and each subgraph's inside, as drawn
  const scopes = nestedScopes(saved, nodes, problems);
  nodes = scopes.nodes;
  const lay = scopes.layout;
  buildSubgraphs(graph, scopes.subgraphs, (g, n, l) => populateGraph(g, n, l, schemas, problems, null),
    (g, d, created) => restoreExtras(g, d, d.layout || {}, created, problems), problems);
  const wf = { ...saved, nodes };
  const created = populateGraph(graph, nodes, lay, schemas, problems, Object.keys(lay).length ? null : autoLayout(wf));
  restoreExtras(graph, wf.layout || {}, lay, created, problems);
  graph.updateExecutionOrder();
  graph.setDirtyCanvas(true, true);
  return problems;
}

/** Create one graph's nodes (drawn: {id: spec}) with their layout and links; returns {id: node}. */
function populateGraph(graph, nodes, lay, schemas, problems, auto) {
  const wf = { nodes };
  const created = {};
  // make sure numeric ids never collide with the ones LiteGraph hands out next
  let maxId = 0;
  for (const id of Object.keys(wf.nodes)) if (typeof lgId(id) === "number") maxId = Math.max(maxId, lgId(id));
  for (const [id, spec] of Object.entries(wf.nodes)) {
    const instance = graph.rootGraph?.subgraphs?.has(spec.type);
    let node = schemas[spec.type] || instance ? LiteGraph.createNode(spec.type) : null;
    if (instance && node) {
      if (spec.title) node.title = spec.title;
      for (const [name, v] of Object.entries(spec.inputs || {})) {
        const w = isLink(v) ? null : node.widgets?.find((x) => x.name === name);
        if (w) w.value = v;
      }
    } else if (!node) {
      node = new MissingNode(`${spec.title || spec.type} (unknown type)`);
      node.chisel.raw = JSON.parse(JSON.stringify(spec));
      problems.push({ node_id: id, text: `The server has no node type “${spec.type}”.` });
      for (const [name, v] of Object.entries(spec.inputs || {})) if (isLink(v)) node.addInput(name, "*");
    } else {
      if (spec.title) node.title = spec.title;
      const extra = {};
      const schema = schemas[spec.type];
      for (const [name, v] of Object.entries(spec.inputs || {})) {
        const inp = schema.inputs.find((i) => i.name === name);
        if (!inp) {
          extra[name] = v;
          continue;
        }
        if (isLink(v)) continue;
        const w = node.widgets?.find((x) => x.name === name);
        if (w) {
          w.value = v;
        } else {
          extra[name] = v; // a literal for a socket-only input: keep it, the server will say what is wrong
        }
      }
      if (Object.keys(extra).length) node.chisel.extraInputs = extra;
      const controls = lay[id]?.controls || {};
      for (const w of node.widgets || []) {
        if (w.chiselControlFor) {
          const c = controls[w.chiselControlFor];
          w.value = SEED_CONTROLS.includes(c) ? c : "fixed";
        }
      }
    }
    node.id = lgId(id);
    const l = lay[id];
    if (l?.pos) node.pos = [Number(l.pos[0]) || 0, Number(l.pos[1]) || 0];
    else if (auto) node.pos = auto[id];
    if (l?.color) node.color = l.color;
    if (l?.bgcolor) node.bgcolor = l.bgcolor;
    graph.add(node, true);
    if (l?.size) {
      const min = node.computeSize();
      node.setSize([Math.max(Number(l.size[0]) || 0, min[0] * 0.5), Math.max(Number(l.size[1]) || 0, min[1])]);
    } else if (!(node instanceof MissingNode)) {
      node.setSize([preferredWidth(node), node.computeSize()[1]]);
    }
    if (l?.collapsed) node.collapse(true);
    if (MODE_BY_NAME[l?.mode]) node.mode = MODE_BY_NAME[l.mode];
    created[id] = node;
  }
  graph.state.lastNodeId = Math.max(graph.state.lastNodeId, maxId);
  // outputs that links ask for on unknown nodes
  for (const [id, spec] of Object.entries(wf.nodes)) {
    for (const v of Object.values(spec.inputs || {})) {
      if (!isLink(v)) continue;
      const src = created[String(v.node)];
      if (src instanceof MissingNode) {
        const name = typeof v.output === "number" ? `output ${v.output}` : String(v.output);
        if (src.findOutputSlot(name) < 0) src.addOutput(name, "*");
      }
    }
  }
  for (const [id, spec] of Object.entries(wf.nodes)) {
    const target = created[id];
    for (const [name, v] of Object.entries(spec.inputs || {})) {
      if (!isLink(v)) continue;
      const slotIn = target.findInputSlot(name);
      if (String(v.node) === String(SUBGRAPH_INPUT) && graph.inputs && slotIn >= 0) {
        // a link from the subgraph's input
        const input = graph.inputs[Number(v.output)];
        if (input) input.connect(target.inputs[slotIn], target);
        else problems.push({ node_id: id, input: name, text: `“${name}” was linked to a subgraph input that does not exist.` });
        continue;
      }
      const src = created[String(v.node)];
      if (slotIn < 0) {
        (target.chisel.extraInputs ||= {})[name] = v;
        continue;
      }
      if (!src) {
        problems.push({ node_id: id, input: name, text: `“${name}” was linked to node ${v.node}, which is not in the file.` });
        continue;
      }
      let slotOut;
      if (src instanceof MissingNode) slotOut = src.findOutputSlot(typeof v.output === "number" ? `output ${v.output}` : String(v.output));
      else slotOut = typeof v.output === "number" ? v.output : src.findOutputSlot(String(v.output));
      if (slotOut == null || slotOut < 0 || slotOut >= src.outputs.length) {
        problems.push({ node_id: id, input: name, text: `“${name}” was linked to an output “${v.output}” that ${src.title} does not have.` });
        continue;
      }
      const link = src.connect(slotOut, target, slotIn);
      if (!link) {
        problems.push({
          node_id: id, input: name,
          text: `“${name}” (${target.inputs[slotIn].type}) cannot take ${src.title}'s ${src.outputs[slotOut].name} (${src.outputs[slotOut].type}); the link was left out.`,
        });
      }
    }
  }
  return created;
}

/** What kind of workflow JSON this is: "native", "comfy_api", "comfy_ui" or null. */
export function detectFormat(data) {
  if (!data || typeof data !== "object" || Array.isArray(data)) return null;
  if (data.format === FORMAT || (data.nodes && !Array.isArray(data.nodes) && typeof data.nodes === "object")) return "native";
  if (Array.isArray(data.nodes) && ("links" in data || "last_node_id" in data || "version" in data)) return "comfy_ui";
  const vals = Object.values(data);
  if (vals.length && vals.every((v) => v && typeof v === "object" && "class_type" in v)) return "comfy_api";
  return null;
}

/** The given node ids and every node that (through links) takes their results, in a native workflow's nodes. */
export function downstreamOf(nodes, ids) {
  const consumers = {};
  for (const [id, spec] of Object.entries(nodes)) {
    for (const v of Object.values(spec.inputs || {})) if (isLink(v)) (consumers[String(v.node)] ||= []).push(id);
  }
  const out = new Set();
  const stack = [...ids].map(String);
  while (stack.length) {
    const id = stack.pop();
    if (out.has(id)) continue;
    out.add(id);
    stack.push(...(consumers[id] || []));
  }
  return out;
}

/** Ids of the nodes whose spec (type, inputs, title) differs between two native workflows, or that are new. */
export function changedNodes(before, after) {
  const a = before.nodes || {}, b = after.nodes || {};
  return Object.keys(b).filter((id) => JSON.stringify(a[id]) !== JSON.stringify(b[id]));
}
