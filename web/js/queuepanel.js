// The queue and history panels' controls: move a pending prompt up or down (POST /v1/queue/move), and run a past
// prompt again with new seeds (its stored workflow, each seed input that holds a number drawn afresh), without
// touching the canvas.

import { el, toast } from "./panels.js";
import { randomSeed } from "./nodes.js";

export class QueuePanel {
  constructor(app) {
    this.app = app;
  }

  get api() { return this.app.api; }

  /** Add "move up" / "move down" to the pending rows the sidebar drew (in run order). */
  decorate(ul, pending) {
    pending.forEach((item, i) => {
      const li = ul.querySelector(`li.queue-item.pending[data-prompt="${CSS.escape(item.prompt_id)}"]`);
      if (!li) return;
      const label = `#${item.number ?? "?"}`;
      const up = el("button", { type: "button", class: "small queue-move", "aria-label": `Move ${label} up`, title: "Run it earlier",
        disabled: i === 0, onclick: () => this.move(item.prompt_id, i - 1) }, "↑");
      const down = el("button", { type: "button", class: "small queue-move", "aria-label": `Move ${label} down`, title: "Run it later",
        disabled: i === pending.length - 1, onclick: () => this.move(item.prompt_id, i + 1) }, "↓");
      const remove = li.querySelector("button");
      remove?.setAttribute("aria-label", `Remove ${label} from the queue`);
      li.insertBefore(up, remove);
      li.insertBefore(down, remove);
    });
  }

  async move(promptId, position) {
    const r = await this.api.request("POST", "v1/queue/move", { json: { prompt_id: promptId, position }, allowError: true });
    if (r.ok) {
      this.app.sidebar.setQueue(r.data);
      return true;
    }
    // it started (or was removed) meanwhile: say so, and show the queue as it is now
    toast(`Could not move it: ${r.data?.error?.message || `HTTP ${r.status}`}`, "warn");
    this.app.refreshQueue();
    return false;
  }

  /** Add "re-run with a new seed" to a history row. */
  historyActions(li, entry) {
    if (!entry.workflow) return;
    const btn = el("button", { type: "button", class: "small history-rerun", title: "Queue this run's workflow again with new seeds",
      "aria-label": `Re-run #${entry.number ?? "?"} with a new seed`, onclick: () => this.rerun(entry) }, "↻");
    li.append(btn);
  }

  /** The workflow with every seed that holds a number drawn afresh; [workflow, {"node.input": seed}]. */
  newSeeds(workflow) {
    const wf = structuredClone(workflow);
    const seeds = {};
    for (const [id, node] of Object.entries(wf.nodes || {})) {
      const schema = this.app.schemas[node?.type];
      for (const inp of schema?.inputs || []) {
        if (!inp.seed || typeof node.inputs?.[inp.name] !== "number") continue;
        node.inputs[inp.name] = randomSeed(inp);
        seeds[`${id}.${inp.name}`] = node.inputs[inp.name];
      }
    }
    return [wf, seeds];
  }

  async rerun(entry) {
    const [workflow, seeds] = this.newSeeds(entry.workflow);
    const r = await this.api.request("POST", "v1/prompts", { json: { workflow, client_id: this.api.clientId }, allowError: true });
    if (!r.ok) {
      const errors = r.data?.errors?.length ? r.data.errors : [];
      toast(`Not queued again: ${r.data?.error?.message || `HTTP ${r.status}`}`, "error", 8000);
      if (errors.length) this.app.showServerErrors(errors);
      return null;
    }
    this.app.prompts.set(r.data.prompt_id, { number: r.data.number, seeds });
    const n = Object.keys(seeds).length;
    toast(n ? `Queued #${entry.number ?? "?"} again as #${r.data.number}, seed ${Object.values(seeds).join(", ")}.`
      : `Queued #${entry.number ?? "?"} again as #${r.data.number} (it has no seed to change).`);
    this.app.refreshQueue();
    return { ...r.data, seeds };
  }
}
