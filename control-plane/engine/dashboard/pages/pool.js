// pages/pool.js — one pool: activity (timeline, per-account stats), members with their quota,
// priority and weight, routing settings, adding and importing accounts, live quota refresh.
//
// Rules this module keeps:
// - Four or five requests in parallel (pool, activity, members, quota, all accounts for the
//   "add" list), never one per row; tables are built in one pass into a DocumentFragment.
// - A refresh rebuilds the read-only parts (head, chart, activity table); the members table,
//   the routing form and the add/import forms are left alone while they hold unsaved input.
// - A pool the caller cannot see (404/403) shows only "Pool not found".
// - Viewers see the routing as text and no control that changes anything; "Refresh live
//   state" (it only reads upstream usage) is there for everyone.

import { get, post, put, patch, del, p, withQuery, ApiError } from "../api.js";
import {
  h, fragment, badge, timeElement, providerBadge, providerMeters, sparkline, timelineChart, sumBuckets, dataTable, emptyRow,
  formatNumber, formatPercent, formatMs, formatDuration, field, statusArea, showError, showNotices, clearStatus,
  trackDirty, markClean, isBusy, whileBusy, confirmDialog, uniqueId,
} from "../ui.js";

const SPANS = [["15m", "15 minutes"], ["1h", "hour"], ["6h", "6 hours"], ["24h", "24 hours"]];
const STRATEGIES = [
  ["quota_first", "Quota first (most headroom)"],
  ["round_robin", "Round robin (by weight)"],
  ["primary_first", "Primary first"],
  ["priority_order", "Priority order"],
];

function spanOf(ctx) {
  const since = ctx.query.get("since");
  return SPANS.some(([v]) => v === since) ? since : "1h";
}

export default {
  name: "pool",
  title: (ctx) => `Pool ${ctx.params.pool}`,
  notFound: {
    title: "Pool not found",
    message: (ctx) => `There is no pool named “${ctx.params.pool}” that you can see.`,
  },
  async load(ctx) {
    const name = ctx.params.pool;
    const since = spanOf(ctx);
    const [pool, activity, members, quota, everyone] = await Promise.all([
      get(p`/pools/${name}`),
      get(withQuery(p`/pools/${name}/activity`, { since })),
      get(withQuery("/accounts", { pool: name })),
      get(withQuery("/quota", { pool: name })),
      ctx.canWrite ? get("/accounts").catch(() => []) : Promise.resolve([]),
    ]);
    const [forecast, warmup] = await Promise.all([
      get(p`/pools/${name}/forecast`).catch(() => null),
      get(p`/pools/${name}/warmup`).catch(() => null),
    ]);
    return { pool, activity, members, quota, everyone, since, forecast, warmup };
  },
  render(ctx, data, { first }) {
    if (first) buildSkeleton(ctx, data);
    renderHead(ctx, data);
    renderActivity(ctx, data);
    renderForecast(ctx, data);
    if (!ctx.warmupForm || !isBusy(ctx.warmupForm)) renderWarmup(ctx, data);
    if (!isBusyWithin(ctx.membersBox)) renderMembers(ctx, data);
    if (ctx.addForm && !isBusy(ctx.addForm)) fillAddForm(ctx, data);
    if (ctx.routingForm) { if (!isBusy(ctx.routingForm)) fillRoutingForm(ctx, data); }
    else renderRoutingText(ctx, data);
  },
};

function isBusyWithin(container) {
  return [...container.querySelectorAll("form")].some(isBusy);
}

function section(title, ...children) {
  const id = uniqueId("section");
  return h("section", { class: "panel", "aria-labelledby": id }, h("h2", { id, text: title }), ...children);
}

// ---------------------------------------------------------------------------------------------
// Skeleton (built once)

