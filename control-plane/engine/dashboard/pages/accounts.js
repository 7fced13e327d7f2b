// pages/accounts.js — every visible account (or one pool's): provider, state and health badges,
// its provider's quota windows (Codex 5-hour and weekly, Claude 5-hour and 7-day, Gemini daily,
// none for an API key) with ticking reset countdowns, token expiry, and the actions on an account
// (pause, resume, refresh token, re-login by auth.json or device code).
//
// Rules this module keeps:
// - Three requests in parallel (accounts, quota, status for health), rows built in one pass.
// - Badges: the state (active, cooling, paused, needs_reauth) and what health says
//   (circuit_open when recent failures reached the pool's circuit threshold, refresh_failing).
// - The re-login dialog polls GET /api/v1/logins/{id} every 2 s while pending, and stops when
//   it closes; a server without the login routes answers 404, which is shown as an error.
// - Viewers see no action buttons.

import { get, post, p, withQuery, ApiError } from "../api.js";
import {
  h, fragment, badge, providerBadge, providerMeters, countdown, formatTime, timeElement, field, statusArea, showError, showNotices,
  clearStatus, whileBusy, openDialog, uniqueId, safeHttpUrl,
} from "../ui.js";
import { importAuthJson, importSummary } from "./pool.js";

export default {
  name: "accounts",
  title: "Accounts",
  async load(ctx) {
    const pool = ctx.query.get("pool") || "";
    const [accounts, quota, status, pools] = await Promise.all([
      get(withQuery("/accounts", { pool })),
      get(withQuery("/quota", { pool })),
      get("/status").catch(() => null),
      get("/pools").catch(() => []),
    ]);
    return { pool, accounts, quota, status, pools };
  },
  render(ctx, data, { first }) {
    if (first) {
      ctx.status = statusArea();
      ctx.list = h("ul", { class: "account-list", "aria-label": "Accounts" });
      ctx.filterBox = h("div");
      ctx.root.replaceChildren(
        h("div", { class: "page-head" }, h("h1", { text: data.pool ? `Accounts in ${data.pool}` : "Accounts" }),
          h("p", { class: "muted", text: "Quota, token and health of every account you can see." })),
        ctx.filterBox, ctx.status, ctx.list);
      ctx.filterBox.append(filterForm(ctx, data));
    }
    renderList(ctx, data);
  },
};

function filterForm(ctx, { pool, pools }) {
  const select = h("select", { name: "pool", id: "accounts-pool" },
    h("option", { value: "", text: "All pools" }),
    pools.map((x) => h("option", { value: x.name, text: x.name, selected: x.name === pool })));
  const form = h("form", { class: "form-inline filter", "data-filter": "", "data-testid": "filters" },
    h("div", { class: "field field-inline" }, h("label", { for: select.id, text: "Pool" }), select),
    h("button", { type: "submit", class: "button button-small", text: "Show" }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ctx.navigate(withQuery("/ui/accounts", { pool: select.value }));
  });
  return form;
}

function healthIndex(status) {
  const byId = new Map();
  for (const pool of status?.pools || []) {
    for (const account of pool.accounts || []) {
      const entry = byId.get(account.id) || { health: account.health, quota: account.quota, circuitOpen: false };
      const threshold = pool.routing?.circuit_failures || 0;
      if (threshold > 0 && (account.health?.recent_failures || 0) >= threshold) entry.circuitOpen = true;
      byId.set(account.id, entry);
    }
  }
  return byId;
}

function renderList(ctx, data) {
  const quotaById = new Map();
  for (const q of data.quota) if (!quotaById.has(q.account_id) || q.pool === data.pool) quotaById.set(q.account_id, q);
  const health = healthIndex(data.status);
  if (data.accounts.length === 0) {
    ctx.list.replaceChildren(h("li", { class: "empty-state", text: "No accounts here yet." }));
    return;
  }
  const items = fragment();
  for (const account of data.accounts) items.append(accountRow(ctx, account, quotaById.get(account.id), health.get(account.id)));
  ctx.list.replaceChildren(items);
}

