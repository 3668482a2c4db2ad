// Chisel's canvas editor: the App holds the graph, the server connection and the panels, and hands each concern
// to its module (canvas glue, files, queue, socket events, results, models, controls).

import { LGraphGroup } from "../vendor/litegraph/litegraph.es.js";
import { Api } from "./api.js";
import { registerSchemas } from "./nodes.js";
import { graphToWorkflow, workflowToGraph, changedNodes, downstreamOf } from "./format.js";
import { Palette } from "./palette.js";
import { History } from "./undo.js";
import { closeTextEditor } from "./widgets.js";
import { describeError } from "./errors.js";
import { Sidebar, Lightbox, toast, askToken } from "./panels.js";
import { configureLiteGraph, createCanvas, openPalette, addNodeAt, fitView } from "./canvas.js";
import { Files } from "./files.js";
import { Models } from "./models.js";
import { Runner } from "./queue.js";
import { RunEvents } from "./socket.js";
import { Results } from "./results.js";
import { bindToolbar, bindKeys, bindDrop } from "./controls.js";
import { MODE_ALWAYS } from "./modes.js";
import { registerNotes } from "./notes.js";
import { MaskEditor } from "./maskeditor.js";
import { Settings } from "./settings.js";
import { Minimap } from "./minimap.js";
import { Subgraphs, nodeAtPath, allNodes } from "./subgraphs.js";
import { Tabs } from "./tabs.js";
import { QueuePanel } from "./queuepanel.js";
import { RunView } from "./runview.js";
import { ImagesIn } from "./images.js";
import { WorkflowBrowser } from "./browser.js";

const $ = (sel) => document.querySelector(sel);

export function lgId(id) {
  return /^[1-9]\d{0,14}$/.test(String(id)) ? Number(id) : String(id);
}

export class App {
  constructor() {
    this.schemas = {};
    this.prompts = new Map(); // prompt_id -> {number} for prompts queued from this tab
    this.events = []; // recent engine events (for the status line and tests)
    this.name = "workflow";
    this.running = null; // {prompt_id, node_id}
    this.lightbox = new Lightbox();
    this.palette = new Palette(this);
    this.files = new Files(this);
    this.models = new Models(this);
    this.runner = new Runner(this);
    this.results = new Results(this);
    this.socket = new RunEvents(this);
    this.maskEditor = new MaskEditor(this);
    this.settings = new Settings(this);
    this.subgraphs = new Subgraphs(this);
    this.tabs = new Tabs(this);
    this.queuePanel = new QueuePanel(this);
    this.runView = new RunView(this);
    this.imagesIn = new ImagesIn(this);
    this.browser = new WorkflowBrowser(this);
  }

  async start() {
    this.setStatus("connecting…");
    this.api = new Api({ askToken });
    this.api.onStatus = (s) => this.setStatus(s);
    try {
      await this.api.init();
      // the start workflow (for a browser that keeps no tabs) is asked for alongside the node types and the user's
      // settings (which never fail the start: defaults apply), not one round trip after them
      this.startWorkflow = this.tabs.readStored() ? null : this.api.get("v1/workflows/txt2img").catch(() => null);
      [this.schemas] = await Promise.all([this.api.get("v1/nodes"), this.settings.load()]);
    } catch (e) {
      this.setStatus("offline");
      this.fatal(`Could not load the node types from the server: ${e.message}`);
      return;
    }
    configureLiteGraph();
    registerSchemas(this.schemas, this);
    registerNotes();
    createCanvas(this);
    this.subgraphs.bind();
    this.minimap = new Minimap(this, $("#minimap"));
    this.lgcanvas.onDrawForeground = () => this.minimap.schedule(); // after every frame of the canvas
    this.settings.applyCanvas();
    this.sidebar = new Sidebar(this);
    this.sidebar.setRunning(null);
    this.history = new History({
      capture: () => JSON.stringify(graphToWorkflow(this.graph)),
      restore: (s) => this.loadWorkflow(JSON.parse(s), { history: false, keepView: true, quiet: true }),
      onChange: (h) => this.onHistory(h),
      onStep: (before, after) => this.onEdit(JSON.parse(before), JSON.parse(after)),
      busy: () => !!this.lgcanvas?.pointer?.isDown,
    });
    bindToolbar(this);
    bindKeys(this);
    bindDrop(this);
    this.imagesIn.bind(); // pictures pasted from the clipboard
    this.socket.bind(this.api);
    await this.tabs.start(); // the open tabs kept in the browser, else the start workflow
    this.refreshQueue();
    this.results.loadGallery();
    this.refreshModels();
    this.files.loadBundledList();
    window.addEventListener("focus", () => this.refreshModels());
    window.chiselEarly = null; // answers asked for early that the start did not use would be stale later
    document.body.dataset.ready = "1";
    window.chisel.ready = true;
    // for benchmarks/canvas_load.py: ready, and the first frame drawn after it (ms since navigation start)
    performance.mark("chisel:ready");
    requestAnimationFrame(() => requestAnimationFrame(() => performance.mark("chisel:drawn")));
  }

