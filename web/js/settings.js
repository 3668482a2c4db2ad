// The user's settings, kept by the server per user (ComfyUI's /settings, in the Chisel root's user folder) so a
// reload or another browser keeps them: live previews, the seed control of new nodes, how links are drawn, the
// minimap and the theme. A panel from the toolbar changes them; each change is saved at once and takes effect at once.

import { LiteGraph } from "../vendor/litegraph/litegraph.es.js";
import { el, toast } from "./panels.js";

const LINK_MODES = { spline: LiteGraph.SPLINE_LINK, straight: LiteGraph.STRAIGHT_LINK, linear: LiteGraph.LINEAR_LINK };

/**
 * Each setting: its key in the settings file (ComfyUI's own key where ComfyUI has one, so its frontend reads the
 * same file), the choices shown, and how a stored value maps to a choice and back.
 */
export const SETTINGS = {
  previews: {
    key: "Chisel.PreviewMethod", label: "Live previews", default: "auto",
    choices: [["none", "None"], ["auto", "Auto"], ["latent2rgb", "Latent to RGB"], ["taesd", "TAESD"]],
    // the server makes its previews with latent2rgb; auto and taesd get those too
    note: "Chisel's server draws previews from the latents (latent2rgb) for every method but none.",
  },
  seedControl: {
    key: "Chisel.SeedControlDefault", label: "Seed control of new nodes", default: "randomize",
    choices: [["fixed", "fixed"], ["increment", "increment"], ["decrement", "decrement"], ["randomize", "randomize"]],
  },
  linkStyle: {
    key: "Comfy.LinkRenderMode", label: "Links", default: "spline",
    choices: [["spline", "Spline"], ["straight", "Straight"], ["linear", "Linear"]],
    toStored: (v) => LINK_MODES[v],
    fromStored: (v) => Object.keys(LINK_MODES).find((k) => LINK_MODES[k] === v),
  },
  minimap: {
    key: "Comfy.Minimap.Visible", label: "Minimap", default: "on",
    choices: [["on", "Shown"], ["off", "Hidden"]],
    toStored: (v) => v === "on",
    fromStored: (v) => (v === true ? "on" : v === false ? "off" : undefined),
  },
  theme: {
    key: "Comfy.ColorPalette", label: "Theme", default: "dark",
    choices: [["dark", "Dark"], ["light", "Light"]],
    fromStored: (v) => (v === "light" ? "light" : typeof v === "string" ? "dark" : undefined),
  },
};

// the canvas's own colours per theme (the page's come from CSS variables on body.theme-*); nodes and widgets are
// drawn with LiteGraph's defaults, which the light theme replaces (a node's own colour stays)
const CANVAS_COLOURS = {
  dark: { background: "#15181e", grid: true },
  light: { background: "#eef0f4", grid: false },
};
const LIGHT_NODES = {
  NODE_TITLE_COLOR: "#2a2f3a", NODE_SELECTED_TITLE_COLOR: "#000", NODE_TEXT_COLOR: "#333a46",
  NODE_DEFAULT_COLOR: "#cdd3de", NODE_DEFAULT_BGCOLOR: "#f8f9fb", NODE_DEFAULT_BOXCOLOR: "#7d8594",
  WIDGET_BGCOLOR: "#ffffff", WIDGET_OUTLINE_COLOR: "#a3aab6", WIDGET_TEXT_COLOR: "#1f2430",
  WIDGET_SECONDARY_TEXT_COLOR: "#5d6574",
};
const DARK_NODES = Object.fromEntries(Object.keys(LIGHT_NODES).map((k) => [k, LiteGraph[k]]));

export class Settings {
  constructor(app) {
    this.app = app;
    this.values = Object.fromEntries(Object.entries(SETTINGS).map(([name, s]) => [name, s.default]));
  }

  get(name) { return this.values[name]; }

