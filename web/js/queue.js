// Sending work to the server: check, queue (with the batch count), move the seeds on after queueing, interrupt,
// cancel, and the queue list.

import { graphToWorkflow } from "./format.js";
import { normalizeNumber, randomSeed } from "./nodes.js";
import { closeTextEditor } from "./widgets.js";
import { toast } from "./panels.js";

const $ = (sel) => document.querySelector(sel);

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

export class Runner {
  constructor(app) {
    this.app = app;
  }

  get api() { return this.app.api; }

  async queue(count = null) {
    const app = this.app;
    closeTextEditor(true);
    const n = Math.max(1, Math.min(100, Number(count ?? $("#batch-count").value) || 1));
    for (let i = 0; i < n; i++) {
      const wf = graphToWorkflow(app.graph);
      // check first: a broken graph gets its errors from a 200 reply, not a failed request in the console
      if (i === 0 && !(await this.checkBeforeQueue(wf))) return false;
      // Errors are cleared before sending: the run's own errors may arrive over the socket before the reply.
      if (i === 0) app.clearErrors();
      let r;
      try {
        r = await this.api.request("POST", "v1/prompts", { json: { workflow: wf, client_id: this.api.clientId }, allowError: true });
      } catch (e) {
        toast(`Could not reach the server: ${e.message}`, "error");
        return false;
      }
      if (!r.ok) {
        const errors = r.data?.errors?.length ? r.data.errors : r.data?.error ? [r.data.error] : [{ kind: "error", message: `HTTP ${r.status}` }];
        this.refused(errors);
        return false;
      }
      app.prompts.set(r.data.prompt_id, { number: r.data.number });
      this.applySeedControls();
    }
    this.refreshQueue();
    return true;
  }

  /** POST /v1/validate; false (and the errors shown) when the workflow would be refused. */
  async checkBeforeQueue(wf) {
    let v;
    try {
      v = await this.api.request("POST", "v1/validate", { json: { workflow: wf }, allowError: true });
    } catch (e) {
      toast(`Could not reach the server: ${e.message}`, "error");
      return false;
    }
    if (v.ok && v.data && v.data.valid === false) {
      this.refused(v.data.errors || []);
      return false;
    }
    return true;
  }

  refused(errors) {
    this.app.showServerErrors(errors);
    // bring the first node with a problem into view, selected
    const first = errors.find((e) => this.app.nodeFor(e.node_id));
    if (first) this.app.focusNode(first.node_id);
    toast(`Not queued: ${plural(errors.length, "problem")} in the workflow.`, "error", 6000);
    if (errors.some((e) => e.kind === "file_not_found")) this.app.refreshModels();
  }

  /** After queueing: each seed moves on as its control says (fixed / increment / decrement / randomize). */
  applySeedControls() {
    this.app.history.absorb(() => this.moveSeeds());
  }

  moveSeeds() {
    let changed = false;
    for (const node of this.app.allNodes()) {
      for (const ctl of node.widgets || []) {
        if (!ctl.chiselControlFor || ctl.value === "fixed") continue;
        const w = node.widgets.find((x) => x.name === ctl.chiselControlFor);
        const slot = node.inputs?.find((s) => s.name === ctl.chiselControlFor);
        if (!w || slot?.link != null) continue;
        const inp = w.chiselInput;
        if (ctl.value === "increment") w.value = w.value === -1 ? -1 : normalizeNumber(inp, Number(w.value) + 1);
        else if (ctl.value === "decrement") w.value = w.value === -1 ? -1 : normalizeNumber(inp, Number(w.value) - 1);
        else if (ctl.value === "randomize") w.value = randomSeed(inp);
        changed = true;
      }
    }
    if (changed) this.app.lgcanvas.setDirty(true, false);
  }

  async validate() {
    closeTextEditor(true);
    const app = this.app;
    const r = await this.api.request("POST", "v1/validate", { json: { workflow: graphToWorkflow(app.graph) }, allowError: true });
    const errors = r.data?.errors || [];
    if (r.ok && r.data?.valid) {
      app.clearErrors();
      toast("No problems found.");
    } else {
      app.showServerErrors(errors.length ? errors : [r.data?.error || { message: `HTTP ${r.status}` }]);
    }
  }

  async interrupt() {
    try {
      await this.api.post("v1/interrupt", {});
      toast("Interrupting…");
    } catch (e) {
      toast(`Could not interrupt: ${e.message}`, "error");
    }
  }

  async cancel(promptId) {
    try {
      await this.api.del(`v1/prompts/${encodeURIComponent(promptId)}`);
    } catch (e) {
      toast(`Could not remove it: ${e.message}`, "error");
    }
    this.refreshQueue();
  }

  async refreshQueue() {
    try {
      this.app.sidebar.setQueue(await this.api.get("v1/queue"));
    } catch { /* shown when the socket reconnects */ }
  }
}