function buildSkeleton(ctx, data) {
  const name = ctx.params.pool;
  ctx.root.setAttribute("data-pool", name);
  ctx.pageStatus = statusArea();
  ctx.head = h("div", { class: "page-head" });
  const refreshButton = h("button", { type: "button", class: "button", "data-testid": "refresh-live", text: "Refresh live state" });
  refreshButton.addEventListener("click", () => whileBusy(refreshButton, () => refreshLive(ctx)));
  const actions = h("div", { class: "actions head-actions" }, refreshButton);
  if (ctx.canWrite) {
    const archive = h("button", { type: "button", class: "button button-danger", "data-write": "", "data-testid": "archive-pool", text: "Archive pool" });
    archive.addEventListener("click", () => archivePool(ctx, archive));
    actions.append(archive);
  }

  // Activity
  const spanSelect = h("select", { name: "since", id: "activity-span" },
    SPANS.map(([value, label]) => h("option", { value, text: `Last ${label}`, selected: value === data.since })));
  const spanForm = h("form", { class: "form-inline filter", "data-filter": "", "data-testid": "activity-span" },
    h("div", { class: "field field-inline" }, h("label", { for: "activity-span", text: "Span" }), spanSelect),
    h("button", { type: "submit", class: "button button-small", text: "Show" }));
  const applySpan = (event) => {
    event?.preventDefault();
    const url = new URL(location.href);
    url.searchParams.set("since", spanSelect.value);
    history.replaceState(null, "", url.pathname + url.search);
    ctx.query = new URLSearchParams(url.search);
    ctx.refresh();
  };
  spanForm.addEventListener("submit", applySpan);
  spanSelect.addEventListener("change", applySpan);
  ctx.chartBox = h("div", { class: "chart-box" });
  ctx.activityBox = h("div");

  // Members
  ctx.membersBox = h("div", { "data-testid": "members" });
  ctx.membersBox.addEventListener("input", (event) => {
    const form = event.target.form;
    if (form) form.dataset.dirty = "true";
  });
  ctx.membersStatus = statusArea();

  const sections = [
    section("Activity", spanForm, ctx.chartBox, ctx.activityBox),
    section("Forecast", (ctx.forecastBox = h("div", { "data-testid": "forecast" }))),
    section("Warm-up", (ctx.warmupBox = h("div", { "data-testid": "warmup" })), ctx.canWrite ? warmupForm(ctx) : null),
    section("Members", ctx.membersStatus, ctx.membersBox, ctx.canWrite ? addMemberForm(ctx) : null),
    section("Routing", ctx.canWrite ? routingForm(ctx) : (ctx.routingText = h("div"))),
  ];
  if (ctx.canWrite) sections.push(section("Import an account", importForm(ctx)));
  ctx.root.replaceChildren(h("div", { class: "head-row" }, ctx.head, actions), ctx.pageStatus, ...sections);
}

function renderHead(ctx, { pool }) {
  const routing = pool.routing || {};
  const keys = pool.keys || {};
  const strategy = STRATEGIES.find(([v]) => v === routing.strategy)?.[1] || routing.strategy;
  ctx.head.replaceChildren(
    h("h1", {}, `Pool ${pool.name}`, pool.archived_at_ms ? [" ", badge("archived")] : null),
    h("p", { class: "muted", text: `${formatNumber(pool.accounts)} account${pool.accounts === 1 ? "" : "s"} · ${formatNumber(keys.active ?? 0)} active key${keys.active === 1 ? "" : "s"} · ${strategy}, up to ${routing.max_attempts} attempts` }));
}

// ---------------------------------------------------------------------------------------------
// Activity