function accountRow(ctx, account, q, health) {
  const now = Date.now();
  const badges = [providerBadge(account), badge(account.state === "cooling_down" ? "cooling" : account.state)];
  if (account.state === "needs_reauth" && account.state_reason) badges.push(h("span", { class: "reason", text: account.state_reason }));
  if (account.state === "cooling_down" && account.cooldown_until_ms) {
    badges.push(h("span", { class: "reason", text: `until ${formatTime(account.cooldown_until_ms)}` }));
  }
  // A window used up (a 429's evidence, or the usage poll): the gateways leave the account out
  // until that window resets, which is the cooldown operators ask about.
  const spent = account.state === "active" && [q?.primary, q?.secondary]
    .filter((w) => w && w.used_percent >= 100)
    .map((w) => (w.resets_at_unix ? w.resets_at_unix * 1000 : 0))
    .sort((a, b) => b - a)[0];
  if (spent !== undefined && spent !== false) {
    badges.push(badge("cooling", "quota spent", { title: "A quota window is used up: requests go to other accounts until it resets" }));
    if (spent > now) badges.push(h("span", { class: "reason", text: `until ${formatTime(spent)}` }));
  }
  if (health?.circuitOpen) badges.push(badge("circuit_open", "circuit open", { title: "Recent failures reached the pool's circuit threshold" }));
  if (account.refresh_failures > 0) badges.push(badge("refresh_failing", `refresh failing (${account.refresh_failures})`, { title: account.last_refresh_error || "" }));

  const expires = account.access_token_expires_at_ms;
  const headingId = uniqueId("account");
  const facts = h("dl", { class: "facts facts-compact" },
    h("dt", { text: "Email" }), h("dd", { text: account.email || "—" }),
    h("dt", { text: "Plan" }), h("dd", { text: account.plan || "—" }),
    account.project_id ? [h("dt", { text: "Project" }), h("dd", { text: account.project_id })] : null,
    h("dt", { text: "Pools" }), h("dd", {}, account.pools.length
      ? account.pools.map((m, i) => [i ? ", " : "", h("a", { href: `/ui/pools/${encodeURIComponent(m.pool)}`, text: m.pool })])
      : "—"),
    h("dt", { text: "Token" }), h("dd", {}, expires
      ? (expires > now ? countdown(expires, "expires in ", "expired") : h("span", { text: "expired" }))
      : "—"),
    h("dt", { text: "Health" }), h("dd", { text: health?.health ? `${health.health.score} / 100 (${health.health.requests} requests, ${health.health.failures} failures recently)` : `${account.health} / 100` }));

  const item = h("li", { class: "card account-card", "data-testid": "account-row", "data-account": account.id, "data-label": account.label, "aria-labelledby": headingId },
    h("div", { class: "account-head" },
      h("h2", { id: headingId, class: "account-name", text: account.label }),
      h("div", { class: "badges" }, badges)),
    h("div", { class: "account-body" },
      facts,
      h("div", { class: "meters" }, providerMeters(account, q))));
  if (ctx.canWrite) item.append(actions(ctx, account));
  return item;
}

function actions(ctx, account) {
  const box = h("div", { class: "actions account-actions" });
  const act = (testid, label, verb, success) => {
    const button = h("button", { type: "button", class: "button button-small", "data-testid": testid, "data-write": "", text: label });
    button.addEventListener("click", () => whileBusy(button, async () => {
      clearStatus(ctx.status);
      try {
        const reply = await post(p`/accounts/${account.id}/${verb}`);
        showNotices(ctx.status, reply?.notices, reply?.changed === false ? `${account.label}: nothing to change.` : success(reply));
        ctx.refresh();
      } catch (e) {
        showError(ctx.status, e);
      }
    }));
    return button;
  };
  if (account.state === "paused") box.append(act("resume", "Resume", "resume", () => `${account.label} resumed.`));
  else box.append(act("pause", "Pause", "pause", () => `${account.label} paused: no new requests go to it.`));
  box.append(act("refresh-token", "Refresh token", "refresh", (r) => `${account.label}: token refreshed${r?.by_us === false ? " (another control plane had just done it)" : ""}.`));
  if (account.state === "needs_reauth") {
    const relogin = h("button", { type: "button", class: "button button-small button-primary", "data-testid": "relogin", "data-write": "", text: "Re-login" });
    relogin.addEventListener("click", () => reloginDialog(ctx, account));
    box.append(relogin);
  }
  return box;
}

// ---------------------------------------------------------------------------------------------
// Re-login

