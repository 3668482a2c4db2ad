// Structured errors from the server ({kind, message, node_id, input, value, node_type, details}) in plain words.

function q(s) {
  return `“${s}”`;
}

function show(v) {
  if (v === null || v === undefined) return "nothing";
  if (typeof v === "string") return q(v.length > 40 ? v.slice(0, 40) + "…" : v);
  if (typeof v === "object") return JSON.stringify(v).slice(0, 60);
  return String(v);
}

/** One sentence a user understands. `node` (optional) gives input types and labels. */
export function describeError(err, node) {
  const input = err.input;
  const schemaInput = node?.chisel?.schema?.inputs?.find((i) => i.name === input);
  const socket = schemaInput && !["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"].includes(schemaInput.type);
  const msg = err.message || "";
  switch (err.kind) {
    case "required_input_missing":
      return socket || !schemaInput
        ? `${q(input)} is not connected: drag a ${schemaInput?.type || "matching"} output onto it.`
        : `${q(input)} needs a value.`;
    case "unknown_node_type":
      return `The server has no node type ${q(err.node_type || err.value)}: install its plug-in or delete this node.`;
    case "unknown_input":
      return `This node has no input ${q(input)} (the file may come from another version of it). Right-click the node and choose “Remove unknown inputs”.`;
    case "link_to_missing_node":
      return `${q(input)} is linked to a node that is not in the workflow any more.`;
    case "link_to_missing_output":
      return `${q(input)} is linked to an output that the other node does not have.`;
    case "type_mismatch":
      return `${q(input)} is connected to the wrong kind of output (${msg.replace(/^expects /, "it expects ")}).`;
    case "value_out_of_range": {
      const lo = schemaInput?.min, hi = schemaInput?.max;
      const range = lo != null && hi != null ? ` It must be between ${lo} and ${hi}.` : "";
      return `${q(input)} is ${show(err.value)}, which is out of range.${range}`;
    }
    case "invalid_choice":
      return `${q(input)}: ${show(err.value)} is not one of the choices. Pick one from the list.`;
    case "invalid_type":
      return `${q(input)} has a value of the wrong kind (${msg}).`;
    case "file_not_found": {
      const folder = err.details?.folder ? ` in the ${err.details.folder} folder` : "";
      const avail = err.details?.available;
      const hint = Array.isArray(avail) && avail.length ? ` Available: ${avail.slice(0, 5).join(", ")}${avail.length > 5 ? ", …" : ""}.` : " Put the file there, or pick another.";
      return `${q(input)}: the file ${show(err.value)} was not found${folder}.${hint}`;
    }
    case "cycle":
      return "This node is part of a loop: links must not go round in a circle.";
    case "no_outputs":
      return "Nothing to output: add a node that saves or previews its result (e.g. Save Image).";
    case "execution_failed":
      return `This node failed while running: ${msg.replace(/^.*?failed:\s*/, "")}`;
    case "upstream_failed":
      return "Did not run, because a node before it failed.";
    case "interrupted":
      return "The run was interrupted.";
    case "invalid_workflow":
    case "invalid_json":
      return `The workflow file is not valid: ${msg}`;
    default:
      return msg || err.kind || "Something went wrong.";
  }
}