function renderActivity(ctx, { activity, since }) {
  const spanLabel = SPANS.find(([v]) => v === since)?.[1] || since;
  const total = activity.total || {};
  const drawn = sumBuckets(total.buckets);
  const errors = sumBuckets(total.buckets, "errors");
  const summary = `${formatNumber(drawn)} requests in the last ${spanLabel}, ${formatNumber(errors)} errors, ${formatNumber(total.fallbacks ?? 0)} fallbacks`;
  ctx.chartBox.replaceChildren(
    h("figure", { class: "chart" },
      timelineChart(activity, { summary }),
      h("figcaption", {},
        h("span", { class: "legend legend-ok", text: "Succeeded" }), " ",
        h("span", { class: "legend legend-error", text: "Errors" }), " ",
        h("span", { class: "muted", text: summary + (activity.truncated ? " (oldest buckets incomplete: too many to count)" : "") }))));

  const columns = [
    { label: "Account" }, { label: "Requests", className: "num" }, { label: "Success", className: "num" },
    { label: "Health", className: "num" }, { label: "Fallbacks", className: "num" },
    { label: "Latency p50 / p90", className: "num" }, { label: "Timeline" },
  ];
  const { wrapper, tbody } = dataTable({ caption: `Per-account activity, last ${spanLabel}`, columns, testid: "activity-table" });
  const accounts = activity.accounts || [];
  if (accounts.length === 0) tbody.append(emptyRow(columns.length, "No account served this pool in this span."));
  const rows = fragment();
  for (const a of accounts) {
    const label = a.label ?? "(deleted account)";
    rows.append(h("tr", { "data-account": a.account_id, "data-label": label },
      h("th", { scope: "row", text: label }),
      h("td", { class: "num", "data-col": "requests", text: formatNumber(a.requests) }),
      h("td", { class: "num", "data-col": "success", text: a.success_rate === null || a.success_rate === undefined ? "—" : formatPercent(a.success_rate * 100, 1) }),
      h("td", { class: "num", "data-col": "health", text: a.health === null || a.health === undefined ? "—" : String(a.health) }),
      h("td", { class: "num", "data-col": "fallbacks", text: formatNumber(a.fallbacks) }),
      h("td", { class: "num", "data-col": "latency", text: a.latency_p50_ms === null || a.latency_p50_ms === undefined ? "—" : `${formatMs(a.latency_p50_ms)} / ${formatMs(a.latency_p90_ms)}` }),
      h("td", { class: "spark-cell" }, sparkline(a.buckets, { label: `${label}, last ${spanLabel}` }))));
  }
  tbody.append(rows);
  ctx.activityBox.replaceChildren(wrapper);
}

// ---------------------------------------------------------------------------------------------
// Members

function renderMembers(ctx, { members, quota }) {
  const quotaById = new Map(quota.map((q) => [q.account_id, q]));
  const columns = [{ label: "Account" }, { label: "State" }, { label: "Quota windows" },
    { label: "Priority", className: "num" }, { label: "Weight", className: "num" }];
  if (ctx.canWrite) columns.push({ label: "Actions" });
  const { wrapper, tbody } = dataTable({ caption: "Members of this pool (lower priority is tried first; weight is the share)", columns, testid: "members-table" });
  if (members.length === 0) tbody.append(emptyRow(columns.length, "No accounts yet."));
  const rows = fragment();
  members.forEach((account, index) => rows.append(memberRow(ctx, account, quotaById.get(account.id), index)));
  tbody.append(rows);
  ctx.membersBox.replaceChildren(wrapper);
}

