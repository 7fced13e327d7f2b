// pages/alerts.js — alert webhooks (add, test, remove) and the alert episodes (open and closed).
//
// Rules this module keeps:
// - A new webhook's signing secret (whsec_…) exists only in the answer that created it and in
//   the panel built from it; it is never stored, and the panel is outside the part a live
//   refresh rebuilds. Lists show a webhook's URL by its origin only (the API's rule).
// - Remove asks first. Viewers see the lists only.

import { get, post, del, p, withQuery } from "../api.js";
import {
  h, fragment, badge, dataTable, emptyRow, timeElement, field, statusArea, showError, showNotices, clearStatus,
  trackDirty, markClean, isBusy, whileBusy, confirmDialog, copyText,
} from "../ui.js";

export default {
  name: "alerts",
  title: "Alerts",
  async load() {
    const [webhooks, episodes, pools] = await Promise.all([
      get("/alerts/webhooks"), get(withQuery("/alerts/episodes", { limit: 100 })), get("/pools")]);
    return { webhooks, episodes, pools };
  },
  render(ctx, data, { first }) {
    if (first) {
      ctx.status = statusArea();
      ctx.newHook = h("div");
      ctx.hooks = h("div");
      ctx.episodes = h("div");
      ctx.root.replaceChildren(
        h("div", { class: "page-head" }, h("h1", { text: "Alerts" }),
          h("p", { class: "muted", text: "Signed JSON webhooks hear each alert once when it opens and once when it clears." })),
        ctx.newHook,
        ctx.canWrite ? addForm(ctx) : null,
        ctx.status,
        ctx.hooks,
        h("h2", { text: "Episodes" }),
        ctx.episodes);
    }
    if (ctx.poolSelect && !isBusy(ctx.addForm)) fillPools(ctx, data.pools);
    renderHooks(ctx, data.webhooks);
    renderEpisodes(ctx, data.episodes);
  },
};

function addForm(ctx) {
  const area = statusArea();
  const name = h("input", { name: "name", type: "text", required: true, autocomplete: "off", spellcheck: "false" });
  const url = h("input", { name: "url", type: "url", required: true, autocomplete: "off", spellcheck: "false", placeholder: "https://" });
  const pool = h("select", { name: "pool" });
  const submit = h("button", { type: "submit", class: "button button-primary", text: "Add webhook" });
  const form = h("form", { class: "card form-inline", "data-testid": "add-webhook", "data-write": "", "aria-labelledby": "add-webhook-title" },
    h("h2", { id: "add-webhook-title", text: "Add a webhook" }),
    h("div", { class: "row" }, field("Name", name), field("URL", url), field("Pool", pool, "Every pool: owners only."),
      h("div", { class: "actions" }, submit)),
    area);
  trackDirty(form);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy(submit, async () => {
      clearStatus(area, form);
      try {
        const body = { name: name.value.trim(), url: url.value.trim() };
        if (pool.value) body.pool = pool.value;
        const reply = await post("/alerts/webhooks", body);
        name.value = "";
        url.value = "";
        markClean(form);
        showSecret(ctx, reply);
        ctx.refresh();
      } catch (e) {
        showError(area, e, form);
      }
    });
  });
  ctx.addForm = form;
  ctx.poolSelect = pool;
  return form;
}

function fillPools(ctx, pools) {
  const previous = ctx.poolSelect.value;
  const active = pools.filter((x) => !x.archived_at_ms);
  ctx.poolSelect.replaceChildren(h("option", { value: "", text: "every pool" }),
    ...active.map((x) => h("option", { value: x.name, text: x.name, selected: x.name === previous })));
}

function showSecret(ctx, reply) {
  const secret = reply.secret;
  const value = h("code", { "data-testid": "webhook-secret", class: "secret", text: secret });
  const status = h("span", { class: "copy-status", "aria-live": "polite" });
  const copy = h("button", { type: "button", class: "button button-primary", text: "Copy secret" });
  copy.addEventListener("click", () => copyText(secret, value, status));
  const dismiss = h("button", { type: "button", class: "button", text: "I have stored it: hide" });
  dismiss.addEventListener("click", () => ctx.newHook.replaceChildren());
  const panel = h("section", { class: "card new-key", "data-testid": "new-webhook", "aria-labelledby": "new-webhook-title" },
    h("h2", { id: "new-webhook-title", text: `Webhook ${reply.name} added` }),
    h("p", { class: "notice notice-warning", role: "status",
      text: "Its signing secret is shown only now. Check x-codexmesh-signature (t=…,v1=HMAC-SHA256 of \"t.body\") with it." }),
    h("div", { class: "key-line" }, value, copy, status),
    h("div", { class: "actions" }, dismiss));
  ctx.newHook.replaceChildren(panel);
}

