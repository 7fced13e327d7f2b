// pages/invites.js — invites ("friends mode"): create (the link, holding the code, shown once),
// list (uses left, expiry, status), revoke.
//
// Rules this module keeps:
// - The link exists only in the answer that created the invite and in the "new invite" panel
//   built from it (never stored, never put in this page's URL); the panel is outside the part a
//   live refresh rebuilds.
// - Revoke asks first. Viewers see the list only.
// - The policy is JSON as the API spells it (empty: no limits); a bad one is the API's 400,
//   shown at the field.

import { get, post, del, p } from "../api.js";
import {
  h, fragment, badge, dataTable, emptyRow, timeElement, field, statusArea, showError, showNotices, clearStatus,
  trackDirty, markClean, isBusy, whileBusy, confirmDialog, copyText,
} from "../ui.js";

const DAY_SECS = 24 * 60 * 60;

export default {
  name: "invites",
  title: "Invites",
  async load() {
    const [invites, pools] = await Promise.all([get("/invites"), get("/pools")]);
    return { invites, pools };
  },
  render(ctx, data, { first }) {
    if (first) {
      ctx.status = statusArea();
      ctx.newInvite = h("div");
      ctx.table = h("div");
      ctx.root.replaceChildren(
        h("div", { class: "page-head" }, h("h1", { text: "Invites" }),
          h("p", { class: "muted", text: "An invite link lets a person get a pool key of their own, once per use, on the control plane's invite page." })),
        ctx.newInvite,
        ctx.canWrite ? createForm(ctx) : null,
        ctx.status,
        ctx.table);
    }
    if (ctx.poolSelect && !isBusy(ctx.createForm)) fillPools(ctx, data.pools);
    renderTable(ctx, data);
  },
};

function createForm(ctx) {
  const area = statusArea();
  const pool = h("select", { name: "pool", required: true });
  const label = h("input", { name: "label", type: "text", autocomplete: "off", spellcheck: "false" });
  const uses = h("input", { name: "max_uses", type: "number", min: "1", max: "1000", value: "1", required: true });
  const days = h("input", { name: "expires_in_secs", type: "number", min: "1", max: "90", value: "7", required: true });
  const policy = h("textarea", { name: "policy", rows: "2", spellcheck: "false", placeholder: '{"allowed_models": ["gpt-5*"], "requests_per_minute": 30}' });
  const submit = h("button", { type: "submit", class: "button button-primary", text: "Create invite" });
  const form = h("form", { class: "card", "data-testid": "create-invite", "data-write": "", "aria-labelledby": "create-invite-title" },
    h("h2", { id: "create-invite-title", text: "Create an invite" }),
    h("div", { class: "row" }, field("Pool", pool), field("Label (optional)", label, "Who it is for."),
      field("Uses", uses, "How many people may redeem it."), field("Valid for (days)", days)),
    field("Policy of the keys it mints (optional, JSON)", policy, "Empty: no limits."),
    h("div", { class: "actions" }, submit),
    area);
  trackDirty(form);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy(submit, async () => {
      clearStatus(area, form);
      try {
        const body = { max_uses: Number(uses.value), expires_in_secs: Math.round(Number(days.value) * DAY_SECS) };
        if (label.value.trim()) body.label = label.value.trim();
        if (policy.value.trim()) {
          try {
            body.policy = JSON.parse(policy.value);
          } catch (e) {
            throw Object.assign(new Error(`The policy is not JSON: ${e.message}`), { field: "policy" });
          }
        }
        const reply = await post(p`/pools/${pool.value}/invites`, body);
        label.value = "";
        policy.value = "";
        markClean(form);
        showNewInvite(ctx, reply);
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

function showNewInvite(ctx, reply) {
  const link = reply.link;
  const value = h("code", { "data-testid": "new-invite-link", class: "secret", text: link });
  const status = h("span", { class: "copy-status", "aria-live": "polite" });
  const copy = h("button", { type: "button", class: "button button-primary", "data-testid": "copy-invite", text: "Copy link" });
  copy.addEventListener("click", () => copyText(link, value, status));
  const dismiss = h("button", { type: "button", class: "button", text: "I have sent it: hide" });
  dismiss.addEventListener("click", () => ctx.newInvite.replaceChildren());
  const panel = h("section", { class: "card new-key", "data-testid": "new-invite", "aria-labelledby": "new-invite-title" },
    h("h2", { id: "new-invite-title", tabindex: "-1", text: `Invite to pool ${reply.invite.pool}` }),
    h("p", { class: "notice notice-warning", role: "status", text: "This link holds the invite's code and is shown only now: send it to the people you invite." }),
    h("div", { class: "key-line" }, value, copy, status),
    reply.notices?.length ? (() => { const a = statusArea(); showNotices(a, reply.notices); return a; })() : null,
    h("div", { class: "actions" }, dismiss));
  ctx.newInvite.replaceChildren(panel);
  panel.querySelector("h2").focus();
}

function renderTable(ctx, { invites }) {
  const columns = [{ label: "Label" }, { label: "Pool" }, { label: "Id" }, { label: "Uses left" }, { label: "Expires" }, { label: "Created by" }, { label: "Status" }];
  if (ctx.canWrite) columns.push({ label: "Actions" });
  const { wrapper, tbody } = dataTable({ caption: "Invites", columns, testid: "invites-table" });
  if (invites.length === 0) tbody.append(emptyRow(columns.length, "No invites yet."));
  const rows = fragment();
  for (const invite of invites) {
    const row = h("tr", { "data-testid": "invite-row", "data-invite": invite.id, "data-status": invite.status },
      h("th", { scope: "row", text: invite.label || "—" }),
      h("td", {}, h("a", { href: `/ui/pools/${encodeURIComponent(invite.pool)}`, text: invite.pool })),
      h("td", {}, h("code", { text: invite.id })),
      h("td", { "data-col": "uses", text: `${invite.uses_left} of ${invite.max_uses}` }),
      h("td", {}, timeElement(invite.expires_at_ms)),
      h("td", { text: invite.created_by }),
      h("td", {}, badge(invite.status, invite.status.replace("_", " "))));
    if (ctx.canWrite) row.append(h("td", { class: "row-actions" }, invite.status === "active" ? revokeButton(ctx, invite) : null));
    rows.append(row);
  }
  tbody.append(rows);
  ctx.table.replaceChildren(wrapper);
}

function revokeButton(ctx, invite) {
  const revoke = h("button", { type: "button", class: "button button-small button-danger", "data-write": "", "data-testid": "revoke-invite", text: "Revoke" });
  revoke.addEventListener("click", async () => {
    const yes = await confirmDialog({ title: `Revoke invite ${invite.label || invite.id}?`, message: "Nobody can redeem it any more. Keys already minted from it keep working.", confirmLabel: "Revoke", danger: true });
    if (!yes) return;
    await whileBusy(revoke, async () => {
      clearStatus(ctx.status);
      try {
        const reply = await del(p`/invites/${invite.id}`);
        showNotices(ctx.status, reply?.notices, `Invite ${invite.label || invite.id} revoked.`);
        ctx.refresh();
      } catch (e) {
        showError(ctx.status, e);
      }
    });
  });
  return revoke;
}
