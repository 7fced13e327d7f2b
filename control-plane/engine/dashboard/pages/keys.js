// pages/keys.js — pool keys: list, create, rotate, revoke; a new key's secret shown once with
// ready-made client snippets.
//
// Rules this module keeps:
// - The raw key exists only in the answer that created it and in the "new key" panel built
//   from it; it is never stored (no localStorage, no URL) and the panel is outside the part a
//   live refresh rebuilds, so it stays until the page is left.
// - Revoke asks first; rotate shows the new secret the same way as create.
// - Viewers see the list only.
// - A key's policy is shown in the list and edited in a panel outside the table (a live refresh
//   leaves it alone), saved whole with PUT /keys/{key}/policy; an empty form clears it.

import { get, post, put, p } from "../api.js";
import {
  h, fragment, badge, dataTable, emptyRow, timeElement, field, statusArea, showError, showNotices, clearStatus,
  trackDirty, markClean, isBusy, whileBusy, confirmDialog, copyText, formatTime,
} from "../ui.js";
import { loadGateway, snippetsBlock } from "../snippets.js";

export default {
  name: "keys",
  title: "Keys",
  async load() {
    const [keys, pools, gateway] = await Promise.all([get("/keys"), get("/pools"), loadGateway()]);
    return { keys, pools, gateway };
  },
  render(ctx, data, { first }) {
    if (first) {
      ctx.status = statusArea();
      ctx.newKey = h("div");
      ctx.policyPanel = h("div");
      ctx.table = h("div");
      ctx.root.replaceChildren(
        h("div", { class: "page-head" }, h("h1", { text: "Keys" }),
          h("p", { class: "muted", text: "Pool keys let clients (Codex CLI, SDKs, agents) use a pool through the gateway." })),
        ctx.newKey,
        ctx.policyPanel,
        ctx.canWrite ? createForm(ctx) : null,
        ctx.status,
        ctx.table);
    }
    ctx.gateway = data.gateway;
    if (ctx.poolSelect && !isBusy(ctx.createForm)) fillPools(ctx, data.pools);
    renderTable(ctx, data);
  },
};

function createForm(ctx) {
  const area = statusArea();
  const pool = h("select", { name: "pool", required: true });
  const label = h("input", { name: "label", type: "text", autocomplete: "off", spellcheck: "false" });
  const submit = h("button", { type: "submit", class: "button button-primary", text: "Create key" });
  const form = h("form", { class: "card form-inline", "data-testid": "create-key", "data-write": "", "aria-labelledby": "create-key-title" },
    h("h2", { id: "create-key-title", text: "Create a key" }),
    h("div", { class: "row" }, field("Pool", pool), field("Label (optional)", label, "Default: key-N."), h("div", { class: "actions" }, submit)),
    area);
  trackDirty(form);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy(submit, async () => {
      clearStatus(area, form);
      try {
        const body = label.value.trim() ? { label: label.value.trim() } : {};
        const reply = await post(p`/pools/${pool.value}/keys`, body);
        label.value = "";
        markClean(form);
        showNewKey(ctx, reply, "created");
        ctx.refresh();
      } catch (e) {
        showError(area, e, form);
      }
    });
  });
  ctx.createForm = form;
  ctx.poolSelect = pool;
  return form;
}

function fillPools(ctx, pools) {
  const previous = ctx.poolSelect.value;
  const active = pools.filter((x) => !x.archived_at_ms);
  ctx.poolSelect.replaceChildren(...active.map((x) => h("option", { value: x.name, text: x.name, selected: x.name === previous })));
}

function showNewKey(ctx, reply, verb) {
  const secret = reply.secret;
  const value = h("code", { "data-testid": "new-key-value", class: "secret", text: secret });
  const status = h("span", { class: "copy-status", "aria-live": "polite" });
  const copy = h("button", { type: "button", class: "button button-primary", "data-testid": "copy-key", text: "Copy key" });
  copy.addEventListener("click", () => copyText(secret, value, status));
  const dismiss = h("button", { type: "button", class: "button", text: "I have stored it: hide" });
  dismiss.addEventListener("click", () => ctx.newKey.replaceChildren());
  const panel = h("section", { class: "card new-key", "data-testid": "new-key", "aria-labelledby": "new-key-title" },
    h("h2", { id: "new-key-title", text: `Key ${reply.key.label} ${verb} for pool ${reply.key.pool}` }),
    h("p", { class: "notice notice-warning", role: "status", text: "This key is shown only now. Copy it and store it somewhere safe: the control plane keeps only its hash." }),
    h("div", { class: "key-line" }, value, copy, status),
    reply.notices?.length ? (() => { const a = statusArea(); showNotices(a, reply.notices); return a; })() : null,
    h("h3", { text: "Use it" }),
    snippetsBlock({ gateway: ctx.gateway, key: secret }),
    h("div", { class: "actions" }, dismiss));
  ctx.newKey.replaceChildren(panel);
  panel.querySelector("h2").setAttribute("tabindex", "-1");
  panel.querySelector("h2").focus();
}

