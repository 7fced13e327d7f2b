// ui.js — small DOM helpers shared by every page: element building, formatting, quota meters,
// SVG timelines, notices, dialogs, countdowns.
//
// Rules this module keeps:
// - Text from the server only ever reaches the page through textContent or attribute setters
//   (createElement / setAttribute); nothing here parses HTML, so nothing can inject markup.
// - No inline style attributes or <style> (the CSP forbids them): looks come from classes in
//   style.css; only a few computed geometry values are set through the CSSOM (el.style.x).
// - Charts are SVG built with createElementNS and always carry role="img" plus an aria-label
//   summary; meters are role="meter" with aria-valuenow/min/max and a visible percentage.
// - Times are shown in the browser's local zone; durations are short and human ("2h 13m").

const SVG_NS = "http://www.w3.org/2000/svg";

/** Builds an element: h("a", {href, class, "data-x": 1, on: {click}}, "text", child, …). */
export function h(tag, attributes = {}, ...children) {
  return build(document.createElement(tag), attributes, children);
}

/** The same for SVG elements. */
export function svg(tag, attributes = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attributes, children);
}

function build(element, attributes, children) {
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "on") {
      for (const [event, handler] of Object.entries(value)) element.addEventListener(event, handler);
    } else if (name === "text") {
      element.textContent = String(value);
    } else if (name === "value" && "value" in element && !(element instanceof SVGElement)) {
      element.value = String(value);
    } else if (name === "checked" || name === "selected" || name === "disabled" || name === "required") {
      element[name] = Boolean(value);
      if (name !== "checked" && name !== "selected") element.setAttribute(name, "");
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  appendChildren(element, children);
  return element;
}

