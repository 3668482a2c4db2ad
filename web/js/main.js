// Chisel's canvas editor: wires LiteGraph, the server API, the palette, undo, the side panel and files together.

import { LiteGraph, LGraph, LGraphCanvas, CanvasPointer } from "../vendor/litegraph/litegraph.es.js";
import { Api, ApiError } from "./api.js";
import { registerSchemas, applyTypeColors, setNodeImages, randomSeed, normalizeNumber, MissingNode } from "./nodes.js";
import { graphToWorkflow, workflowToGraph, detectFormat } from "./format.js";
import { Palette } from "./palette.js";
import { History } from "./undo.js";
import { closeTextEditor, graphRectToClient, isTextEditorOpen } from "./widgets.js";
import { describeError } from "./errors.js";
import { Sidebar, Lightbox, toast, askToken, el } from "./panels.js";

const AUTOSAVE_KEY = "chisel.workflow";
const $ = (sel) => document.querySelector(sel);

function lgId(id) {
  return /^[1-9]\d{0,14}$/.test(String(id)) ? Number(id) : String(id);
}

function isEditable(target) {
  const t = target?.localName;
  return t === "input" || t === "textarea" || t === "select" || target?.isContentEditable;
}

class App {
  constructor() {
    this.schemas = {};
    this.prompts = new Map(); // prompt_id -> {number} for prompts queued from this tab
    this.events = []; // recent engine events (for the status line and tests)
    this.name = "workflow";
    this.running = null; // {prompt_id, node_id}
    this.lightbox = new Lightbox();
    this.palette = new Palette(this);
  }

  async start() {
    this.setStatus("connecting…");
    this.api = new Api({ askToken });
    this.api.onStatus = (s) => this.setStatus(s);
    try {
      await this.api.init();
      this.schemas = await this.api.get("v1/nodes");
    } catch (e) {
      this.setStatus("offline");
      this.fatal(`Could not load the node types from the server: ${e.message}`);
      return;
    }
    this.configureLiteGraph();
    registerSchemas(this.schemas, this);
    this.createCanvas();
    this.sidebar = new Sidebar(this);
    this.sidebar.setRunning(null);
    this.history = new History({
      capture: () => JSON.stringify(graphToWorkflow(this.graph)),
      restore: (s) => this.loadWorkflow(JSON.parse(s), { history: false, keepView: true, quiet: true }),
      onChange: (h) => this.onHistory(h),
      busy: () => !!this.lgcanvas?.pointer?.isDown,
    });
    this.bindToolbar();
    this.bindKeys();
    this.bindDrop();
    this.bindSocket();
    await this.openInitialWorkflow();
    this.refreshQueue();
    this.loadGallery();
    this.refreshModels();
    this.loadBundledList();
    window.addEventListener("focus", () => this.refreshModels());
    document.body.dataset.ready = "1";
    window.chisel.ready = true;
  }

  fatal(text) {
    const box = $("#fatal");
    box.textContent = text;
    box.hidden = false;
  }

  setStatus(text) {
    const s = $("#conn-status");
    if (s) {
      s.textContent = text;
      s.dataset.state = text;
    }
  }

  // -- LiteGraph ------------------------------------------------------------------------------------
  configureLiteGraph() {
    LiteGraph.release_link_on_empty_shows_menu = true;
    LiteGraph.dialog_close_on_mouse_leave = false;
    LiteGraph.search_hide_on_mouse_leave = false;
    LiteGraph.alt_drag_do_clone_nodes = true;
    LiteGraph.middle_click_slot_add_default_node = false;
    LiteGraph.NODE_TEXT_SIZE = 13;
  }

