// Small modal questions (instead of the browser's confirm/prompt, which block the page and cannot be styled):
// each resolves to the answer, or to null/false when cancelled (Escape, Cancel, a click outside).

import { el } from "./panels.js";

function modal(title, body, buttons, { initialFocus } = {}) {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const finish = (v) => {
      back.remove();
      document.removeEventListener("keydown", onKey, true);
      opener?.focus?.();
      resolve(v);
    };
    const onKey = (e) => {
      if (e.key !== "Escape") return;
      e.preventDefault();
      e.stopPropagation();
      finish(null);
    };
    const titleId = `dialog-title-${Math.random().toString(36).slice(2, 8)}`;
    const box = el("form", { class: "modal", role: "dialog", "aria-modal": "true", "aria-labelledby": titleId },
      el("h2", { id: titleId }, title), ...body, el("div", { class: "modal-buttons" }, ...buttons(finish)));
    box.addEventListener("submit", (e) => { e.preventDefault(); box.querySelector("[data-default]")?.click(); });
    const back = el("div", { class: "modal-back" }, box);
    back.addEventListener("click", (e) => { if (e.target === back) finish(null); });
    document.addEventListener("keydown", onKey, true);
    document.body.append(back);
    (initialFocus?.(box) || box.querySelector("[data-default]"))?.focus();
  });
}

/** Yes or no: true when the user confirms. */
export async function confirmDialog(text, { ok = "OK", cancel = "Cancel", title = "Are you sure?" } = {}) {
  const answer = await modal(title, [el("p", {}, text)], (finish) => [
    el("button", { type: "button", onclick: () => finish(false) }, cancel), " ",
    el("button", { type: "button", class: "primary", "data-default": "", onclick: () => finish(true) }, ok),
  ]);
  return answer === true;
}

/** A line of text: the text typed (trimmed), or null when cancelled. `check(text)` returns what is wrong with it
 *  (said under the field, the dialog stays open) or null. */
export async function promptDialog(text, { value = "", ok = "OK", cancel = "Cancel", title = "", label = text, check = null } = {}) {
  const input = el("input", { type: "text", autocomplete: "off", "aria-label": label, value });
  const problem = el("p", { class: "modal-problem", role: "alert", hidden: true });
  const answer = await modal(title || text, [el("p", {}, text), input, problem], (finish) => [
    el("button", { type: "button", onclick: () => finish(null) }, cancel), " ",
    el("button", { type: "button", class: "primary", "data-default": "", onclick: () => {
      const v = input.value.trim();
      const wrong = check?.(v) ?? null;
      problem.textContent = wrong || "";
      problem.hidden = !wrong;
      if (wrong) input.focus();
      else finish(v);
    } }, ok),
  ], { initialFocus: () => { input.select(); return input; } });
  return typeof answer === "string" ? answer : null;
}