function renderHooks(ctx, hooks) {
  const columns = [{ label: "Name" }, { label: "URL" }, { label: "Pool" }, { label: "Last delivery" }, { label: "Status" }];
  if (ctx.canWrite) columns.push({ label: "Actions" });
  const { wrapper, tbody } = dataTable({ caption: "Webhooks", columns, testid: "webhooks-table" });
  if (hooks.length === 0) tbody.append(emptyRow(columns.length, "No webhooks yet."));
  const rows = fragment();
  for (const hook of hooks) {
    const ok = hook.last_status >= 200 && hook.last_status < 300;
    const row = h("tr", { "data-testid": "webhook-row", "data-webhook": hook.id },
      h("th", { scope: "row", text: hook.name }),
      h("td", {}, h("code", { text: hook.url })),
      h("td", { text: hook.pool ?? "every pool" }),
      h("td", {}, hook.last_delivery_at_ms ? timeElement(hook.last_delivery_at_ms, { seconds: true }) : h("span", { class: "muted", text: "—" })),
      h("td", {}, hook.last_status === null || hook.last_status === undefined
        ? h("span", { class: "muted", text: "—" })
        : badge(ok ? "active" : "failed", ok ? `HTTP ${hook.last_status}` : (hook.last_error ?? `HTTP ${hook.last_status}`))));
    if (ctx.canWrite) row.append(h("td", { class: "row-actions" }, hookActions(ctx, hook)));
    rows.append(row);
  }
  tbody.append(rows);
  ctx.hooks.replaceChildren(wrapper);
}

function hookActions(ctx, hook) {
  const test = h("button", { type: "button", class: "button button-small", "data-write": "", text: "Send test" });
  const remove = h("button", { type: "button", class: "button button-small button-danger", "data-write": "", text: "Remove" });
  test.addEventListener("click", () => whileBusy(test, async () => {
    clearStatus(ctx.status);
    try {
      const reply = await post(p`/alerts/webhooks/${hook.id}/test`);
      if (reply.delivered) showNotices(ctx.status, reply.notices, `Test delivered to ${hook.name} (HTTP ${reply.status}).`);
      else showError(ctx.status, new Error(`Test to ${hook.name} not delivered: ${reply.error ?? reply.status}`));
      ctx.refresh();
    } catch (e) {
      showError(ctx.status, e);
    }
  }));
  remove.addEventListener("click", async () => {
    const yes = await confirmDialog({ title: `Remove webhook ${hook.name}?`, message: "It hears no more alerts.", confirmLabel: "Remove", danger: true });
    if (!yes) return;
    await whileBusy(remove, async () => {
      clearStatus(ctx.status);
      try {
        const reply = await del(p`/alerts/webhooks/${hook.id}`);
        showNotices(ctx.status, reply?.notices, `Webhook ${hook.name} removed.`);
        ctx.refresh();
      } catch (e) {
        showError(ctx.status, e);
      }
    });
  });
  return h("div", { class: "actions" }, test, remove);
}

function renderEpisodes(ctx, episodes) {
  const columns = [{ label: "Alert" }, { label: "Severity" }, { label: "Pool" }, { label: "Message" }, { label: "Opened" }, { label: "Cleared" }];
  const { wrapper, tbody } = dataTable({ caption: "Alert episodes, newest first", columns, testid: "episodes-table" });
  if (episodes.length === 0) tbody.append(emptyRow(columns.length, "No alerts so far."));
  const rows = fragment();
  for (const e of episodes) {
    rows.append(h("tr", { "data-testid": "episode-row", "data-kind": e.kind, "data-open": e.closed_at_ms ? "false" : "true" },
      h("th", { scope: "row", text: e.kind.replaceAll("_", " ") }),
      h("td", {}, badge(e.severity === "critical" ? "failed" : "cooling_down", e.severity)),
      h("td", { text: e.pool ?? "—" }),
      h("td", { text: e.message }),
      h("td", {}, timeElement(e.opened_at_ms, { seconds: true })),
      h("td", {}, e.closed_at_ms ? timeElement(e.closed_at_ms, { seconds: true }) : badge("needs_reauth", "open"))));
  }
  tbody.append(rows);
  ctx.episodes.replaceChildren(wrapper);
}
