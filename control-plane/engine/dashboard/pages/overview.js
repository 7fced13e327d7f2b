// pages/overview.js — every visible pool at a glance (GET /api/v1/overview) and "Create pool".
//
// Rules this module keeps:
// - One request for the cards; cards are rebuilt in one pass on every refresh, the create form
//   is built once and never touched by a refresh (it may hold unsaved input).
// - Headroom meters show what is LEFT of each window (the API's headroom_percent), with the
//   next reset as a ticking countdown.
// - Viewers get no create form.

import { get, post } from "../api.js";
import { h, fragment, quotaMeter, formatNumber, timeElement, field, statusArea, showError, clearStatus, trackDirty, markClean, whileBusy } from "../ui.js";

export default {
  name: "overview",
  title: "Overview",
  async load() {
    return get("/overview");
  },
  render(ctx, data, { first }) {
    if (first) {
      ctx.cards = h("div", { class: "card-grid" });
      ctx.root.replaceChildren(
        h("div", { class: "page-head" }, h("h1", { text: "Overview" }),
          h("p", { class: "muted", text: "Each pool's remaining quota, account states and the last hour of traffic." })),
        ctx.cards,
        ctx.canWrite ? createPoolForm(ctx) : null);
    }
    const pools = data.pools || [];
    if (pools.length === 0) {
      ctx.cards.replaceChildren(h("p", { class: "empty-state", text: ctx.canWrite ? "No pools yet. Create one below." : "No pools are visible to you yet." }));
      return;
    }
    ctx.cards.replaceChildren(fragment(pools.map(poolCard)));
  },
};

function poolCard(overview) {
  const name = overview.pool;
  const href = `/ui/pools/${encodeURIComponent(name)}`;
  const counts = overview.accounts || {};
  const hour = overview.last_hour || {};
  const headingId = `pool-card-${name.replace(/[^a-zA-Z0-9_-]/g, "_")}`;
  const states = [
    ["active", counts.active], ["cooling down", counts.cooling_down], ["paused", counts.paused], ["needs re-login", counts.needs_reauth],
  ];
  return h("article", { class: "card pool-card", "data-testid": "pool-card", "data-pool": name, "aria-labelledby": headingId },
    h("h2", { id: headingId }, h("a", { href, text: name })),
    h("div", { class: "meters" }, meters(overview)),
    forecastNote(overview.forecast),
    h("h3", { class: "subhead", text: `Accounts (${formatNumber(counts.total ?? 0)})` }),
    h("ul", { class: "state-counts" }, states.map(([label, n]) =>
      h("li", { class: n > 0 && label !== "active" ? "state-count attention" : "state-count" },
        h("span", { class: "count", text: formatNumber(n ?? 0) }), " ", label))),
    h("h3", { class: "subhead", text: "Last hour" }),
    h("dl", { class: "stats" },
      stat("Requests", hour.requests), stat("Errors", hour.errors), stat("Failovers", hour.failovers)));
}

/** A warning when a window runs out before its reset at the current burn rate (issue 15). */
function forecastNote(forecast) {
  if (!forecast) return null;
  const early = [["5-hour", forecast.primary], ["weekly", forecast.secondary]]
    .filter(([, w]) => w && w.runs_out_before_reset);
  if (!early.length) return null;
  return h("p", { class: "notice notice-warning", "data-testid": "forecast-warning" },
    early.map(([label, w], i) => [i ? "; " : "", `The ${label} window runs out at the current burn rate `,
      timeElement(w.runs_out_at_unix * 1000), " — before its reset"]), ".");
}

const PROVIDER_NAMES = { codex: "Codex", claude: "Claude", gemini: "Gemini" };

/** A pool of one provider: its windows; a mixed pool: each provider's windows, named. */
function meters(overview) {
  const providers = overview.providers || [];
  if (providers.length <= 1) {
    const windows = providers[0]?.windows;
    if (windows && providers[0].provider !== "codex") {
      return windows.map((w) => headroom(`${capital(w.label)} window`, w.headroom, w.window));
    }
    return [headroom("5-hour window", overview.primary, "primary"), headroom("Weekly window", overview.secondary, "secondary")];
  }
  return providers.flatMap((p) => {
    const name = PROVIDER_NAMES[p.provider] || p.provider;
    return p.windows.map((w) => headroom(`${name} ${w.label}`, w.headroom, w.window));
  });
}

function capital(text) {
  return text ? `${text[0].toUpperCase()}${text.slice(1)}` : text;
}

function headroom(label, window, which) {
  const w = window || {};
  const note = w.accounts ? `${label} headroom (${w.accounts} active account${w.accounts === 1 ? "" : "s"})` : `${label} headroom`;
  return quotaMeter({
    label: note,
    percent: w.headroom_percent,
    mode: "left",
    window: which,
    resetsAtMs: w.earliest_reset_unix ? w.earliest_reset_unix * 1000 : null,
  });
}

function stat(label, value) {
  return h("div", { class: "stat" }, h("dt", { text: label }), h("dd", { text: formatNumber(value ?? 0) }));
}

function createPoolForm(ctx) {
  const area = statusArea();
  const name = h("input", { name: "name", type: "text", required: true, maxlength: "64", autocomplete: "off", spellcheck: "false" });
  const submit = h("button", { type: "submit", class: "button button-primary", text: "Create pool" });
  const form = h("form", { class: "card form-inline", "data-testid": "create-pool", "data-write": "", "aria-labelledby": "create-pool-title" },
    h("h2", { id: "create-pool-title", text: "Create a pool" }),
    h("div", { class: "row" }, field("Pool name", name, "Letters, digits, ., _ and - (up to 64)."), h("div", { class: "actions" }, submit)),
    area);
  trackDirty(form);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy(submit, async () => {
      clearStatus(area, form);
      try {
        const pool = await post("/pools", { name: name.value.trim() });
        markClean(form);
        ctx.navigate(`/ui/pools/${encodeURIComponent(pool.name)}`);
      } catch (e) {
        showError(area, e, form);
      }
    });
  });
  return form;
}
