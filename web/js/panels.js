// The side panel (progress with live preview, errors, queue, gallery), the lightbox, toasts and the token dialog.

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

const $ = (sel) => document.querySelector(sel);

export function toast(text, kind = "info", ms = 4000) {
  const box = $("#toasts");
  const t = el("div", { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status" }, text);
  box.append(t);
  setTimeout(() => t.remove(), ms);
  return t;
}

/** Ask for the access token in a small modal; resolves to the token, or null when cancelled. */
export function askToken(message) {
  return new Promise((resolve) => {
    const input = el("input", { type: "password", id: "token-input", autocomplete: "off", "aria-label": "Access token" });
    const finish = (v) => { back.remove(); resolve(v); };
    const ok = el("button", { type: "submit", class: "primary" }, "Connect");
    const form = el("form", { class: "modal", id: "token-dialog" },
      el("h2", {}, "Access token"), el("p", {}, message),
      el("p", { class: "muted" }, "It is kept for this browser tab only."), input,
      el("div", { class: "modal-buttons" }, ok));
    form.addEventListener("submit", (e) => { e.preventDefault(); finish(input.value.trim() || null); });
    const back = el("div", { class: "modal-back" }, form);
    document.body.append(back);
    input.focus();
  });
}

export class Lightbox {
  constructor() {
    this.root = null;
  }

  open(urls, index = 0, actions = []) {
    this.close();
    let i = index;
    const img = el("img", { alt: "result", id: "lightbox-img" });
    const caption = el("div", { class: "lightbox-caption" });
    const show = () => {
      img.src = urls[i];
      caption.textContent = urls.length > 1 ? `${i + 1} / ${urls.length}` : "";
    };
    const bar = el("div", { class: "lightbox-bar" },
      ...actions.map((a) => el("button", { onclick: () => { a.run(urls[i], i); } }, a.label)),
      el("a", { class: "button", href: urls[i], download: "", onclick: (e) => { e.currentTarget.href = urls[i]; } }, "Download"),
      el("button", { onclick: () => this.close() }, "Close"));
    this.root = el("div", { class: "lightbox", role: "dialog", "aria-label": "Image" }, img, caption, bar);
    this.root.addEventListener("click", (e) => { if (e.target === this.root) this.close(); });
    this.key = (e) => {
      if (e.key === "Escape") this.close();
      else if (e.key === "ArrowRight" && i < urls.length - 1) { i++; show(); }
      else if (e.key === "ArrowLeft" && i > 0) { i--; show(); }
    };
    document.addEventListener("keydown", this.key);
    document.body.append(this.root);
    show();
  }

  close() {
    if (!this.root) return;
    document.removeEventListener("keydown", this.key);
    this.root.remove();
    this.root = null;
  }
}

export class Sidebar {
  constructor(app) {
    this.app = app;
    this.progress = $("#progress");
    this.errors = $("#errors");
    this.queue = $("#queue-list");
    this.gallery = $("#gallery-grid");
    this.previewUrl = null;
    this.galleryKeys = new Set();
  }

  // -- progress -------------------------------------------------------------------------------------
  setRunning(info) {
    // info: null (idle) or {title, value, max, activity, stage, note}
    const p = this.progress;
    if (!info) {
      p.classList.add("idle");
      $("#progress-title").textContent = "Idle";
      $("#progress-step").textContent = "";
      $("#progress-fill").style.width = "0%";
      return;
    }
    p.classList.remove("idle");
    $("#progress-title").textContent = info.title;
    if (info.max && info.activity) {
      // a stage of a load (or a save): "loading: building the UNet (3 of 8)"
      $("#progress-step").textContent = `${info.activity}${info.stage ? `: ${info.stage}` : ""} (${info.value + 1} of ${info.max})`;
      $("#progress-fill").style.width = `${Math.round((100 * info.value) / info.max)}%`;
    } else if (info.max) {
      $("#progress-step").textContent = `step ${info.value} of ${info.max}`;
      $("#progress-fill").style.width = `${Math.round((100 * info.value) / info.max)}%`;
    } else {
      $("#progress-step").textContent = info.note || "";
      $("#progress-fill").style.width = "0%";
    }
  }

  setPreview(url) {
    const img = $("#preview-img");
    if (!url) {
      img.removeAttribute("src");
      img.hidden = true;
      return;
    }
    img.onload = () => img.classList.toggle("pixel", img.naturalWidth < 128);
    img.src = url;
    img.hidden = false;
    if (this.previewUrl && this.previewUrl !== url && this.previewUrl.startsWith("blob:")) {
      const old = this.previewUrl;
      setTimeout(() => URL.revokeObjectURL(old), 2000);
    }
    this.previewUrl = url;
  }

  // -- errors ---------------------------------------------------------------------------------------
  setErrors(list) {
    // list: [{node_id, title, input, text}]
    const box = this.errors;
    const ul = $("#error-list");
    ul.replaceChildren();
    box.hidden = !list.length;
    $("#error-count").textContent = list.length ? `(${list.length})` : "";
    for (const e of list) {
      const where = e.title ? `${e.title}${e.node_id != null ? ` #${e.node_id}` : ""}` : "Workflow";
      const li = el("li", { class: "error-item", dataset: { node: e.node_id ?? "", input: e.input ?? "", kind: e.kind ?? "" } },
        el("strong", {}, where), " ", el("span", {}, e.text));
      if (e.node_id != null) {
        li.tabIndex = 0;
        li.setAttribute("role", "button");
        li.addEventListener("click", () => this.app.focusNode(e.node_id));
        li.addEventListener("keydown", (ev) => {
          if (ev.key === "Enter" || ev.key === " ") {
            ev.preventDefault();
            this.app.focusNode(e.node_id);
          }
        });
      }
      ul.append(li);
    }
  }

  // -- queue ----------------------------------------------------------------------------------------
  setQueue({ running = [], pending = [] }) {
    const mine = this.app.api.clientId;
    const ul = this.queue;
    ul.replaceChildren();
    const row = (item, state) => {
      const own = item.client_id === mine;
      const label = `#${item.number ?? "?"}`;
      const li = el("li", { class: `queue-item ${state}${own ? " mine" : ""}`, dataset: { prompt: item.prompt_id } },
        el("span", { class: "queue-num" }, label),
        el("span", { class: "queue-state" }, state === "running" ? "running" : "waiting"),
        el("span", { class: "queue-who" }, own ? "this tab" : "other client"));
      if (state === "running") {
        li.append(el("button", { class: "small", title: "Stop this run", onclick: () => this.app.interrupt() }, "Stop"));
      } else {
        li.append(el("button", { class: "small", title: "Remove from the queue", onclick: () => this.app.cancel(item.prompt_id) }, "Remove"));
      }
      ul.append(li);
    };
    running.forEach((r) => row(r, "running"));
    pending.forEach((r) => row(r, "pending"));
    this.app.queuePanel?.decorate(ul, pending); // move up / down
    if (!running.length && !pending.length) ul.append(el("li", { class: "muted" }, "The queue is empty."));
    $("#queue-count").textContent = running.length + pending.length ? `(${running.length + pending.length})` : "";
    $("#interrupt-btn").disabled = !running.length;
  }

  // -- history --------------------------------------------------------------------------------------
  /** entries: GET /v1/history items, newest first. Clicking one shows its images and offers its workflow. */
  setHistory(entries) {
    const ul = $("#history-list");
    ul.replaceChildren();
    for (const h of entries) {
      const image = Object.values(h.outputs || {}).flatMap((o) => o?.images || []).find((im) => im.type !== "temp")
        || Object.values(h.outputs || {}).flatMap((o) => o?.images || [])[0];
      const thumb = image ? el("img", { src: this.app.api.viewUrl(image, 64), alt: "", loading: "lazy" })
        : el("span", { class: "history-thumb-empty" });
      if (image) thumb.addEventListener("error", () => thumb.replaceWith(el("span", { class: "history-thumb-empty" })), { once: true });
      const when = h.finished ? new Date(h.finished * (h.finished < 1e12 ? 1000 : 1)).toLocaleTimeString() : "";
      const label = `Run #${h.number ?? "?"}, ${h.status}${when ? `, ${when}` : ""}: show its images`;
      const btn = el("button", { class: "history-item", type: "button", "aria-label": label,
        title: "Show this run's images, and load its workflow from there", dataset: { prompt: h.prompt_id, status: h.status } }, thumb,
      el("span", { class: "history-text" }, el("span", {}, `#${h.number ?? "?"} `, el("span", { class: "history-status" }, h.status)),
        el("span", { class: "history-when" }, when)));
      btn.addEventListener("click", () => this.app.runView.toggle(h)); // its images, and "Load workflow"
      const li = el("li", { class: "history-row" }, btn);
      this.app.queuePanel?.historyActions(li, h); // re-run with a new seed
      ul.append(li);
    }
    $("#history-empty").hidden = entries.length > 0;
    this.app.runView?.markSelected();
  }

  // -- gallery --------------------------------------------------------------------------------------
  /** items: [{image, prompt_id, node_id}] newest first */
  addToGallery(items, { append = false } = {}) {
    const grid = this.gallery;
    const nodes = [];
    for (const it of items) {
      const key = `${it.image.type}/${it.image.subfolder || ""}/${it.image.filename}`;
      if (this.galleryKeys.has(key)) continue;
      this.galleryKeys.add(key);
      const full = this.app.api.viewUrl(it.image);
      const thumb = this.app.api.viewUrl(it.image, 256);
      const img = el("img", { src: thumb, alt: it.image.filename, loading: "lazy", title: it.image.filename });
      img.addEventListener("error", () => { if (img.src !== full) img.src = full; }, { once: true });
      const a = el("button", { class: "gallery-item", "aria-label": `Open ${it.image.filename}`,
        dataset: { filename: it.image.filename, prompt: it.prompt_id || "" } }, img);
      a.addEventListener("click", () => this.app.openGallery(key));
      a._item = { ...it, key, full };
      nodes.push(a);
    }
    if (append) grid.append(...nodes);
    else grid.prepend(...nodes);
    while (grid.children.length > 60) {
      const last = grid.lastElementChild;
      this.galleryKeys.delete(last._item?.key);
      last.remove();
    }
    $("#gallery-empty").hidden = grid.children.length > 0;
  }

  galleryItems() {
    return [...this.gallery.children].map((c) => c._item).filter(Boolean);
  }
}