  createCanvas() {
    const canvasEl = $("#graph-canvas");
    this.graph = new LGraph();
    const lg = new LGraphCanvas(canvasEl, this.graph);
    this.lgcanvas = lg;
    lg.allow_searchbox = true;
    lg.render_canvas_border = false;
    lg.show_info = false;
    const types = new Set();
    for (const s of Object.values(this.schemas)) {
      s.inputs.forEach((i) => types.add(i.type));
      s.outputs.forEach((o) => types.add(o.type));
    }
    applyTypeColors(lg, types);
    // our palette instead of the library's search box and connection menu
    lg.showSearchBox = (e, opts = {}) => {
      const from = opts.node_from ? { node: opts.node_from, slot: opts.slot_from, direction: "output", slotType: opts.type_filter_in }
        : opts.node_to ? { node: opts.node_to, slot: opts.slot_from, direction: "input", slotType: opts.type_filter_out } : null;
      if (from) this.openPalette(e, from); // a plain double-click is handled below, by the browser's dblclick
    };
    // The browser's own double-click (its timing, the user's settings) opens the palette on empty canvas.
    canvasEl.addEventListener("dblclick", (e) => {
      const [x, y] = lg.convertEventToCanvasOffset(e);
      if (this.graph.getNodeOnPos(x, y) || this.graph.getGroupTitlebarOnPos?.(x, y)) return;
      if (this.graph.getRerouteOnPos?.(x, y)) return;
      e.preventDefault();
      this.openPalette(e, null);
    });
    CanvasPointer.doubleClickTime = 500;
    lg.showConnectionMenu = (opts = {}) => {
      const e = opts.e;
      if (opts.nodeFrom) this.openPalette(e, { node: opts.nodeFrom, slot: opts.slotFrom, direction: "output", slotType: opts.slotFrom?.type });
      else if (opts.nodeTo) this.openPalette(e, { node: opts.nodeTo, slot: opts.slotTo, direction: "input", slotType: opts.slotTo?.type });
    };
    lg.getMenuOptions = () => [
      { content: "Add node…", callback: (v, o, e) => this.openPalette(e, null) },
      { content: "Add group", callback: LGraphCanvas.onGroupAdd },
      null,
      { content: "Queue", callback: () => this.queue() },
      { content: "Check for errors", callback: () => this.validate() },
      { content: "Refresh model lists", callback: () => this.refreshModels(true) },
    ];
    const baseNodeMenu = lg.getNodeMenuOptions.bind(lg);
    lg.getNodeMenuOptions = (node) => {
      const hide = new Set(["Mode", "Properties", "Properties Panel", "Convert to Subgraph 🆕", "Inputs", "Outputs"]);
      const opts = baseNodeMenu(node).filter((o) => !o || !hide.has(o.content));
      if (node.chisel?.extraInputs && Object.keys(node.chisel.extraInputs).length) {
        opts.unshift({ content: "Remove unknown inputs", callback: () => { delete node.chisel.extraInputs; this.edited(); } });
      }
      if (node.chisel?.images?.length) opts.unshift({ content: "Open image", callback: () => this.openLightbox(node.chisel.images, 0) });
      return opts;
    };
    const resize = () => {
      const wrap = $("#canvas-wrap");
      const dpr = Math.max(1, window.devicePixelRatio || 1);
      const w = wrap.clientWidth, h = wrap.clientHeight;
      canvasEl.width = Math.round(w * dpr);
      canvasEl.height = Math.round(h * dpr);
      canvasEl.style.width = `${w}px`;
      canvasEl.style.height = `${h}px`;
      lg.bgcanvas.width = canvasEl.width;
      lg.bgcanvas.height = canvasEl.height;
      canvasEl.getContext("2d").scale(dpr, dpr);
      lg.setDirty(true, true);
    };
    new ResizeObserver(resize).observe($("#canvas-wrap"));
    resize();
    // edits end with a pointer or key release: record an undo step then (only when something changed)
    canvasEl.addEventListener("pointerdown", () => { closeTextEditor(true); canvasEl.focus(); });
    // (after LiteGraph's own handlers: each gesture or key is one step, however fast the next one follows)
    canvasEl.addEventListener("pointerup", () => this.history.check());
    canvasEl.addEventListener("keyup", () => this.history.check());
    canvasEl.addEventListener("wheel", () => closeTextEditor(true), { passive: true });
    this.graph.onAfterChange = () => this.history?.schedule();
    this.graph.onNodeAdded = () => this.history?.schedule();
    this.graph.onNodeRemoved = () => this.history?.schedule();
  }

  openPalette(e, from) {
    const cx = e?.clientX ?? window.innerWidth / 2;
    const cy = e?.clientY ?? window.innerHeight / 2;
    const pos = e ? this.lgcanvas.convertEventToCanvasOffset(e) : this.lgcanvas.convertCanvasToOffset([300, 200]);
    this.palette.open(cx, cy, [pos[0], pos[1]], from);
  }

  /** Add a node from the palette; connect it when the palette was opened by dropping a link. */
  addNodeAt(type, pos, from) {
    const node = LiteGraph.createNode(type);
    if (!node) return null;
    node.pos = [pos[0], pos[1]];
    this.graph.add(node);
    if (from?.node) {
      if (from.direction === "output") {
        const i = from.node.findOutputSlot(from.slot?.name);
        if (i >= 0) from.node.connectByType(i, node, from.node.outputs[i].type);
      } else {
        const i = from.node.findInputSlot(from.slot?.name);
        if (i >= 0) from.node.connectByTypeOutput(i, node, from.node.inputs[i].type);
      }
    }
    this.lgcanvas.selectNode(node);
    this.edited();
    return node;
  }

  edited() {
    this.lgcanvas?.setDirty(true, true);
    this.history?.schedule();
  }

