// pages/audit.js — the audit log: who did what to what, and how it ended; filters in the URL
// and "Older" paging by id.
//
// Rules this module keeps: the filters are the API's (actor, action, target, pool, outcome,
// since_ms, limit, before); "since" is a span in the URL (1h, 24h, 7d, 30d) turned into
// since_ms at fetch time; rows are built in one pass.

import { get, withQuery } from "../api.js";
import { h, fragment, badge, dataTable, emptyRow, timeElement } from "../ui.js";
import { filterForm, pagingLinks } from "./filters.js";

const BASE = "/ui/audit";
const SPANS = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };

export default {
  name: "audit",
  title: "Audit",
  async load(ctx) {
    const q = ctx.query;
    const span = SPANS[q.get("since")];
    const params = {
      actor: q.get("actor"), action: q.get("action"), target: q.get("target"), pool: q.get("pool"), outcome: q.get("outcome"),
      since_ms: span ? Date.now() - span : null, limit: q.get("limit") || 50, before: q.get("before"),
    };
    const [rows, pools] = await Promise.all([get(withQuery("/audit", params)), get("/pools").catch(() => [])]);
    return { rows, pools, limit: Number(params.limit) };
  },
  render(ctx, data, { first }) {
    if (first) {
      ctx.table = h("div");
      ctx.paging = h("nav", { class: "paging", "aria-label": "Pages of audit rows" });
      ctx.root.replaceChildren(
        h("div", { class: "page-head" }, h("h1", { text: "Audit" }),
          h("p", { class: "muted", text: "Changes and refused attempts, newest first." })),
        filterForm(ctx, BASE, [
          { name: "actor", label: "Actor", placeholder: "operator:bob" },
          { name: "action", label: "Action", placeholder: "account." , hint: "Exact, or a prefix ending in ." },
          { name: "target", label: "Target id" },
          { name: "pool", label: "Pool", type: "select", options: [["", "All pools"], ...data.pools.map((x) => [x.name, x.name])] },
          { name: "outcome", label: "Outcome", type: "select", options: [["", "Any"], ["ok", "ok"], ["forbidden", "forbidden"], ["not_found", "not found"], ["invalid", "invalid"], ["conflict", "conflict"], ["unauthenticated", "unauthenticated"], ["rate_limited", "rate limited"], ["totp_required", "TOTP required"], ["upstream", "upstream"], ["unavailable", "unavailable"], ["internal", "internal"]] },
          { name: "since", label: "Since", type: "select", options: [["", "Any time"], ["1h", "Last hour"], ["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["30d", "Last 30 days"]] },
          { name: "limit", label: "Rows", type: "number", placeholder: "50" },
        ]),
        ctx.table, ctx.paging);
    }
    const columns = [{ label: "Time" }, { label: "Actor" }, { label: "Action" }, { label: "Target" }, { label: "Outcome" }, { label: "Client" }, { label: "Pools" }];
    const { wrapper, tbody } = dataTable({ caption: ctx.query.get("before") ? "Older audit rows" : "Latest audit rows", columns, testid: "audit-table" });
    if (data.rows.length === 0) tbody.append(emptyRow(columns.length, "No audit rows match."));
    const rows = fragment();
    for (const r of data.rows) {
      rows.append(h("tr", { "data-audit": r.id },
        h("td", {}, timeElement(r.at_ms, { seconds: true })),
        h("td", { "data-col": "actor", text: r.actor }),
        h("td", { "data-col": "action" }, h("code", { text: r.action })),
        h("td", { "data-col": "target", class: "small", text: r.target ?? "—" }),
        h("td", { "data-col": "outcome" }, badge(r.outcome === "ok" ? "ok" : "failed", r.outcome)),
        h("td", { "data-col": "client", text: r.client ?? "—" }),
        h("td", { "data-col": "pools", text: r.pools.length ? r.pools.join(", ") : "—" })));
    }
    tbody.append(rows);
    ctx.table.replaceChildren(wrapper);
    ctx.paging.replaceChildren(...pagingLinks(BASE, ctx.query, data.rows, data.limit));
  },
};