function appendChildren(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** A DocumentFragment of the given nodes (for one-pass row building). */
export function fragment(...children) {
  const f = document.createDocumentFragment();
  appendChildren(f, children);
  return f;
}

/** Text for screen readers only. */
export function srOnly(text) {
  return h("span", { class: "visually-hidden", text });
}

// ---------------------------------------------------------------------------------------------
// Formatting

const pad = (n) => String(n).padStart(2, "0");

/** A clock time: "14:05" (today) or "2026-03-02 14:05". */
export function formatTime(ms, { seconds = false } = {}) {
  if (ms === null || ms === undefined) return "—";
  const d = new Date(Number(ms));
  if (Number.isNaN(d.getTime())) return "—";
  const clock = `${pad(d.getHours())}:${pad(d.getMinutes())}${seconds ? ":" + pad(d.getSeconds()) : ""}`;
  const now = new Date();
  const sameDay = d.getFullYear() === now.getFullYear() && d.getMonth() === now.getMonth() && d.getDate() === now.getDate();
  return sameDay ? clock : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock}`;
}

/** A full timestamp for title/datetime attributes. */
export function isoTime(ms) {
  const d = new Date(Number(ms));
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

/** A <time> element showing formatTime with the ISO time as datetime. */
export function timeElement(ms, options) {
  if (ms === null || ms === undefined) return h("span", { class: "muted", text: "—" });
  return h("time", { datetime: isoTime(ms), title: new Date(Number(ms)).toLocaleString(), text: formatTime(ms, options) });
}

/** A short duration: "45s", "12m", "2h 13m", "3d 4h". */
export function formatDuration(totalSeconds) {
  let s = Math.max(0, Math.round(Number(totalSeconds) || 0));
  if (s < 60) return `${s}s`;
  const days = Math.floor(s / 86400); s -= days * 86400;
  const hours = Math.floor(s / 3600); s -= hours * 3600;
  const minutes = Math.floor(s / 60);
  if (days > 0) return hours ? `${days}d ${hours}h` : `${days}d`;
  if (hours > 0) return minutes ? `${hours}h ${minutes}m` : `${hours}h`;
  const seconds = s - minutes * 60;
  return minutes < 10 && seconds ? `${minutes}m ${seconds}s` : `${minutes}m`;
}

export function formatNumber(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "—";
  return Number(n).toLocaleString("en-US");
}

export function formatPercent(fraction0to100, digits = 0) {
  if (fraction0to100 === null || fraction0to100 === undefined) return "—";
  const value = Number(fraction0to100);
  if (value > 0 && value < 0.1 && digits <= 1) return "<0.1%";
  const fixed = value > 0 && value < 1 && digits === 0 ? value.toFixed(1) : value.toFixed(digits);
  return `${fixed}%`;
}

export function formatMs(ms) {
  if (ms === null || ms === undefined) return "—";
  return ms >= 10000 ? `${(ms / 1000).toFixed(1)} s` : `${formatNumber(ms)} ms`;
}

export const STATE_LABELS = {
  active: "active",
  paused: "paused",
  cooling_down: "cooling down",
  cooling: "cooling down",
  needs_reauth: "needs re-login",
  circuit_open: "circuit open",
  refresh_failing: "refresh failing",
  revoked: "revoked",
  in_sync: "in sync",
  behind: "behind",
  ok: "ok",
  archived: "archived",
};

/** A badge: text with a tone class (tones are checked for 4.5:1 contrast in style.css). */
export function badge(kind, text = STATE_LABELS[kind] || kind, { title } = {}) {
  return h("span", { class: `badge badge-${toneOf(kind)}`, "data-testid": "badge", "data-badge": kind, title, text });
}

function toneOf(kind) {
  switch (kind) {
    case "active": case "ok": case "in_sync": case "succeeded": return "good";
    case "cooling": case "cooling_down": case "behind": case "refresh_failing": case "pending": return "warn";
    case "needs_reauth": case "circuit_open": case "revoked": case "failed": case "expired": return "bad";
    case "paused": case "archived": return "neutral";
    default: return "info";
  }
}

// ---------------------------------------------------------------------------------------------
// Quota meters and countdowns

/**
 * A quota bar: role="meter" with a visible percentage. `mode` "used" fills with what is used,
 * "left" with what remains (overview headroom). `resetsAtMs` adds a ticking "resets in …".
 */
/** The subscription windows of an account's provider (the status report's `windows` when
 * given): Codex 5-hour and weekly, Claude 5-hour and 7-day, Gemini daily, none for an API key. */
export function providerWindows(account) {
  if (Array.isArray(account?.windows)) return account.windows;
  if (account?.credential_kind === "api_key") return [];
  switch (account?.provider) {
    case "claude": return [{ window: "primary", label: "5-hour", minutes: 300 }, { window: "secondary", label: "7-day", minutes: 10080 }];
    case "gemini": return [{ window: "primary", label: "daily", minutes: 1440 }];
    default: return [{ window: "primary", label: "5-hour", minutes: 300 }, { window: "secondary", label: "weekly", minutes: 10080 }];
  }
}

const PROVIDER_NAMES = { codex: "Codex", claude: "Claude", gemini: "Gemini" };

/** A badge naming the account's provider (and "API key" for a Claude console key). */
export function providerBadge(account) {
  const provider = account?.provider || "codex";
  const name = PROVIDER_NAMES[provider] || provider;
  const text = account?.credential_kind === "api_key" ? `${name} API key` : name;
  const title = account?.project_id ? `Code Assist project ${account.project_id}` : undefined;
  return h("span", { class: `badge badge-provider badge-provider-${provider}`, "data-testid": "provider-badge", "data-provider": provider, title, text });
}

/** One meter per window of the account's provider, or a note when it has none. */
export function providerMeters(account, q, { compact = false } = {}) {
  const windows = providerWindows(account);
  if (windows.length === 0) return [h("p", { class: "muted small", "data-testid": "no-windows", text: "No subscription windows (API key)." })];
  const resets = (w) => (w && w.resets_at_unix ? w.resets_at_unix * 1000 : null);
  return windows.map((w) => {
    const evidence = w.window === "primary" ? q?.primary : q?.secondary;
    const label = compact ? w.label : `${w.label[0].toUpperCase()}${w.label.slice(1)} window`;
    return quotaMeter({ label, percent: evidence?.used_percent, window: w.window, resetsAtMs: resets(evidence), compact });
  });
}

export function quotaMeter({ label, percent, mode = "used", resetsAtMs = null, window = null, compact = false }) {
  const known = percent !== null && percent !== undefined && !Number.isNaN(Number(percent));
  const value = known ? Math.min(100, Math.max(0, Number(percent))) : 0;
  const used = mode === "used" ? value : 100 - value;
  const level = !known ? "unknown" : used >= 95 ? "high" : used >= 80 ? "mid" : "low";
  const valueText = known ? `${formatPercent(value)} ${mode === "used" ? "used" : "left"}` : "no data yet";
  const fill = h("span", { class: `meter-fill meter-${level}` });
  fill.style.width = `${value}%`;
  const labelId = uniqueId("meter");
  const meter = h("div", {
    class: "meter-track",
    role: "meter",
    "aria-valuemin": 0,
    "aria-valuemax": 100,
    "aria-valuenow": Math.round(value * 10) / 10,
    "aria-valuetext": valueText,
    "aria-labelledby": labelId,
  }, fill);
  return h("div", { class: `quota${compact ? " quota-compact" : ""}`, "data-testid": "quota-bar", "data-window": window },
    h("div", { class: "quota-head" },
      h("span", { class: "quota-label", id: labelId, text: label }),
      h("span", { class: "quota-value", text: valueText })),
    meter,
    resetsAtMs ? countdown(resetsAtMs, "resets in ", "reset time passed") : null);
}

/** A span that ticks every second: `${prefix}2h 13m`, or `passedText` once the time passed. */
export function countdown(atMs, prefix, passedText = "now") {
  const span = h("span", { class: "countdown", "data-countdown-to": atMs, "data-prefix": prefix, "data-passed": passedText });
  updateCountdown(span, Date.now());
  return span;
}

function updateCountdown(span, now) {
  const at = Number(span.dataset.countdownTo);
  const left = Math.round((at - now) / 1000);
  const text = left > 0 ? span.dataset.prefix + formatDuration(left) : span.dataset.passed;
  if (span.textContent !== text) span.textContent = text;
}

/** Updates every countdown on the page (called once a second by app.js). */
export function tickCountdowns() {
  const now = Date.now();
  for (const span of document.querySelectorAll("[data-countdown-to]")) updateCountdown(span, now);
}

let idCounter = 0;
export function uniqueId(prefix) {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

// ---------------------------------------------------------------------------------------------
// Timelines (SVG)

/** Sum of a field over buckets. */
export function sumBuckets(buckets, field = "requests") {
  let total = 0;
  for (const b of buckets || []) total += Number(b[field]) || 0;
  return total;
}

/** A per-account sparkline: requests as a polyline, errors as a second one. */
export function sparkline(buckets, { label }) {
  const width = 120, height = 28;
  const list = buckets || [];
  const max = Math.max(1, ...list.map((b) => b.requests));
  const total = sumBuckets(list), errors = sumBuckets(list, "errors");
  const step = list.length > 1 ? width / (list.length - 1) : width;
  const points = (field) => list.map((b, i) => `${(i * step).toFixed(1)},${(height - 2 - (b[field] / max) * (height - 4)).toFixed(1)}`).join(" ");
  return svg("svg", {
    class: "sparkline", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": `${label}: ${total} requests, ${errors} errors`,
    "data-testid": "timeline", "data-total": total, preserveAspectRatio: "none", focusable: "false",
  },
  svg("polyline", { class: "line-requests", points: points("requests"), fill: "none" }),
  errors > 0 ? svg("polyline", { class: "line-errors", points: points("errors"), fill: "none" }) : null);
}

/**
 * A pool timeline: stacked bars (succeeded + errors) per bucket. The SVG (role="img", the
 * `summary` as its label) stretches to the width; the axis labels are HTML around it so they
 * never stretch with it: y (0, half, max) on the left, x (window start, bar size, now) below.
 */
export function timelineChart(activity, { summary }) {
  const buckets = activity.total?.buckets || [];
  const width = 1000, height = 160;
  const max = Math.max(1, ...buckets.map((b) => b.requests));
  const niceMax = niceCeiling(max);
  const barW = buckets.length ? width / buckets.length : width;
  const total = sumBuckets(buckets);
  const chart = svg("svg", {
    class: "timeline-chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": summary,
    "data-testid": "pool-timeline", "data-total": total, preserveAspectRatio: "none", focusable: "false",
  });
  const y = (v) => height - (v / niceMax) * height;
  for (const v of [niceMax / 2, niceMax]) chart.append(svg("line", { class: "grid", x1: 0, x2: width, y1: y(v), y2: y(v) }));
  buckets.forEach((b, i) => {
    const x = i * barW + barW * 0.12, w = Math.max(1, barW * 0.76);
    const ok = Math.max(0, b.requests - b.errors);
    if (ok > 0) chart.append(svg("rect", { class: "bar-ok", x: x.toFixed(2), width: w.toFixed(2), y: y(ok).toFixed(2), height: (height - y(ok)).toFixed(2) }));
    if (b.errors > 0) chart.append(svg("rect", { class: "bar-error", x: x.toFixed(2), width: w.toFixed(2), y: y(b.requests).toFixed(2), height: (y(ok) - y(b.requests)).toFixed(2) }));
  });
  chart.append(svg("line", { class: "axis", x1: 0, x2: width, y1: height, y2: height }));
  const yAxis = h("div", { class: "y-axis", "aria-hidden": "true" },
    h("span", { class: "y-top", text: formatNumber(niceMax) }),
    h("span", { class: "y-mid", text: formatNumber(niceMax / 2) }),
    h("span", { class: "y-bottom", text: "0" }));
  const xAxis = h("div", { class: "x-axis", "aria-hidden": "true" },
    h("span", { text: formatTime(activity.from_ms) }),
    h("span", { text: `${formatDuration((activity.bucket_ms || 60000) / 1000)} per bar` }),
    h("span", { text: `${formatTime(activity.to_ms)} (now)` }));
  return h("div", { class: "chart-frame" }, yAxis, h("div", { class: "chart-plot" }, chart, xAxis));
}

function niceCeiling(value) {
  if (value <= 4) return 4;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * magnitude >= value) return m * magnitude;
  return 10 * magnitude;
}

// ---------------------------------------------------------------------------------------------
// Tables

/**
 * A table inside a horizontally scrollable, focusable, labelled wrapper.
 * `columns`: [{label, className}]; returns {wrapper, table, tbody}.
 */
export function dataTable({ caption, columns, testid, captionHidden = false }) {
  const captionId = uniqueId("caption");
  const tbody = h("tbody");
  const table = h("table", { class: "data", "data-testid": testid },
    h("caption", { id: captionId, class: captionHidden ? "visually-hidden" : null, text: caption }),
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.className, text: c.label })))),
    tbody);
  const wrapper = h("div", { class: "table-scroll", tabindex: "0", role: "region", "aria-labelledby": captionId }, table);
  return { wrapper, table, tbody };
}

/** A full-width row saying there is nothing to show. */
export function emptyRow(columns, text) {
  return h("tr", { class: "empty" }, h("td", { colspan: columns, text }));
}

// ---------------------------------------------------------------------------------------------
// Notices and errors

/** A status area for a form or a section: polite live region that receives notices. */
export function statusArea() {
  return h("div", { class: "status-area", "aria-live": "polite" });
}

/** Shows an error (ApiError or other) in `area`; marks the form control its field names. */
export function showError(area, error, form = null) {
  clearStatus(area, form);
  const message = error?.message || String(error);
  const id = uniqueId("error");
  area.append(h("p", { class: "notice notice-error", role: "alert", id, text: message }));
  if (form && error?.field) {
    const control = findControl(form, error.field);
    if (control) {
      control.setAttribute("aria-invalid", "true");
      control.setAttribute("aria-describedby", [control.getAttribute("aria-describedby"), id].filter(Boolean).join(" "));
      control.dataset.errorRef = id;
    }
  }
}

function findControl(form, field) {
  const names = [field, field.split(".").pop(), field.replace(/\./g, "_")];
  const controls = [...form.elements, ...document.querySelectorAll(`[form="${CSS.escape(form.id || "")}"]`)];
  for (const name of names) {
    const match = controls.find((c) => c.name === name);
    if (match) return match;
  }
  return null;
}

/** Shows the API's notices (warnings, notes) and/or a success line. */
export function showNotices(area, notices = [], success = null) {
  clearStatus(area);
  if (success) area.append(h("p", { class: "notice notice-success", text: success }));
  for (const n of notices || []) {
    area.append(h("p", { class: `notice notice-${n.level === "warning" ? "warning" : "info"}`, text: `${n.level}: ${n.message}` }));
  }
}

export function clearStatus(area, form = null) {
  area.replaceChildren();
  if (form) {
    for (const control of form.querySelectorAll("[aria-invalid]")) unmark(control);
    if (form.id) for (const control of document.querySelectorAll(`[form="${CSS.escape(form.id)}"][aria-invalid]`)) unmark(control);
  }
}

function unmark(control) {
  control.removeAttribute("aria-invalid");
  const ref = control.dataset.errorRef;
  if (ref) {
    const rest = (control.getAttribute("aria-describedby") || "").split(" ").filter((x) => x && x !== ref);
    if (rest.length) control.setAttribute("aria-describedby", rest.join(" "));
    else control.removeAttribute("aria-describedby");
    delete control.dataset.errorRef;
  }
}

// ---------------------------------------------------------------------------------------------
// Forms

/** A labelled field: returns the wrapper; `control` gets the id the label points at. */
export function field(labelText, control, hint = null) {
  if (!control.id) control.id = uniqueId("field");
  const hintElement = hint ? h("span", { class: "hint", id: uniqueId("hint"), text: hint }) : null;
  if (hintElement) control.setAttribute("aria-describedby", hintElement.id);
  return h("div", { class: "field" }, h("label", { for: control.id, text: labelText }), control, hintElement);
}

/**
 * Tracks unsaved input on a form: `data-dirty` is set on input and cleared by markClean.
 * Live refreshes leave dirty forms alone.
 */
export function trackDirty(form) {
  const mark = () => { form.dataset.dirty = "true"; };
  form.addEventListener("input", mark);
  form.addEventListener("change", mark);
  if (form.id) {
    // Controls outside the form element that belong to it (table rows).
    queueMicrotask(() => {
      for (const control of document.querySelectorAll(`[form="${CSS.escape(form.id)}"]`)) {
        control.addEventListener("input", mark);
      }
    });
  }
  return form;
}

export function markClean(form) {
  delete form.dataset.dirty;
}

/** A form the user is editing: unsaved input, or focus inside it. */
export function isBusy(form) {
  if (!form || !form.isConnected) return false;
  return form.dataset.dirty === "true";
}

/** Disables a form's submit buttons while `work` runs. */
export async function whileBusy(button, work) {
  const wasDisabled = button?.disabled;
  if (button) { button.disabled = true; button.setAttribute("aria-busy", "true"); }
  try {
    return await work();
  } finally {
    if (button && button.isConnected) { button.disabled = Boolean(wasDisabled); button.removeAttribute("aria-busy"); }
  }
}

// ---------------------------------------------------------------------------------------------
// Dialogs

/** Asks for confirmation in a modal <dialog>; resolves true or false. Escape cancels. */
export function confirmDialog({ title, message, confirmLabel = "Confirm", danger = false }) {
  return new Promise((resolve) => {
    const titleId = uniqueId("dialog-title");
    const cancel = h("button", { type: "button", class: "button", text: "Cancel" });
    const ok = h("button", { type: "button", class: `button ${danger ? "button-danger" : "button-primary"}`, text: confirmLabel });
    const dialog = h("dialog", { class: "dialog", "aria-labelledby": titleId },
      h("h2", { id: titleId, text: title }),
      h("p", { text: message }),
      h("div", { class: "actions" }, cancel, ok));
    const finish = (answer) => { if (dialog.open) dialog.close(); dialog.remove(); resolve(answer); };
    cancel.addEventListener("click", () => finish(false));
    ok.addEventListener("click", () => finish(true));
    dialog.addEventListener("cancel", (e) => { e.preventDefault(); finish(false); });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

/** A modal dialog with arbitrary content; returns {dialog, close}. Escape closes it. */
export function openDialog({ title, content, onClose }) {
  const titleId = uniqueId("dialog-title");
  const closeButton = h("button", { type: "button", class: "button", text: "Close" });
  const dialog = h("dialog", { class: "dialog dialog-wide", "aria-labelledby": titleId },
    h("div", { class: "dialog-head" }, h("h2", { id: titleId, text: title }), closeButton),
    content);
  const opener = document.activeElement;
  const close = () => { if (dialog.open) dialog.close(); };
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (opener && opener.isConnected) opener.focus();
    onClose?.();
  });
  closeButton.addEventListener("click", close);
  document.body.append(dialog);
  dialog.showModal();
  return { dialog, close };
}

// ---------------------------------------------------------------------------------------------
// Clipboard

/** Copies text; falls back to selecting `selectTarget` so the user can press Ctrl+C. */
export async function copyText(text, selectTarget, statusElement) {
  try {
    await navigator.clipboard.writeText(text);
    if (statusElement) statusElement.textContent = "Copied.";
  } catch {
    if (selectTarget) {
      const range = document.createRange();
      range.selectNodeContents(selectTarget);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
    }
    if (statusElement) statusElement.textContent = "Copy is not available here: the text is selected, press Ctrl+C (⌘C).";
  }
}

/** A URL safe to put in href: http(s) only. */
export function safeHttpUrl(value) {
  try {
    const url = new URL(String(value));
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
  } catch {
    return null;
  }
}