function memberRow(ctx, account, q, index) {
  const label = account.label;
  const cells = [
    h("th", { scope: "row" }, h("a", { href: `/ui/accounts?pool=${encodeURIComponent(ctx.params.pool)}`, text: label }),
      account.email ? h("div", { class: "muted small", text: account.email }) : null),
    h("td", {}, providerBadge(account), " ", badge(account.state === "cooling_down" ? "cooling" : account.state)),
    h("td", { class: "meter-cell" }, providerMeters(account, q, { compact: true })),
  ];
  if (!ctx.canWrite) {
    cells.push(h("td", { class: "num", text: String(account.priority) }), h("td", { class: "num", text: String(account.weight) }));
    return h("tr", { "data-account": account.id, "data-label": label }, cells);
  }
  const formId = `member-form-${index}`;
  const priority = h("input", { name: "priority", type: "number", min: "0", step: "1", value: account.priority, form: formId, id: `${formId}-priority`, class: "input-narrow" });
  const weight = h("input", { name: "weight", type: "number", min: "1", step: "1", value: account.weight, form: formId, id: `${formId}-weight`, class: "input-narrow" });
  const save = h("button", { type: "submit", class: "button button-small", "data-write": "", text: "Save" });
  const remove = h("button", { type: "button", class: "button button-small button-danger", "data-write": "", "data-testid": "remove-member", text: "Remove" });
  const form = h("form", { id: formId, class: "row-form", "data-write": "", "aria-label": `Membership of ${label}` }, save, remove);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy(save, async () => {
      clearStatus(ctx.membersStatus, form);
      try {
        const reply = await put(p`/pools/${ctx.params.pool}/accounts/${account.id}`, { priority: Number(priority.value), weight: Number(weight.value) });
        markClean(form);
        showNotices(ctx.membersStatus, reply?.notices, reply?.changed === false ? `${label}: nothing changed.` : `${label}: priority and weight saved.`);
        ctx.refresh();
      } catch (e) {
        showError(ctx.membersStatus, e, form);
      }
    });
  });
  remove.addEventListener("click", async () => {
    const yes = await confirmDialog({
      title: `Remove ${label} from ${ctx.params.pool}?`,
      message: "The account leaves this pool. If this is its last pool, the account and its tokens are deleted.",
      confirmLabel: "Remove", danger: true,
    });
    if (!yes) return;
    await whileBusy(remove, async () => {
      clearStatus(ctx.membersStatus);
      try {
        const reply = await del(p`/pools/${ctx.params.pool}/accounts/${account.id}`);
        showNotices(ctx.membersStatus, reply?.notices, reply?.deleted ? `${label} was removed and deleted (it was in no other pool).` : `${label} left the pool.`);
        delete form.dataset.dirty;
        ctx.refresh();
      } catch (e) {
        showError(ctx.membersStatus, e);
      }
    });
  });
  cells.push(
    h("td", { class: "num" }, h("label", { class: "visually-hidden", for: priority.id, text: `Priority of ${label}` }), priority),
    h("td", { class: "num" }, h("label", { class: "visually-hidden", for: weight.id, text: `Weight of ${label}` }), weight),
    h("td", { class: "row-actions" }, form));
  return h("tr", { "data-account": account.id, "data-label": label }, cells);
}

function addMemberForm(ctx) {
  const area = statusArea();
  const select = h("select", { name: "account", id: "add-member-account", required: true });
  const submit = h("button", { type: "submit", class: "button", text: "Add to pool" });
  const form = h("form", { class: "form-inline", "data-testid": "add-member", "data-write": "" },
    h("h3", { class: "subhead", text: "Add an account from another pool" }),
    h("div", { class: "row" }, field("Account", select), h("div", { class: "actions" }, submit)), area);
  trackDirty(form);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!select.value) return;
    whileBusy(submit, async () => {
      clearStatus(area, form);
      try {
        const reply = await put(p`/pools/${ctx.params.pool}/accounts/${select.value}`, {});
        markClean(form);
        showNotices(area, reply?.notices, `${reply?.label ?? "The account"} joined ${ctx.params.pool}.`);
        ctx.refresh();
      } catch (e) {
        showError(area, e, form);
      }
    });
  });
  ctx.addForm = form;
  ctx.addSelect = select;
  ctx.addSubmit = submit;
  return form;
}

