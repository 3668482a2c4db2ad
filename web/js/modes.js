// Bypass and mute, with ComfyUI's meaning, applied to a native workflow as it is saved:
//   - a bypassed node does not run: each of its outputs is replaced by its first input of the same type (the one
//     at the same position first), so what it feeds takes that input instead;
//   - a muted node does not run, and neither does anything that needs its result (downstream of it).
// The workflow saved is the one that runs (from the CLI too): links are rewired past bypassed nodes and, when
// some output node cannot run, "outputs" lists those that can. The editor's own links (into bypassed nodes'
// consumers) and each node's mode are kept in the layout, so the canvas restores what the user drew.

export const MODE_ALWAYS = 0;
export const MODE_MUTE = 2; // LiteGraph's NEVER; ComfyUI saves 2
export const MODE_BYPASS = 4;
export const MODE_NAMES = { [MODE_MUTE]: "mute", [MODE_BYPASS]: "bypass" };
export const MODE_BY_NAME = { mute: MODE_MUTE, bypass: MODE_BYPASS };

function isLink(v) {
  return v && typeof v === "object" && !Array.isArray(v) && typeof v.node !== "undefined";
}

/** The input a bypassed node passes on for one of its outputs: same type, the same position preferred. */
export function passThroughInput(slots, output) {
  const outs = slots.outputs;
  const index = typeof output === "number" ? output : outs.findIndex((o) => o.name === output);
  const type = outs[index]?.type;
  if (type === undefined) return null;
  const same = slots.inputs[index];
  if (same && same.type === type) return same.name;
  return slots.inputs.find((i) => i.type === type)?.name ?? null;
}

/**
 * Apply the modes to `wf` (native, editor links in its nodes) in place.
 * modes: {id: MODE_MUTE | MODE_BYPASS}; slots(id) -> {inputs: [{name, type}], outputs: [{name, type}]};
 * isOutputNode(id) -> boolean.
 */
export function applyModes(wf, modes, slots, isOutputNode) {
  const ids = Object.keys(modes);
  if (!ids.length) return wf;
  const layoutNodes = wf.layout?.nodes;
  for (const id of ids) if (layoutNodes?.[id]) layoutNodes[id].mode = MODE_NAMES[modes[id]];
  const bypassed = (id) => modes[id] === MODE_BYPASS;
  // what a link really comes from, once bypassed nodes are passed through (null: nothing)
  const resolve = (link) => {
    const seen = new Set();
    let cur = link;
    while (cur && bypassed(String(cur.node)) && !seen.has(String(cur.node))) {
      const src = String(cur.node);
      seen.add(src);
      const name = passThroughInput(slots(src), cur.output);
      const next = name ? wf.nodes[src]?.inputs?.[name] : undefined;
      cur = isLink(next) ? next : null;
    }
    return cur && bypassed(String(cur.node)) ? null : cur;
  };
  for (const [id, spec] of Object.entries(wf.nodes)) {
    if (bypassed(id)) continue;
    for (const [name, v] of Object.entries(spec.inputs)) {
      if (!isLink(v) || !bypassed(String(v.node))) continue;
      if (layoutNodes?.[id]) (layoutNodes[id].links ||= {})[name] = v;
      const real = resolve(v);
      if (real) spec.inputs[name] = real;
      else delete spec.inputs[name];
    }
  }
  // muted nodes and all that needs them do not run; bypassed nodes never do
  const consumers = {};
  for (const [id, spec] of Object.entries(wf.nodes)) {
    for (const v of Object.values(spec.inputs)) if (isLink(v)) (consumers[String(v.node)] ||= []).push(id);
  }
  const dead = new Set(ids.filter(bypassed));
  const stack = ids.filter((id) => modes[id] === MODE_MUTE);
  while (stack.length) {
    const id = stack.pop();
    if (dead.has(id) && modes[id] !== MODE_MUTE) continue;
    dead.add(id);
    for (const c of consumers[id] || []) if (!dead.has(c)) stack.push(c);
  }
  const outputs = Object.keys(wf.nodes).filter((id) => isOutputNode(id));
  if (outputs.some((id) => dead.has(id))) wf.outputs = outputs.filter((id) => !dead.has(id));
  return wf;
}

/** The editor's inputs of a node in a saved workflow: its links into bypassed nodes come back from the layout. */
export function editorInputs(spec, layout) {
  const links = layout?.links;
  if (!links || typeof links !== "object") return spec.inputs || {};
  return { ...(spec.inputs || {}), ...links };
}