  onGraphEdited() {
    this.history?.schedule();
  }

  onHistory(h) {
    $("#undo-btn").disabled = !h.canUndo;
    $("#redo-btn").disabled = !h.canRedo;
    try {
      localStorage.setItem(AUTOSAVE_KEY, JSON.stringify({ name: this.name, workflow: JSON.parse(h.current) }));
    } catch { /* storage full or disabled: autosave is a convenience */ }
  }

  focusNode(id) {
    const node = this.graph.getNodeById(lgId(id));
    if (!node) return;
    this.lgcanvas.centerOnNode(node);
    this.lgcanvas.selectNode(node);
  }

  // -- loading and saving ---------------------------------------------------------------------------
  /** Put a workflow (native) on the canvas. */
  loadWorkflow(wf, { history = true, keepView = false, name, quiet = false } = {}) {
    closeTextEditor(false);
    this.clearRunState();
    const problems = workflowToGraph(this.graph, wf, this.schemas);
    if (name) {
      this.name = name;
      document.title = `${name} · Chisel`;
    }
    if (!keepView) this.fitView();
    this.lgcanvas.setDirty(true, true);
    if (history) this.history.reset();
    if (!quiet) {
      this.showProblems(problems);
    }
    return problems;
  }

  showProblems(problems) {
    this.clearErrors();
    if (!problems.length) return;
    const list = problems.map((p) => ({ ...p, kind: "load" }));
    for (const p of list) {
      const node = p.node_id != null ? this.graph.getNodeById(lgId(p.node_id)) : null;
      if (node) {
        node.chisel.errors.push({ input: p.input, text: p.text });
        node.has_errors = true;
        p.title = node.title;
      }
    }
    this.sidebar.setErrors(list);
    toast(`Opened with ${problems.length} problem${problems.length > 1 ? "s" : ""}: see Errors.`, "warn");
  }