function fillAddForm(ctx, { members, everyone }) {
  const inPool = new Set(members.map((m) => m.id));
  const candidates = (everyone || []).filter((a) => !inPool.has(a.id));
  const previous = ctx.addSelect.value;
  ctx.addSelect.replaceChildren(
    candidates.length ? h("option", { value: "", text: "Choose an account…" }) : h("option", { value: "", text: "Every account you can see is already a member" }),
    candidates.map((a) => h("option", { value: a.id, text: `${a.label}${a.email ? ` (${a.email})` : ""} — in ${a.pools.map((m) => m.pool).join(", ") || "no pool"}`, selected: a.id === previous })));
  ctx.addSubmit.disabled = candidates.length === 0;
}

// ---------------------------------------------------------------------------------------------
// Routing

const ROUTING_FIELDS = [
  // [body key, RoutingView key, label, kind, hint]
  ["max_attempts", "max_attempts", "Max attempts", "number", "Accounts tried per request (1 or more)."],
  ["primary_threshold", "primary_threshold_percent", "5-hour threshold (%)", "number", "Used % of the 5-hour window at which an account is avoided."],
  ["secondary_threshold", "secondary_threshold_percent", "Weekly threshold (%)", "number", "Used % of the weekly window at which an account is avoided."],
  ["circuit_failures", "circuit_failures", "Circuit: failures to open", "word", "A number, off or default."],
  ["circuit_open_ms", "circuit_open_ms", "Circuit: open for (ms)", "word", "A number, off or default."],
  ["cooldown_max_ms", "cooldown_max_ms", "Longest cooldown (ms)", "word", "A number, off or default."],
];

function routingForm(ctx) {
  const area = statusArea();
  const controls = {};
  controls.strategy = h("select", { name: "strategy" }, STRATEGIES.map(([value, label]) => h("option", { value, text: label })));
  controls.primary = h("select", { name: "primary" });
  const fields = [field("Strategy", controls.strategy), field("Primary account", controls.primary, "For primary first: the account to use first.")];
  for (const [key, , label, kind, hint] of ROUTING_FIELDS) {
    controls[key] = kind === "number"
      ? h("input", { name: key, type: "number", step: "any", min: "0" })
      : h("input", { name: key, type: "text", autocomplete: "off", spellcheck: "false" });
    fields.push(field(label, controls[key], hint));
  }
  controls.explain_routes = h("input", { name: "explain_routes", type: "checkbox" });
  controls.websockets = h("input", { name: "websockets", type: "checkbox" });
  const checks = h("div", { class: "checks" },
    checkbox(controls.websockets, "Pool WebSockets (Codex CLI realtime connections)"),
    checkbox(controls.explain_routes, "Explain routes to operator keys"));
  const submit = h("button", { type: "submit", class: "button button-primary", text: "Save routing" });
  const form = h("form", { class: "routing-form", "data-testid": "routing-form", "data-write": "" },
    h("div", { class: "form-grid" }, fields), checks, area, h("div", { class: "actions" }, submit));
  trackDirty(form);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = routingChanges(ctx, controls);
    whileBusy(submit, async () => {
      clearStatus(area, form);
      if (Object.keys(body).length === 0) { showNotices(area, [], "Nothing to save: no setting changed."); markClean(form); return; }
      try {
        const reply = await patch(p`/pools/${ctx.params.pool}/routing`, body);
        markClean(form);
        showNotices(area, reply?.notices, reply?.changed === false ? "Nothing changed." : "Routing saved. Envoys pick it up within a second.");
        ctx.refresh();
      } catch (e) {
        showError(area, e, form);
      }
    });
  });
  ctx.routingForm = form;
  ctx.routingControls = controls;
  return form;
}

function checkbox(input, label) {
  if (!input.id) input.id = uniqueId("check");
  return h("div", { class: "check" }, input, h("label", { for: input.id, text: label }));
}