  setTitle(name) {
    this.name = name;
    document.title = `${name} · Chisel`;
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

  // -- what other modules call --------------------------------------------------------------------
  queue(count) { return this.runner.queue(count); }
  validate() { return this.runner.validate(); }
  interrupt() { return this.runner.interrupt(); }
  cancel(promptId) { return this.runner.cancel(promptId); }
  refreshQueue() { return this.runner.refreshQueue(); }
  refreshModels(announce = false) { return this.models.refresh(announce); }
  uploadFor(node, widget, file = null, opts = {}) { return this.models.uploadFor(node, widget, file, opts); }
  showInputImage(node, widget) { return this.models.showInputImage(node, widget); }
  openFile(file) { return this.files.openFile(file); }
  /** Save the tab on the server (Ctrl+S); download() gives the workflow as a file (Ctrl+Shift+S). */
  save() { return this.browser.quickSave(); }
  download() { return this.files.save(); }
  openPalette(e, from) { return openPalette(this, e, from); }
  addNodeAt(type, pos, from) { return addNodeAt(this, type, pos, from); }
  fitView() { return fitView(this.lgcanvas.graph, this.lgcanvas); }
  openLightbox(urls, index = 0) { this.lightbox.open(urls, index); }
  openGallery(key) { return this.results.openGallery(key); }

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
    this.tabs.changed(h); // kept in the browser with every open tab
  }

  /**
   * A user's edit (one undo step). When it changed what runs, the errors shown are cleared, and so are the run
   * badges of the changed nodes and of everything downstream of them (their timings no longer hold).
   */
  onEdit(before, after) {
    if (this.tabs.current) this.tabs.current.edited = true;
    const changed = changedNodes(before, after);
    const removed = Object.keys(before.nodes || {}).some((id) => !(id in (after.nodes || {})));
    if (!changed.length && !removed) return; // moved, resized, recoloured: nothing that runs
    for (const id of downstreamOf(after.nodes || {}, changed)) {
      const n = this.nodeFor(id);
      if (!n?.chisel) continue;
      n.chisel.status = null;
      n.chisel.seconds = null;
    }
    this.clearErrors();
  }

  /** Bypass or mute the nodes (ComfyUI's Ctrl+B / Ctrl+M); when all of them already are, back to normal. */
  toggleMode(mode, nodes) {
    if (!nodes.length) return;
    const next = nodes.every((n) => n.mode === mode) ? MODE_ALWAYS : mode;
    for (const n of nodes) n.mode = next;
    this.lgcanvas.setDirty(true, true);
    this.history.check({ force: true });
  }

  /** Ctrl+G: a group around the selected nodes (its title can be edited by double-clicking it). */
  groupSelection() {
    const nodes = this.selectedNodes();
    if (!nodes.length) {
      toast("Select the nodes to group first.", "warn");
      return null;
    }
    const group = new LGraphGroup("Group");
    this.lgcanvas.graph.add(group);
    group.resizeTo(nodes, 12);
    this.lgcanvas.setDirty(true, true);
    this.history.check({ force: true });
    return group;
  }

  /** Alt+C: collapse the selected nodes (or expand them when all are collapsed). */
  collapseSelection() {
    const nodes = this.selectedNodes();
    if (!nodes.length) return;
    const collapse = !nodes.every((n) => n.flags?.collapsed);
    for (const n of nodes) if (!!n.flags?.collapsed !== collapse) n.collapse(true);
    this.lgcanvas.setDirty(true, true);
    this.history.check({ force: true });
  }

  selectedNodes() {
    return Object.values(this.lgcanvas.selected_nodes || {});
  }

  /** Every node, inside subgraphs too. */
  allNodes() {
    return this.graph ? allNodes(this.graph) : [];
  }

  nodeFor(id) {
    return id == null ? null : nodeAtPath(this.graph, id);
  }

  focusNode(id) {
    const node = this.nodeFor(id);
    if (!node) return;
    this.subgraphs.reveal(id); // a node inside a subgraph: open it
    this.lgcanvas.centerOnNode(node);
    this.lgcanvas.selectNode(node);
  }

  /** Put a workflow (native) on the canvas. */
  loadWorkflow(wf, { history = true, keepView = false, name, quiet = false } = {}) {
    closeTextEditor(false);
    this.clearRunState();
    const path = keepView && !name ? this.subgraphs.path() : []; // undo/redo stay in the subgraph shown
    const problems = workflowToGraph(this.graph, wf, this.schemas);
    this.subgraphs.afterLoad(path);
    if (name) this.setTitle(name);
    if (!keepView) this.fitView();
    this.lgcanvas.setDirty(true, true);
    if (history) {
      this.history.reset();
      this.tabs.opened(this.name);
    }
    if (!quiet) this.showProblems(problems);
    return problems;
  }

  // -- node states and error marks ----------------------------------------------------------------
  clearRunState() {
    for (const node of this.allNodes()) {
      if (!node.chisel) continue;
      node.chisel.status = null;
      node.chisel.seconds = null;
      node.progress = 0;
    }
  }

  showProblems(problems) {
    this.clearErrors();
    if (!problems.length) return;
    const list = problems.map((p) => ({ ...p, kind: "load" }));
    for (const p of list) {
      const node = p.node_id != null ? this.nodeFor(p.node_id) : null;
      if (node) {
        node.chisel.errors.push({ input: p.input, text: p.text });
        node.has_errors = true;
        p.title = node.title;
      }
    }
    this.sidebar.setErrors(list);
    toast(`Opened with ${problems.length} problem${problems.length > 1 ? "s" : ""}: see Errors.`, "warn");
  }

  clearErrors() {
    for (const node of this.allNodes()) {
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
      const node = this.nodeFor(err.node_id);
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
}