function reloginDialog(ctx, account) {
  const pool = account.pool;
  let pollTimer = null;
  let closed = false;

  // (a) paste a new auth.json
  const pasteArea = statusArea();
  const text = h("textarea", { name: "auth_json", rows: "6", required: true, class: "mono", spellcheck: "false", autocomplete: "off" });
  const file = h("input", { name: "auth_file", type: "file", accept: ".json,application/json" });
  file.addEventListener("change", async () => { if (file.files?.[0]) text.value = await file.files[0].text(); });
  const pasteSubmit = h("button", { type: "submit", class: "button button-primary", text: "Import auth.json" });
  const pasteForm = h("form", { class: "stack", "data-write": "", "data-testid": "relogin-import" },
    field("auth.json file", file), field("auth.json contents", text), pasteArea, h("div", { class: "actions" }, pasteSubmit));
  pasteForm.addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy(pasteSubmit, async () => {
      clearStatus(pasteArea, pasteForm);
      try {
        const reply = await importAuthJson(pool, account.label, text.value);
        pasteForm.reset();
        showNotices(pasteArea, reply?.notices, importSummary(reply));
        ctx.refresh();
      } catch (e) {
        showError(pasteArea, e, pasteForm);
      }
    });
  });

  // (b) device-code login
  const deviceArea = statusArea();
  const deviceBox = h("div", { class: "stack" });
  const start = h("button", { type: "button", class: "button", "data-write": "", "data-testid": "device-login", text: "Start device-code login" });
  start.addEventListener("click", () => whileBusy(start, async () => {
    clearStatus(deviceArea);
    try {
      const login = await post(p`/pools/${pool}/logins`, { label: account.label });
      const url = safeHttpUrl(login.verification_url);
      const stateLine = h("p", { class: "login-state", "aria-live": "polite" }, badge("pending"), " Waiting for you to approve the login…");
      deviceBox.replaceChildren(
        h("p", { text: "Open this address, sign in to the ChatGPT account, and enter the code:" }),
        h("dl", { class: "facts" },
          h("dt", { text: "Address" }), h("dd", {}, url ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: login.verification_url }) : h("code", { text: String(login.verification_url) })),
          h("dt", { text: "Code" }), h("dd", {}, h("code", { class: "user-code", text: login.user_code })),
          h("dt", { text: "Expires" }), h("dd", {}, login.expires_at_ms ? countdown(login.expires_at_ms, "in ", "expired") : "—")),
        stateLine);
      start.hidden = true;
      const poll = async () => {
        if (closed) return;
        try {
          const s = await get(p`/logins/${login.id}`);
          if (s.state === "pending") { pollTimer = setTimeout(poll, 2000); return; }
          const text = s.state === "succeeded" ? " Signed in: the account has new tokens." : s.state === "expired" ? " The code expired: start again." : ` The login failed${s.error ? `: ${s.error}` : "."}`;
          stateLine.replaceChildren(badge(s.state), text);
          if (s.state !== "succeeded") start.hidden = false;
          ctx.refresh();
        } catch (e) {
          showError(deviceArea, e);
          start.hidden = false;
        }
      };
      pollTimer = setTimeout(poll, 2000);
    } catch (e) {
      showError(deviceArea, e instanceof ApiError && e.status === 404 ? { message: `Device-code login is not available: ${e.message}` } : e);
    }
  }));

  const reason = account.state_reason ? h("p", {}, "Why: ", h("span", { class: "reason", text: account.state_reason })) : null;
  openDialog({
    title: `Re-login ${account.label}`,
    content: h("div", { class: "stack" }, reason,
      h("section", { class: "stack", "aria-labelledby": "relogin-a" }, h("h3", { id: "relogin-a", text: "Paste a new auth.json" }), pasteForm),
      h("section", { class: "stack", "aria-labelledby": "relogin-b" }, h("h3", { id: "relogin-b", text: "Or sign in with a device code" }), start, deviceBox, deviceArea)),
    onClose: () => {
      closed = true;
      clearTimeout(pollTimer);
      // The row may have been rebuilt by a live refresh meanwhile: focus its button now.
      queueMicrotask(() => {
        const row = [...ctx.list.querySelectorAll("[data-testid=account-row]")].find((r) => r.dataset.account === account.id);
        (row?.querySelector("[data-testid=relogin]") || row?.querySelector("button"))?.focus();
      });
    },
  });
  text.focus();
}