function fillRoutingForm(ctx, { pool, members }) {
  const routing = pool.routing || {};
  const c = ctx.routingControls;
  ctx.routingShown = routing;
  c.strategy.value = routing.strategy;
  c.primary.replaceChildren(h("option", { value: "none", text: "None (first by priority)" }),
    members.map((m) => h("option", { value: m.id, text: m.label })));
  c.primary.value = routing.primary_account_id && members.some((m) => m.id === routing.primary_account_id) ? routing.primary_account_id : "none";
  for (const [key, viewKey] of ROUTING_FIELDS) c[key].value = routing[viewKey] ?? "";
  c.explain_routes.checked = Boolean(routing.explain_routes);
  c.websockets.checked = Boolean(routing.websockets);
}

function routingChanges(ctx, c) {
  const shown = ctx.routingShown || {};
  const body = {};
  if (c.strategy.value !== shown.strategy) body.strategy = c.strategy.value;
  const primaryShown = shown.primary_account_id || "none";
  if (c.primary.value !== primaryShown) body.primary = c.primary.value;
  for (const [key, viewKey] of ROUTING_FIELDS) {
    const text = c[key].value.trim();
    if (text === String(shown[viewKey] ?? "")) continue;
    body[key] = /^-?\d+(\.\d+)?$/.test(text) ? Number(text) : text;
  }
  if (c.explain_routes.checked !== Boolean(shown.explain_routes)) body.explain_routes = c.explain_routes.checked;
  if (c.websockets.checked !== Boolean(shown.websockets)) body.websockets = c.websockets.checked ? "on" : "off";
  return body;
}

function renderRoutingText(ctx, { pool, members }) {
  const r = pool.routing || {};
  const primary = members.find((m) => m.id === r.primary_account_id)?.label || (r.primary_account_id ? r.primary_account_id : "none (first by priority)");
  const rows = [
    ["Strategy", STRATEGIES.find(([v]) => v === r.strategy)?.[1] || r.strategy],
    ["Primary account", primary],
    ["Max attempts", r.max_attempts],
    ["5-hour threshold", formatPercent(r.primary_threshold_percent, 1)],
    ["Weekly threshold", formatPercent(r.secondary_threshold_percent, 1)],
    ["Circuit opens after", r.circuit_failures ? `${r.circuit_failures} failures` : "off"],
    ["Circuit stays open", r.circuit_open_ms ? formatDuration(r.circuit_open_ms / 1000) : "off"],
    ["Longest cooldown", r.cooldown_max_ms ? formatDuration(r.cooldown_max_ms / 1000) : "off"],
    ["WebSockets", r.websockets ? "on" : "off"],
    ["Explain routes", r.explain_routes ? "on" : "off"],
  ];
  ctx.routingText.replaceChildren(h("dl", { class: "facts", "data-testid": "routing-view" },
    rows.map(([k, v]) => [h("dt", { text: k }), h("dd", { text: String(v) })])));
}

// ---------------------------------------------------------------------------------------------
// Import, refresh, archive