function renderTable(ctx, { keys }) {
  const columns = [{ label: "Label" }, { label: "Pool" }, { label: "Id" }, { label: "Created" }, { label: "Last used" }, { label: "Routing" }, { label: "Policy" }, { label: "Usage" }, { label: "Status" }];
  if (ctx.canWrite) columns.push({ label: "Actions" });
  const { wrapper, tbody } = dataTable({ caption: "Pool keys", columns, testid: "keys-table" });
  if (keys.length === 0) tbody.append(emptyRow(columns.length, "No keys yet."));
  const rows = fragment();
  for (const key of keys) {
    const row = h("tr", { "data-testid": "key-row", "data-key": key.id },
      h("th", { scope: "row", text: key.label }),
      h("td", {}, h("a", { href: `/ui/pools/${encodeURIComponent(key.pool)}`, text: key.pool })),
      h("td", {}, h("code", { text: key.id })),
      h("td", {}, timeElement(key.created_at_ms)),
      h("td", {}, key.last_used_at_ms ? timeElement(key.last_used_at_ms) : h("span", { class: "muted", text: "—" })),
      h("td", { text: key.routing_mode === "custom" ? "own settings" : "pool's" }),
      h("td", { "data-col": "policy", "data-testid": "key-policy", text: policySummary(key.policy) }),
      h("td", { "data-col": "usage", "data-testid": "key-usage" }, usageCell(key)),
      h("td", {}, badge(key.status === "revoked" ? "revoked" : "active"), key.revoked_at_ms ? [" ", timeElement(key.revoked_at_ms)] : null));
    if (ctx.canWrite) row.append(h("td", { class: "row-actions" }, key.status === "active" ? keyActions(ctx, key) : null));
    rows.append(row);
  }
  tbody.append(rows);
  ctx.table.replaceChildren(wrapper);
}

function keyActions(ctx, key) {
  const rotate = h("button", { type: "button", class: "button button-small", "data-write": "", "data-testid": "rotate-key", text: "Rotate" });
  const revoke = h("button", { type: "button", class: "button button-small button-danger", "data-write": "", "data-testid": "revoke-key", text: "Revoke" });
  rotate.addEventListener("click", async () => {
    const yes = await confirmDialog({ title: `Rotate key ${key.label}?`, message: "A new secret replaces the current one; clients using the old one stop working.", confirmLabel: "Rotate" });
    if (!yes) return;
    await whileBusy(rotate, async () => {
      clearStatus(ctx.status);
      try {
        const reply = await post(p`/keys/${key.id}/rotate`);
        showNewKey(ctx, reply, "rotated");
        ctx.refresh();
      } catch (e) {
        showError(ctx.status, e);
      }
    });
  });
  revoke.addEventListener("click", async () => {
    const yes = await confirmDialog({ title: `Revoke key ${key.label}?`, message: "Clients using it stop working within a second. This cannot be undone.", confirmLabel: "Revoke", danger: true });
    if (!yes) return;
    await whileBusy(revoke, async () => {
      clearStatus(ctx.status);
      try {
        const reply = await post(p`/keys/${key.id}/revoke`);
        showNotices(ctx.status, reply?.notices, `Key ${key.label} revoked.`);
        ctx.refresh();
      } catch (e) {
        showError(ctx.status, e);
      }
    });
  });
  const policy = h("button", { type: "button", class: "button button-small", "data-write": "", "data-testid": "edit-policy", text: "Policy" });
  policy.addEventListener("click", () => showPolicyEditor(ctx, key));
  return h("div", { class: "actions" }, policy, rotate, revoke);
}

// The policy fields as the API spells them, with their labels and input kinds.
const POLICY_FIELDS = [
  { name: "allowed_models", label: "Allowed models", hint: "Comma separated; a trailing * matches a prefix (gpt-5*). Empty: any model.", kind: "list" },
  { name: "requests_per_minute", label: "Requests per minute", hint: "Per Envoy.", kind: "int" },
  { name: "max_concurrent_requests", label: "Concurrent requests", hint: "Per Envoy.", kind: "int" },
  { name: "tokens_per_day", label: "Tokens per day", hint: "Input + output, UTC day.", kind: "int" },
  { name: "tokens_per_week", label: "Tokens per week", hint: "From Monday 00:00 UTC.", kind: "int" },
  { name: "primary_share_percent", label: "5-hour share (%)", hint: "Of the pool's 5-hour window capacity.", kind: "float" },
  { name: "secondary_share_percent", label: "Weekly share (%)", hint: "Of the pool's weekly capacity.", kind: "float" },
];

