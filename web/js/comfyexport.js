// ComfyUI's API format (the "prompt" ComfyUI runs) from a native workflow as it is saved here: only the nodes that
// run (bypass and mute already applied, see modes.js), links as [node id, output index].

function isLink(v) {
  return v && typeof v === "object" && !Array.isArray(v) && typeof v.node !== "undefined";
}

/** The nodes that run: those the requested outputs need (all, when the workflow names none). */
function runningNodes(wf, schemas) {
  const skip = new Set(Object.entries(wf.layout?.nodes || {}).filter(([, l]) => l?.mode).map(([id]) => id));
  const wanted = wf.outputs ?? Object.keys(wf.nodes).filter((id) => schemas[wf.nodes[id].type]?.output_node && !skip.has(id));
  const keep = new Set();
  const stack = [...wanted];
  while (stack.length) {
    const id = String(stack.pop());
    if (keep.has(id) || !wf.nodes[id]) continue;
    keep.add(id);
    for (const v of Object.values(wf.nodes[id].inputs || {})) if (isLink(v)) stack.push(String(v.node));
  }
  return keep;
}

export function toComfyApi(wf, schemas) {
  const keep = runningNodes(wf, schemas);
  const out = {};
  for (const [id, spec] of Object.entries(wf.nodes)) {
    if (!keep.has(id)) continue;
    const inputs = {};
    for (const [name, v] of Object.entries(spec.inputs || {})) {
      if (isLink(v)) {
        let index = v.output;
        if (typeof index !== "number") {
          const outs = schemas[wf.nodes[v.node]?.type]?.outputs || [];
          index = Math.max(0, outs.findIndex((o) => o.name === v.output));
        }
        inputs[name] = [String(v.node), index];
      } else if (Array.isArray(v)) {
        inputs[name] = { __value__: v };
      } else {
        inputs[name] = v;
      }
    }
    out[id] = { class_type: spec.type, inputs, _meta: { title: spec.title || schemas[spec.type]?.display_name || spec.type } };
  }
  return out;
}