function importForm(ctx) {
  const area = statusArea();
  const label = h("input", { name: "label", type: "text", autocomplete: "off", spellcheck: "false" });
  const provider = h("select", { name: "provider" },
    h("option", { value: "", text: "Detect from the file" }),
    h("option", { value: "codex", text: "Codex (auth.json)" }),
    h("option", { value: "claude", text: "Claude Code (.credentials.json or API key)" }),
    h("option", { value: "gemini", text: "Gemini CLI (oauth_creds.json)" }));
  const project = h("input", { name: "project", type: "text", autocomplete: "off", spellcheck: "false" });
  const file = h("input", { name: "auth_file", type: "file", accept: ".json,application/json" });
  const text = h("textarea", { name: "auth_json", rows: "6", required: true, spellcheck: "false", autocomplete: "off", class: "mono" });
  const submit = h("button", { type: "submit", class: "button button-primary", text: "Import account" });
  const form = h("form", { class: "stack", "data-testid": "import-account", "data-write": "" },
    h("p", { class: "muted", text: "Importing a credential file (Codex auth.json, Claude Code .credentials.json, Gemini CLI oauth_creds.json) hands its refresh token to the gateway: stop using that login elsewhere, or the two will rotate the token out from under each other. A Claude API key goes in as {\"api_key\": \"sk-ant-…\"}." }),
    h("div", { class: "form-grid" },
      field("Label (optional)", label, "A short name for the account, e.g. alice."),
      field("Provider", provider, "Whose file this is; by default the file's content says."),
      field("Gemini project (optional)", project, "The Code Assist project; by default the file's project_id, else the one Code Assist names."),
      field("Credential file", file, "Fills the text box below.")),
    field("Credential file contents", text),
    area, h("div", { class: "actions" }, submit));
  trackDirty(form);
  file.addEventListener("change", async () => {
    const chosen = file.files?.[0];
    if (chosen) text.value = await chosen.text();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy(submit, async () => {
      clearStatus(area, form);
      try {
        const reply = await importAuthJson(ctx.params.pool, label.value.trim(), text.value, { provider: provider.value, project: project.value.trim() });
        form.reset();
        markClean(form);
        showNotices(area, reply?.notices, importSummary(reply));
        ctx.refresh();
      } catch (e) {
        showError(area, e.field === "body" ? { ...e, message: e.message, field: "auth_json" } : e, form);
      }
    });
  });
  return form;
}

/** POST /pools/{pool}/accounts?label=&provider=&project= with the credential file as the body
 * (shared with Re-login). */
export async function importAuthJson(pool, label, json, { provider = "", project = "" } = {}) {
  if (!json.trim()) throw new ApiError({ status: 0, kind: "invalid", message: "Paste the contents of a credential file (or choose the file).", field: "auth_json" });
  return post(withQuery(p`/pools/${pool}/accounts`, { label, provider, project }), json);
}

export function importSummary(reply) {
  if (!reply?.account) return "Imported.";
  const tokens = { new: "new tokens", replaced: "tokens replaced", kept_newer: "the stored tokens were newer and were kept" }[reply.tokens] || reply.tokens;
  return `${reply.action === "created" ? "Imported" : "Updated"} ${reply.account.label}: ${tokens}${reply.joined_pool ? "; it joined the pool" : ""}.`;
}

async function refreshLive(ctx) {
  clearStatus(ctx.pageStatus);
  try {
    const reply = await post(p`/pools/${ctx.params.pool}/quota/refresh`);
    const summary = reply.cooldown
      ? "Refreshed a moment ago: showing the stored values (try again in 10 s)."
      : `Polled ${reply.polled} account${reply.polled === 1 ? "" : "s"}${reply.failed ? `, ${reply.failed} without an answer` : ""}.`;
    showNotices(ctx.pageStatus, reply.notices, summary);
  } catch (e) {
    if (e instanceof ApiError && e.status === 429) showError(ctx.pageStatus, { message: e.message || "Refreshed a moment ago: try again in a few seconds." });
    else showError(ctx.pageStatus, e);
  }
  await ctx.refresh();
}