  fitView() {
    const nodes = this.graph._nodes;
    const lg = this.lgcanvas;
    if (!nodes.length) {
      lg.ds.scale = 1;
      lg.ds.offset[0] = 0;
      lg.ds.offset[1] = 0;
      return;
    }
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const n of nodes) {
      x0 = Math.min(x0, n.pos[0]);
      y0 = Math.min(y0, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
      x1 = Math.max(x1, n.pos[0] + n.size[0]);
      y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    const wrap = $("#canvas-wrap");
    const W = wrap.clientWidth, H = wrap.clientHeight;
    const pad = 40;
    const scale = Math.max(0.3, Math.min(1, (W - pad * 2) / (x1 - x0), (H - pad * 2) / (y1 - y0)));
    lg.ds.scale = scale;
    lg.ds.offset[0] = -x0 + (W / scale - (x1 - x0)) / 2;
    lg.ds.offset[1] = -y0 + (H / scale - (y1 - y0)) / 2;
    lg.setDirty(true, true);
  }

  /** Any workflow JSON a user may bring: native, ComfyUI API format, or ComfyUI UI format (converted by the server). */
  async openJson(data, name) {
    const kind = detectFormat(data);
    let wf = data;
    if (kind === "comfy_api" || kind === "comfy_ui") {
      // the server converts ComfyUI's formats exactly as it runs them (the same schemas, the same rules)
      wf = await this.convertOnServer(data);
      if (!wf) return false;
    } else if (kind !== "native") {
      toast("That file is not a workflow (neither Chisel's format nor ComfyUI's).", "error", 6000);
      return false;
    }
    this.loadWorkflow(wf, { name });
    toast(`Opened ${name}`);
    return true;
  }

  async convertOnServer(data) {
    // ComfyUI's UI format needs the node schemas to map widget values to inputs: the server converts it.
    const r = await this.api.request("POST", "v1/workflow/convert", { json: { workflow: data }, allowError: true });
    if (r.ok && r.data?.workflow) return r.data.workflow;
    toast(`The server could not read that ComfyUI file: ${r.data?.error?.message || `HTTP ${r.status}`}`, "error", 8000);
    if (r.data?.errors?.length) this.showServerErrors(r.data.errors);
    return null;
  }

  async openFile(file) {
    const name = file.name.replace(/\.(json|png)$/i, "");
    if (file.type === "image/png" || /\.png$/i.test(file.name)) return this.openPng(file, name);
    let data;
    try {
      data = JSON.parse(await file.text());
    } catch (e) {
      toast(`${file.name} is not valid JSON: ${e.message}`, "error", 6000);
      return false;
    }
    return this.openJson(data, name);
  }

  async openPng(blob, name = "image") {
    const r = await this.api.request("POST", "v1/workflow/from-png", {
      body: blob, headers: { "Content-Type": "image/png" }, allowError: true,
    });
    if (!r.ok || !r.data?.workflow) {
      toast(r.data?.error?.message || "That picture carries no Chisel workflow.", "error", 6000);
      return false;
    }
    return this.openJson(r.data.workflow, name);
  }

  save() {
    closeTextEditor(true);
    const wf = graphToWorkflow(this.graph);
    const blob = new Blob([JSON.stringify(wf, null, 2) + "\n"], { type: "application/json" });
    const a = el("a", { href: URL.createObjectURL(blob), download: `${this.name || "workflow"}.json` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 5000);
  }

  async openBundled(name) {
    try {
      const wf = await this.api.get(`v1/workflows/${encodeURIComponent(name)}`);
      this.loadWorkflow(wf.workflow && wf.workflow.nodes ? wf.workflow : wf, { name });
      return true;
    } catch (e) {
      toast(`Could not open ${name}: ${e.message}`, "error");
      return false;
    }
  }

  async loadBundledList() {
    const sel = $("#workflows-select");
    try {
      const list = await this.api.get("v1/workflows");
      const items = Array.isArray(list) ? list : list.items || list.workflows || [];
      for (const w of items) sel.append(el("option", { value: w.name }, w.title || w.name));
    } catch { /* no bundled workflows */ }
  }

  async openInitialWorkflow() {
    let saved = null;
    try {
      saved = JSON.parse(localStorage.getItem(AUTOSAVE_KEY) || "null");
    } catch { saved = null; }
    if (saved?.workflow?.nodes) {
      this.loadWorkflow(saved.workflow, { name: saved.name || "workflow", quiet: true });
      return;
    }
    try {
      const wf = await this.api.get("v1/workflows/txt2img");
      this.loadWorkflow(wf.workflow && wf.workflow.nodes ? wf.workflow : wf, { name: "txt2img" });
    } catch {
      this.loadWorkflow({ format: "chisel-workflow", version: 1, nodes: {} }, { name: "workflow" });
    }
  }

  newWorkflow() {
    this.loadWorkflow({ format: "chisel-workflow", version: 1, nodes: {} }, { name: "workflow", history: false });
    this.history.check();
  }

  // -- models ---------------------------------------------------------------------------------------
  async refreshModels(announce = false) {
    const kinds = new Set();
    for (const s of Object.values(this.schemas)) for (const i of s.inputs) if (i.files) kinds.add(i.files);
    for (const kind of kinds) {
      let files;
      try {
        const r = await this.api.get(`v1/models/${encodeURIComponent(kind)}`);
        files = Array.isArray(r) ? r : r.files || r.items || r.models || [];
        files = files.map((f) => (typeof f === "string" ? f : f.name || f.filename)).filter(Boolean);
      } catch {
        continue;
      }
      for (const s of Object.values(this.schemas)) {
        for (const i of s.inputs) if (i.files === kind) i.choices = [...files];
      }
      for (const node of this.graph._nodes) {
        for (const w of node.widgets || []) {
          if (w.options?.chiselFiles === kind) {
            w.options.values = [...files];
            if (!w.value && files.length) w.value = files[0];
            if (kind === "input") this.showInputImage(node, w);
          }
        }
      }
    }
    this.lgcanvas.setDirty(true, false);
    if (announce) toast("Model lists refreshed");
  }

  /** Upload a picture into the input folder and pick it in the node's file list. */
  async uploadFor(node, widget, file = null) {
    if (!file) {
      file = await new Promise((resolve) => {
        const input = el("input", { type: "file", accept: "image/png,image/jpeg,image/webp,image/bmp,image/gif,image/tiff" });
        input.addEventListener("change", () => resolve(input.files?.[0] || null), { once: true });
        input.click();
      });
    }
    if (!file) return null;
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("type", "input");
    const r = await this.api.request("POST", "v1/upload", { body: form, allowError: true });
    if (!r.ok) {
      toast(`Upload failed: ${r.data?.error?.message || `HTTP ${r.status}`}`, "error", 6000);
      return null;
    }
    const name = r.data.subfolder ? `${r.data.subfolder}/${r.data.name}` : r.data.name;
    await this.refreshModels();
    const old = widget.value;
    widget.value = name;
    node.onWidgetChanged?.(widget.name, name, old, widget);
    this.history.check();
    toast(`Uploaded ${name}`);
    return name;
  }

  /** A Load Image node shows the picture it will load (when the server lists that file). */
  showInputImage(node, widget) {
    const v = widget.value;
    if (!v || !(widget.options.values || []).includes(v)) {
      if (node.chisel.images.length) setNodeImages(node, []);
      return;
    }
    const slash = v.lastIndexOf("/");
    const image = { filename: v.slice(slash + 1), subfolder: slash > 0 ? v.slice(0, slash) : "", type: "input" };
    setNodeImages(node, [this.api.viewUrl(image)]);
  }

  // -- running --------------------------------------------------------------------------------------
  async queue(count = null) {
    closeTextEditor(true);
    const n = Math.max(1, Math.min(100, Number(count ?? $("#batch-count").value) || 1));
    for (let i = 0; i < n; i++) {
      const wf = graphToWorkflow(this.graph);
      let r;
      if (i === 0) {
        // check first: a broken graph gets its errors from a 200 reply, not a failed request in the console
        let v;
        try {
          v = await this.api.request("POST", "v1/validate", { json: { workflow: wf }, allowError: true });
        } catch (e) {
          toast(`Could not reach the server: ${e.message}`, "error");
          return false;
        }
        if (v.ok && v.data && v.data.valid === false) {
          const errors = v.data.errors || [];
          this.showServerErrors(errors);
          toast(`Not queued: ${errors.length} problem${errors.length === 1 ? "" : "s"} in the workflow.`, "error", 6000);
          if (errors.some((e) => e.kind === "file_not_found")) this.refreshModels();
          return false;
        }
      }
      try {
        r = await this.api.request("POST", "v1/prompts", { json: { workflow: wf, client_id: this.api.clientId }, allowError: true });
      } catch (e) {
        toast(`Could not reach the server: ${e.message}`, "error");
        return false;
      }
      if (!r.ok) {
        const errors = r.data?.errors?.length ? r.data.errors : r.data?.error ? [r.data.error] : [{ kind: "error", message: `HTTP ${r.status}` }];
        this.showServerErrors(errors);
        toast(`Not queued: ${errors.length} problem${errors.length > 1 ? "s" : ""} in the workflow.`, "error", 6000);
        if (errors.some((e) => e.kind === "file_not_found")) this.refreshModels();
        return false;
      }
      this.clearErrors();
      this.prompts.set(r.data.prompt_id, { number: r.data.number });
      this.applySeedControls();
    }
    this.refreshQueue();
    return true;
  }

  /** After queueing: each seed moves on as its control says (fixed / increment / randomize). */
  applySeedControls() {
    let changed = false;
    for (const node of this.graph._nodes) {
      for (const ctl of node.widgets || []) {
        if (!ctl.chiselControlFor || ctl.value === "fixed") continue;
        const w = node.widgets.find((x) => x.name === ctl.chiselControlFor);
        const slot = node.inputs?.find((s) => s.name === ctl.chiselControlFor);
        if (!w || slot?.link != null) continue;
        const inp = w.chiselInput;
        if (ctl.value === "increment") w.value = w.value === -1 ? -1 : normalizeNumber(inp, Number(w.value) + 1);
        else if (ctl.value === "randomize") w.value = randomSeed(inp);
        changed = true;
      }
    }
    if (changed) {
      this.lgcanvas.setDirty(true, false);
      this.history.check();
    }
  }

  async validate() {
    closeTextEditor(true);
    const r = await this.api.request("POST", "v1/validate", { json: { workflow: graphToWorkflow(this.graph) }, allowError: true });
    const errors = r.data?.errors || [];
    if (r.ok && r.data?.valid) {
      this.clearErrors();
      toast("No problems found.");
    } else {
      this.showServerErrors(errors.length ? errors : [r.data?.error || { message: `HTTP ${r.status}` }]);
    }
  }

  clearErrors() {
    for (const node of this.graph?._nodes || []) {
      if (!node.chisel) continue;
      node.chisel.errors = [];
      node.has_errors = false;
      for (const s of node.inputs || []) s.hasErrors = false;
    }
    this.sidebar?.setErrors([]);
    this.lgcanvas?.setDirty(true, true);
  }

  /** Put each server error on its node (red outline, the input marked, a sentence under the node) and list them. */
  showServerErrors(errors, { clear = true } = {}) {
    if (clear) this.clearErrors();
    const list = [];
    for (const err of errors) {
      const node = err.node_id != null ? this.graph.getNodeById(lgId(err.node_id)) : null;
      const text = describeError(err, node);
      if (node?.chisel) {
        node.chisel.errors.push({ input: err.input, text, kind: err.kind });
        node.has_errors = true;
        const slot = err.input ? node.inputs?.find((s) => s.name === err.input) : null;
        if (slot) slot.hasErrors = true;
      }
      list.push({ node_id: err.node_id, title: node?.title || err.node_type, input: err.input, text, kind: err.kind });
    }
    this.sidebar.setErrors(list);
    this.lgcanvas.setDirty(true, true);
    window.chisel.lastErrors = list;
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
      this.sidebar.setQueue(await this.api.get("v1/queue"));
    } catch { /* shown when the socket reconnects */ }
  }

  clearRunState() {
    for (const node of this.graph?._nodes || []) {
      if (!node.chisel) continue;
      node.chisel.status = null;
      node.chisel.seconds = null;
      node.progress = 0;
    }
  }

  nodeFor(id) {
    return id == null ? null : this.graph.getNodeById(lgId(id));
  }

  mine(data) {
    // The server sends engine events only for this client's prompts. Some arrive before the HTTP reply that
    // names the prompt (a fast first node), so any prompt id counts.
    if (!data?.prompt_id) return false;
    if (!this.prompts.has(data.prompt_id)) this.prompts.set(data.prompt_id, {});
    return true;
  }

  bindSocket() {
    const api = this.api;
    const log = (type, data) => {
      this.events.push({ type, ...data, t: Date.now() });
      if (this.events.length > 500) this.events.splice(0, 100);
    };
    api.on("open", () => this.refreshQueue());
    api.on("queue", (d) => this.sidebar.setQueue(d));
    api.on("started", (d) => {
      log("started", d);
      if (!this.mine(d)) return;
      this.clearRunState();
      this.running = { prompt_id: d.prompt_id };
      this.sidebar.setRunning({ title: "Starting…", note: `prompt #${this.prompts.get(d.prompt_id)?.number ?? ""}` });
      this.sidebar.setPreview(null);
      this.lgcanvas.setDirty(true, true);
    });
    api.on("cached", (d) => {
      log("cached", d);
      if (!this.mine(d)) return;
      for (const id of d.nodes || []) {
        const n = this.nodeFor(id);
        if (n?.chisel) n.chisel.status = "cached";
      }
      this.lgcanvas.setDirty(true, true);
    });
    api.on("executing", (d) => {
      log("executing", d);
      if (!this.mine(d)) return;
      const prev = this.nodeFor(this.running?.node_id);
      if (prev?.chisel?.status === "running") prev.chisel.status = "done";
      const n = this.nodeFor(d.node_id);
      this.running = { prompt_id: d.prompt_id, node_id: d.node_id };
      if (n?.chisel) {
        n.chisel.status = "running";
        n.progress = 0;
      }
      this.sidebar.setRunning({ title: n ? n.title : `node ${d.node_id}`, note: "running" });
      this.lgcanvas.setDirty(true, true);
    });
    api.on("progress", (d) => {
      log("progress", d);
      if (!this.mine(d)) return;
      const n = this.nodeFor(d.node_id);
      if (n) n.progress = d.max ? Math.min(1, d.value / d.max) : 0;
      this.sidebar.setRunning({ title: n ? n.title : `node ${d.node_id}`, value: d.value, max: d.max });
      this.lgcanvas.setDirty(true, true);
    });
    api.on("preview", (blob) => {
      if (!this.running) return;
      const url = URL.createObjectURL(blob);
      this.sidebar.setPreview(url);
      const n = this.nodeFor(this.running.node_id);
      if (n?.chisel) {
        const old = n.chisel.previewUrl;
        n.chisel.previewUrl = url;
        setNodeImages(n, [url], "preview");
        if (old) setTimeout(() => URL.revokeObjectURL(old), 2000);
      }
      window.chisel.previews = (window.chisel.previews || 0) + 1;
    });
    api.on("executed", (d) => {
      log("executed", d);
      if (!this.mine(d)) return;
      const n = this.nodeFor(d.node_id);
      if (n?.chisel) {
        n.chisel.status = "done";
        n.progress = 0;
        if (typeof d.seconds === "number") n.chisel.seconds = d.seconds;
        const images = d.ui?.images || d.output?.images || [];
        if (images.length) {
          setNodeImages(n, images.map((im) => this.api.viewUrl(im)));
        } else if (n.chisel.previewUrl) {
          setNodeImages(n, []);
          n.chisel.previewUrl = null;
        }
      }
      const images = d.ui?.images || [];
      if (images.length) this.sidebar.addToGallery(images.map((image) => ({ image, prompt_id: d.prompt_id, node_id: d.node_id })));
      this.lgcanvas.setDirty(true, true);
    });
    api.on("error", (d) => {
      log("error", d);
      if (!this.mine(d)) return;
      const err = { ...(d.error || {}), node_id: d.node_id ?? d.error?.node_id };
      const n = this.nodeFor(err.node_id);
      if (n?.chisel) n.chisel.status = "error";
      this.showServerErrors([err], { clear: false });
      toast(describeError(err, n), "error", 8000);
    });
    api.on("interrupted", (d) => {
      log("interrupted", d);
      if (!this.mine(d)) return;
      toast("Interrupted");
    });
    api.on("finished", (d) => {
      log("finished", d);
      if (!this.mine(d)) return;
      for (const node of this.graph._nodes) {
        if (node.chisel?.status === "running") node.chisel.status = d.status === "success" ? "done" : null;
        node.progress = 0;
        if (node.chisel?.previewUrl) {
          URL.revokeObjectURL(node.chisel.previewUrl);
          node.chisel.previewUrl = null;
          setNodeImages(node, []);
        }
      }
      this.running = null;
      this.sidebar.setRunning(null);
      this.sidebar.setPreview(null);
      $("#last-run").textContent = `Last run: ${d.status}`;
      $("#last-run").dataset.status = d.status;
      if (d.outputs || d.timings) this.applyResult(d.prompt_id, d);
      else this.afterRun(d.prompt_id);
      if (d.status === "error" && d.errors?.length) this.showServerErrors(d.errors);
      this.lgcanvas.setDirty(true, true);
    });
    api.connect();
  }

  /** Timings and outputs come with "finished" (or, from older servers, with the history entry). */
  async afterRun(promptId) {
    let h;
    try {
      h = await this.api.get(`v1/history/${encodeURIComponent(promptId)}`);
    } catch {
      return;
    }
    this.applyResult(promptId, h);
  }

  applyResult(promptId, h) {
    for (const id of h.cached || []) {
      const n = this.nodeFor(id);
      if (n?.chisel && !n.chisel.status) n.chisel.status = "cached";
    }
    for (const [id, secs] of Object.entries(h.timings || {})) {
      const n = this.nodeFor(id);
      if (n?.chisel && n.chisel.status === "done" && typeof secs === "number") n.chisel.seconds = secs;
    }
    for (const [id, out] of Object.entries(h.outputs || {})) {
      const n = this.nodeFor(id);
      const images = out?.images || [];
      if (n?.chisel && images.length && !n.chisel.images.length) setNodeImages(n, images.map((im) => this.api.viewUrl(im)));
      if (images.length) this.sidebar.addToGallery(images.map((image) => ({ image, prompt_id: promptId, node_id: id })));
    }
    this.lgcanvas.setDirty(true, true);
  }

  async loadGallery() {
    try {
      const h = await this.api.get("v1/history", { limit: 20 });
      const items = [];
      for (const entry of h.items || []) {
        for (const [id, out] of Object.entries(entry.outputs || {})) {
          // temp files (previews) do not outlive the server, so older ones are left out
          for (const image of out?.images || []) {
            if (image.type !== "temp") items.push({ image, prompt_id: entry.prompt_id, node_id: id });
          }
        }
      }
      this.sidebar.addToGallery(items, { append: true });
    } catch { /* an empty gallery */ }
  }

  openLightbox(urls, index = 0) {
    this.lightbox.open(urls, index);
  }

  openGallery(key) {
    const items = this.sidebar.galleryItems();
    const i = Math.max(0, items.findIndex((x) => x.key === key));
    this.lightbox.open(items.map((x) => x.full), i, [{
      label: "Open its workflow",
      run: async (url, idx) => {
        const it = items[idx];
        try {
          const h = await this.api.get(`v1/history/${encodeURIComponent(it.prompt_id)}`);
          if (h.workflow) {
            this.lightbox.close();
            this.loadWorkflow(h.workflow, { name: `run ${it.prompt_id.slice(0, 6)}` });
          }
        } catch (e) {
          toast(`Could not open it: ${e.message}`, "error");
        }
      },
    }]);
  }

  // -- toolbar, keys, drop --------------------------------------------------------------------------
  bindToolbar() {
    $("#queue-btn").addEventListener("click", () => this.queue());
    $("#interrupt-btn").addEventListener("click", () => this.interrupt());
    $("#save-btn").addEventListener("click", () => this.save());
    $("#open-btn").addEventListener("click", () => $("#file-input").click());
    $("#file-input").addEventListener("change", async (e) => {
      const f = e.target.files?.[0];
      e.target.value = "";
      if (f) await this.openFile(f);
    });
    $("#new-btn").addEventListener("click", () => this.newWorkflow());
    $("#undo-btn").addEventListener("click", () => this.history.undo());
    $("#redo-btn").addEventListener("click", () => this.history.redo());
    $("#check-btn").addEventListener("click", () => this.validate());
    $("#workflows-select").addEventListener("change", async (e) => {
      const name = e.target.value;
      e.target.value = "";
      if (name) await this.openBundled(name);
    });
  }

  bindKeys() {
    document.addEventListener("keydown", (e) => {
      const mod = e.ctrlKey || e.metaKey;
      if (mod && e.key === "Enter") {
        e.preventDefault();
        this.queue();
        return;
      }
      if (this.palette.isOpen || this.lightbox.root) return;
      if (mod && (e.key === "s" || e.key === "S")) {
        e.preventDefault();
        this.save();
        return;
      }
      if (mod && (e.key === "o" || e.key === "O")) {
        e.preventDefault();
        $("#file-input").click();
        return;
      }
      if (isEditable(e.target) || isTextEditorOpen()) return;
      if (mod && !e.shiftKey && (e.key === "z" || e.key === "Z")) {
        e.preventDefault();
        this.history.undo();
      } else if (mod && ((e.shiftKey && (e.key === "z" || e.key === "Z")) || e.key === "y" || e.key === "Y")) {
        e.preventDefault();
        this.history.redo();
      }
    }, true);
  }

  bindDrop() {
    const wrap = document.body;
    wrap.addEventListener("dragover", (e) => {
      if ([...(e.dataTransfer?.types || [])].includes("Files")) {
        e.preventDefault();
        document.body.classList.add("dragging");
      }
    });
    wrap.addEventListener("dragleave", (e) => {
      if (e.target === document.body || e.relatedTarget === null) document.body.classList.remove("dragging");
    });
    wrap.addEventListener("drop", async (e) => {
      document.body.classList.remove("dragging");
      const file = e.dataTransfer?.files?.[0];
      if (!file) return;
      e.preventDefault();
      if (e.target === this.lgcanvas.canvas && file.type.startsWith("image/")) {
        // onto a Load Image node: upload it there; anywhere else a PNG is opened as a workflow
        const [x, y] = this.lgcanvas.convertEventToCanvasOffset(e);
        const node = this.graph.getNodeOnPos(x, y);
        const w = node?.widgets?.find((x) => x.options?.chiselFiles === "input");
        if (w) {
          await this.uploadFor(node, w, file);
          return;
        }
      }
      if (/\.(png|json)$/i.test(file.name) || file.type === "image/png" || file.type === "application/json") await this.openFile(file);
      else toast("Drop a Chisel PNG or a workflow .json file.", "warn");
    });
  }
}

// -- a small, stable surface for tests and the browser console ------------------------------------------
function slotClient(app, id, kind, name) {
  const node = app.nodeFor(id);
  if (!node) return null;
  let p;
  if (kind === "output") {
    const i = typeof name === "number" ? name : node.findOutputSlot(name);
    if (i < 0) return null;
    p = node.getOutputPos(i);
  } else {
    const i = typeof name === "number" ? name : node.findInputSlot(name);
    if (i < 0) return null;
    const slot = node.inputs[i];
    if (slot.widget) {
      // a widget input: a link dropped anywhere on its widget connects to it
      const w = node.widgets.find((x) => x.name === slot.widget.name);
      p = [node.pos[0] + node.size[0] / 2, node.pos[1] + (w?.last_y ?? 0) + 10];
    } else p = node.getInputPos(i);
  }
  const r = graphRectToClient(app.lgcanvas, p[0], p[1], 0, 0);
  return [r.left, r.top];
}

const app = new App();
window.chisel = {
  app,
  ready: false,
  workflow: () => graphToWorkflow(app.graph),
  load: (wf) => app.loadWorkflow(wf),
  nodes: () => app.graph._nodes.map((n) => ({
    id: String(n.id), type: n.type, title: n.title, pos: [...n.pos], size: [...n.size],
    status: n.chisel?.status ?? null, errors: (n.chisel?.errors || []).map((e) => ({ ...e })),
    images: [...(n.chisel?.images || [])], missing: n instanceof MissingNode,
    widgets: Object.fromEntries((n.widgets || []).filter((w) => w.serialize !== false).map((w) => [w.name, w.value])),
  })),
  slotPos: (id, kind, name) => slotClient(app, id, kind, name),
  widgetPos: (id, name) => {
    const n = app.nodeFor(id);
    const w = n?.widgets?.find((x) => x.name === name);
    if (!w) return null;
    const h = w.computedHeight ? w.computedHeight / 2 - 2 : 10;
    const r = graphRectToClient(app.lgcanvas, n.pos[0] + n.size[0] / 2, n.pos[1] + (w.last_y ?? w.y) + h, 0, 0);
    return [r.left, r.top];
  },
  titlePos: (id) => {
    const n = app.nodeFor(id);
    if (!n) return null;
    const r = graphRectToClient(app.lgcanvas, n.pos[0] + 30, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT / 2, 0, 0);
    return [r.left, r.top];
  },
  events: () => app.events.map((e) => ({ ...e })),
  undoDepth: () => app.history.undoStack.length,
};

app.start().catch((e) => {
  console.error(e);
  app.fatal(`Chisel failed to start: ${e.message}`);
});

export { app, ApiError };
