// The Chisel server API (/v1): fetch with the session's token, and the WebSocket event stream.
// Paths are relative to the page, so Chisel also works behind a reverse proxy under a sub-path.

const TOKEN_KEY = "chisel.token";
const CLIENT_KEY = "chisel.client_id";

function newId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID().replaceAll("-", "");
  return Array.from({ length: 32 }, () => Math.floor(Math.random() * 16).toString(16)).join("");
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export class Api {
  constructor({ askToken } = {}) {
    this.base = new URL(".", document.baseURI);
    this.token = sessionStorage.getItem(TOKEN_KEY) || null;
    this.clientId = sessionStorage.getItem(CLIENT_KEY) || newId();
    sessionStorage.setItem(CLIENT_KEY, this.clientId);
    this.askToken = askToken; // async (message) => token | null
    this.ws = null;
    this.handlers = {};
    this.onStatus = () => {};
    this.closed = false;
  }

  url(path, params = {}) {
    const u = new URL(path.replace(/^\//, ""), this.base);
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) u.searchParams.set(k, v);
    return u;
  }

  /** A URL for <img src> and links: the token rides in the query, since headers cannot. */
  fileUrl(path, params = {}) {
    return this.url(path, { ...params, token: this.token || undefined }).toString();
  }

  viewUrl(image, thumb) {
    return this.fileUrl("v1/view", {
      filename: image.filename, subfolder: image.subfolder || "", type: image.type || "output",
      thumb: thumb || undefined,
    });
  }

  /** The answer to a GET the page asked for early (index.html, before the modules loaded), once; null when
   * there is none, or when the page has a token that early request went without. */
  early(url) {
    const early = window.chiselEarly;
    const key = url.href.startsWith(this.base.href) ? url.href.slice(this.base.href.length) : null;
    if (!early || key === null || !early.has(key)) return null;
    const answer = early.get(key);
    early.delete(key);
    return this.token ? null : answer;
  }

  /** Ask the server whether a token is needed; ask the user for one (once per session) when it is. */
  async init() {
    let required = false;
    let signedIn = false;
    try {
      const url = this.url("v1/auth");
      const r = (await this.early(url)) ?? await fetch(url);
      if (r.ok) ({ required = false, signed_in: signedIn = false } = await r.json());
    } catch (e) {
      throw new Error(`cannot reach the Chisel server: ${e.message}`);
    }
    if (!required) return;
    // signed in by the page's ?token= link: the cookie stands for the token on every request of this page
    if (signedIn && !this.token) return;
    let message = "This Chisel server needs an access token.";
    for (;;) {
      if (!this.token) {
        this.token = await this.askToken(message);
        if (!this.token) throw new Error("no access token given");
      }
      const r = await fetch(this.url("v1/nodes"), { headers: this.headers() });
      if (r.status !== 401 && r.status !== 403) {
        sessionStorage.setItem(TOKEN_KEY, this.token);
        return;
      }
      this.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      message = "That token was not accepted. Try again.";
    }
  }

  headers(extra = {}) {
    const h = { ...extra };
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    return h;
  }

  async request(method, path, { json, body, headers, params, allowError } = {}) {
    const init = { method, headers: this.headers(headers) };
    if (json !== undefined) {
      init.body = JSON.stringify(json);
      init.headers["Content-Type"] = "application/json";
    } else if (body !== undefined) {
      init.body = body;
    }
    const url = this.url(path, params);
    const r = (method === "GET" && !headers && (await this.early(url))) || await fetch(url, init);
    let data = null;
    const type = r.headers.get("Content-Type") || "";
    if (type.includes("json")) data = await r.json();
    else data = await r.text();
    if (r.status === 401 && this.askToken) {
      this.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      this.token = await this.askToken("The server asks for an access token.");
      if (this.token) {
        sessionStorage.setItem(TOKEN_KEY, this.token);
        this.reconnect();
        return this.request(method, path, { json, body, headers, params, allowError });
      }
    }
    if (!r.ok && !allowError) throw new ApiError(r.status, typeof data === "object" ? data : { error: { message: data } });
    return allowError ? { ok: r.ok, status: r.status, data } : data;
  }

  get(path, params) { return this.request("GET", path, { params }); }
  post(path, json, opts = {}) { return this.request("POST", path, { json, ...opts }); }
  del(path) { return this.request("DELETE", path); }

  // -- WebSocket ------------------------------------------------------------------------------------
  on(type, fn) { (this.handlers[type] ||= []).push(fn); }

  emit(type, data) {
    for (const fn of this.handlers[type] || []) {
      try { fn(data); } catch (e) { console.error(e); }
    }
  }

  connect() {
    // the user's preview setting: "none" asks the server for no preview frames (any other method gets latent2rgb)
    const previews = this.previews === "none" ? "none" : undefined;
    const u = this.url("v1/ws", { client_id: this.clientId, token: this.token || undefined, previews });
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(u);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => { this.onStatus("connected"); this.emit("open", null); };
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") {
        let msg;
        try { msg = JSON.parse(ev.data); } catch { return; }
        this.emit(msg.type, msg.data || {});
      } else {
        const view = new DataView(ev.data);
        if (ev.data.byteLength < 8) return;
        const kind = view.getUint32(0);
        const format = view.getUint32(4);
        if (kind === 1) {
          const mime = format === 2 ? "image/png" : "image/jpeg";
          this.emit("preview", new Blob([ev.data.slice(8)], { type: mime }));
        }
      }
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.onStatus("disconnected");
      if (!this.closed) setTimeout(() => { if (this.ws === ws) this.connect(); }, 1000);
    };
    ws.onerror = () => {}; // onclose follows and reconnects
  }

  reconnect() {
    const old = this.ws;
    this.ws = null;
    if (old) old.close();
    this.connect();
  }
}