async function archivePool(ctx, button) {
  const yes = await confirmDialog({
    title: `Archive pool ${ctx.params.pool}?`,
    message: "The pool leaves the gateway: its keys stop working at once. Nothing is deleted; an owner can restore it.",
    confirmLabel: "Archive pool", danger: true,
  });
  if (!yes) return;
  await whileBusy(button, async () => {
    clearStatus(ctx.pageStatus);
    try {
      await post(p`/pools/${ctx.params.pool}/archive`);
      ctx.navigate("/ui/");
    } catch (e) {
      showError(ctx.pageStatus, e);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Forecast (issue 15): when each window runs out at the current burn rate.

function renderForecast(ctx, { forecast }) {
  if (!forecast) {
    ctx.forecastBox.replaceChildren(h("p", { class: "muted", text: "No forecast available." }));
    return;
  }
  const columns = [{ label: "Window" }, { label: "Used", className: "num" }, { label: "Burn", className: "num" },
    { label: "Runs out" }, { label: "Next reset" }, { label: "Before reset?" }];
  const { wrapper, tbody } = dataTable({ caption: "When the pool's windows run out at the current burn rate", columns, testid: "forecast-table" });
  const when = (unix) => (unix ? timeElement(unix * 1000) : h("span", { class: "muted", text: "—" }));
  for (const [label, w] of [["5-hour", forecast.primary], ["Weekly", forecast.secondary]]) {
    const known = (v) => v !== null && v !== undefined;
    tbody.append(h("tr", { "data-window": label },
      h("th", { scope: "row", text: label }),
      h("td", { class: "num", text: known(w.used_percent) ? formatPercent(w.used_percent) : "unknown" }),
      h("td", { class: "num", text: known(w.burn_percent_per_hour) ? `${w.burn_percent_per_hour.toFixed(1)} %/h` : "unknown" }),
      h("td", {}, w.runs_out_at_unix ? when(w.runs_out_at_unix)
        : h("span", { class: "muted", text: known(w.burn_percent_per_hour) ? "not at this rate" : "unknown" })),
      h("td", {}, when(w.next_reset_unix)),
      h("td", {}, w.runs_out_before_reset ? badge("failed", "runs out first") : h("span", { class: "muted", text: "no" }))));
  }
  ctx.forecastBox.replaceChildren(wrapper);
}

// ---------------------------------------------------------------------------------------------
// Warm-up (issue 15): one minimal request per active account at a UTC time of day.

function renderWarmup(ctx, { warmup }) {
  const text = !warmup ? "Warm-up unavailable."
    : warmup.enabled ? `On: every ${warmup.weekdays === "all" ? "day" : warmup.weekdays} at ${warmup.at} UTC, one minimal request per active account (its 5-hour window starts then).`
      : "Off.";
  ctx.warmupBox.replaceChildren(h("p", { "data-testid": "warmup-state", text }),
    warmup?.last_run_ms ? h("p", { class: "muted" }, "Last run ", timeElement(warmup.last_run_ms)) : null);
  if (ctx.warmupAt && warmup?.at && !ctx.warmupForm.dataset.dirty) {
    ctx.warmupAt.value = warmup.at;
    ctx.warmupDays.value = warmup.weekdays === "all" ? "" : warmup.weekdays;
  }
}

function warmupForm(ctx) {
  const area = statusArea();
  const at = h("input", { name: "at", type: "time", required: true });
  const days = h("input", { name: "weekdays", type: "text", placeholder: "all", autocomplete: "off", spellcheck: "false" });
  const save = h("button", { type: "submit", class: "button button-primary", text: "Turn on / save" });
  const off = h("button", { type: "button", class: "button", "data-write": "", text: "Turn off" });
  const form = h("form", { class: "form-inline", "data-testid": "warmup-form", "data-write": "" },
    h("div", { class: "row" }, field("Time (UTC)", at), field("Weekdays", days, "mon-fri, sat,sun; empty: every day."),
      h("div", { class: "actions" }, save, off)),
    area);
  trackDirty(form);
  const send = (body, button) => whileBusy(button, async () => {
    clearStatus(area, form);
    try {
      const reply = await put(p`/pools/${ctx.params.pool}/warmup`, body);
      markClean(form);
      showNotices(area, reply.notices, reply.enabled ? `Warm-up on at ${reply.at} UTC.` : "Warm-up off.");
      ctx.refresh();
    } catch (e) {
      showError(area, e, form);
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = { at: at.value };
    if (days.value.trim()) body.weekdays = days.value.trim();
    send(body, save);
  });
  off.addEventListener("click", () => send({ enabled: false }, off));
  ctx.warmupForm = form;
  ctx.warmupAt = at;
  ctx.warmupDays = days;
  return form;
}