  /** Read the user's settings from the server; anything missing or unknown keeps its default. */
  async load() {
    let stored = {};
    try {
      stored = (await this.app.api.get("settings")) || {};
    } catch (e) {
      toast(`Could not read your settings (${e.message}); using the defaults.`, "warn");
    }
    for (const [name, s] of Object.entries(SETTINGS)) {
      if (!(s.key in stored)) continue;
      const v = s.fromStored ? s.fromStored(stored[s.key]) : stored[s.key];
      if (s.choices.some(([c]) => c === v)) this.values[name] = v;
    }
    this.applyPage();
  }

  /** Change one setting: take effect now, save it for this user. */
  async set(name, value) {
    const s = SETTINGS[name];
    if (!s.choices.some(([c]) => c === value) || this.values[name] === value) return;
    this.values[name] = value;
    this.applyPage();
    this.applyCanvas();
    if (name === "previews") this.app.api.reconnect();
    try {
      await this.app.api.post(`settings/${encodeURIComponent(s.key)}`, s.toStored ? s.toStored(value) : value);
    } catch (e) {
      toast(`Could not save the setting: ${e.message}`, "error");
    }
  }

  /** What the page shows before the canvas exists: the theme. */
  applyPage() {
    const theme = this.values.theme;
    document.body.classList.toggle("theme-light", theme === "light");
    document.body.classList.toggle("theme-dark", theme !== "light");
    this.app.api.previews = this.values.previews;
    const minimap = document.querySelector("#minimap");
    if (minimap) minimap.hidden = this.values.minimap === "off";
  }

  /** What the canvas draws: link style and background. */
  applyCanvas() {
    const lg = this.app.lgcanvas;
    if (!lg) return;
    lg.links_render_mode = LINK_MODES[this.values.linkStyle];
    const c = CANVAS_COLOURS[this.values.theme];
    lg.clear_background_color = c.background;
    if (this.gridImage === undefined) this.gridImage = lg.background_image;
    lg.background_image = c.grid ? this.gridImage : null;
    Object.assign(LiteGraph, this.values.theme === "light" ? LIGHT_NODES : DARK_NODES);
    lg.node_title_color = LiteGraph.NODE_TITLE_COLOR;
    lg.setDirty(true, true);
    this.app.minimap?.schedule();
  }

  // -- the panel ---------------------------------------------------------------------------------
  toggle() {
    if (document.querySelector("#settings-panel")) this.close();
    else this.open();
  }

  open() {
    const rows = Object.entries(SETTINGS).map(([name, s]) => {
      const select = el("select", { id: `setting-${name}`, "aria-label": s.label },
        ...s.choices.map(([v, text]) => el("option", { value: v }, text)));
      select.value = this.values[name];
      select.addEventListener("change", () => this.set(name, select.value));
      const label = el("label", { for: `setting-${name}` }, s.label);
      return el("div", { class: "setting-row" }, label, select, s.note ? el("p", { class: "muted small" }, s.note) : null);
    });
    const close = el("button", { type: "button", onclick: () => this.close() }, "Close");
    const panel = el("div", { id: "settings-panel", class: "settings-panel", role: "dialog", "aria-labelledby": "settings-title" },
      el("h2", { id: "settings-title" }, "Settings"), ...rows, el("div", { class: "modal-buttons" }, close));
    this.onKey = (e) => {
      if (e.key !== "Escape") return;
      e.preventDefault();
      e.stopPropagation();
      this.close();
    };
    document.addEventListener("keydown", this.onKey, true);
    document.body.append(panel);
    document.querySelector("#settings-btn")?.setAttribute("aria-expanded", "true");
    panel.querySelector("select").focus();
  }

  close() {
    document.querySelector("#settings-panel")?.remove();
    document.removeEventListener("keydown", this.onKey, true);
    const btn = document.querySelector("#settings-btn");
    btn?.setAttribute("aria-expanded", "false");
    btn?.focus();
  }
}