/** One line: "models gpt-5*, o3 · 60 rpm · 20% of 5h"; "—" for none. */
export function policySummary(policy) {
  if (!policy) return "—";
  const parts = [];
  if (policy.allowed_models?.length) parts.push(`models ${policy.allowed_models.join(", ")}`);
  if (policy.requests_per_minute) parts.push(`${policy.requests_per_minute} rpm`);
  if (policy.max_concurrent_requests) parts.push(`${policy.max_concurrent_requests} concurrent`);
  if (policy.tokens_per_day) parts.push(`${policy.tokens_per_day} tokens/day`);
  if (policy.tokens_per_week) parts.push(`${policy.tokens_per_week} tokens/week`);
  if (policy.primary_share_percent) parts.push(`${policy.primary_share_percent}% of 5h`);
  if (policy.secondary_share_percent) parts.push(`${policy.secondary_share_percent}% of week`);
  return parts.length ? parts.join(" · ") : "—";
}

/** Tokens today / this week, share used of the 5-hour and weekly capacity (against the key's
 * share when it has one), and when a blocked key frees up. */
function usageCell(key) {
  const u = key.usage;
  if (!u) return h("span", { class: "muted", text: "—" });
  const share = (used, of) => `${used.toFixed(1)}%${of ? ` of ${of}%` : ""}`;
  return fragment(
    h("span", { text: `${u.tokens_today} tokens today · ${u.tokens_this_week} this week` }),
    h("br"),
    h("span", { class: "muted small", "data-testid": "key-share", text: `5h share ${share(u.primary_share_used_percent, key.policy?.primary_share_percent)} · weekly ${share(u.secondary_share_used_percent, key.policy?.secondary_share_percent)}` }),
    u.share_blocked_until_unix ? [h("br"), badge("cooling", `blocked until ${formatTime(u.share_blocked_until_unix * 1000)}`)] : null);
}

function showPolicyEditor(ctx, key) {
  const area = statusArea();
  const current = key.policy || {};
  const inputs = POLICY_FIELDS.map((f) => {
    const value = current[f.name];
    const input = h("input", {
      name: f.name, type: f.kind === "list" ? "text" : "number", autocomplete: "off", spellcheck: "false",
      min: f.kind === "list" ? null : (f.kind === "float" ? "0.01" : "1"), step: f.kind === "float" ? "any" : (f.kind === "int" ? "1" : null),
      max: f.kind === "float" ? "100" : null,
      value: value === undefined ? "" : (Array.isArray(value) ? value.join(", ") : String(value)),
    });
    return { f, input };
  });
  const save = h("button", { type: "submit", class: "button button-primary", "data-testid": "save-policy", text: "Save policy" });
  const cancel = h("button", { type: "button", class: "button", text: "Close" });
  const form = h("form", { class: "card", "data-testid": "key-policy-form", "data-key": key.id, "data-write": "", "aria-labelledby": "key-policy-title" },
    h("h2", { id: "key-policy-title", text: `Policy of key ${key.label}` }),
    h("p", { class: "muted", text: "Leave a field empty for no limit of that kind; save an empty form to remove the policy." }),
    h("div", { class: "row" }, ...inputs.map(({ f, input }) => field(f.label, input, f.hint))),
    h("div", { class: "actions" }, save, cancel),
    area);
  trackDirty(form);
  cancel.addEventListener("click", () => ctx.policyPanel.replaceChildren());
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = {};
    for (const { f, input } of inputs) {
      const raw = input.value.trim();
      if (!raw) continue;
      if (f.kind === "list") body[f.name] = raw.split(",").map((m) => m.trim()).filter(Boolean);
      else body[f.name] = Number(raw);
    }
    whileBusy(save, async () => {
      clearStatus(area, form);
      try {
        const reply = await put(p`/keys/${key.id}/policy`, body);
        markClean(form);
        showNotices(area, reply?.notices, reply?.changed ? `Policy of key ${key.label} saved.` : "No change.");
        ctx.refresh();
      } catch (e) {
        // The API names `policy.allowed_models[1]`: mark the input of that field.
        const named = /^policy\.([a-z_]+)/.exec(e?.field || "");
        if (named) e.field = named[1];
        showError(area, e, form);
      }
    });
  });
  ctx.policyPanel.replaceChildren(form);
  form.querySelector("h2").setAttribute("tabindex", "-1");
  form.querySelector("h2").focus();
}
