// pages/requests.js — the request log (metadata only), newest first, with filters in the URL
// and "Older" paging by id.
//
// Rules this module keeps: the filters are exactly the API's (pool, account, key, failed,
// since_ms, limit, before); "since" is a span in the URL (15m, 1h, 24h, 7d) turned into since_ms
// at fetch time; rows are built in one pass; a live refresh re-renders the table only.

import { get, withQuery } from "../api.js";
import { h, fragment, badge, dataTable, emptyRow, timeElement, formatMs } from "../ui.js";
import { filterForm, pagingLinks } from "./filters.js";

const BASE = "/ui/requests";
const SPANS = { "15m": 15 * 60_000, "1h": 3_600_000, "24h": 86_400_000, "7d": 7 * 86_400_000 };

export default {
  name: "requests",
  title: "Requests",
  async load(ctx) {
    const q = ctx.query;
    const span = SPANS[q.get("since")];
    const params = {
      pool: q.get("pool"), account: q.get("account"), key: q.get("key"),
      failed: q.get("outcome") === "failed" ? "true" : null, since_ms: span ? Date.now() - span : null,
      limit: q.get("limit") || 50, before: q.get("before"),
    };
    const [rows, pools] = await Promise.all([get(withQuery("/requests", params)), get("/pools").catch(() => [])]);
    return { rows, pools, limit: Number(params.limit) };
  },
  render(ctx, data, { first }) {
    if (first) {
      ctx.table = h("div");
      ctx.paging = h("nav", { class: "paging", "aria-label": "Pages of requests" });
      ctx.root.replaceChildren(
        h("div", { class: "page-head" }, h("h1", { text: "Requests" }),
          h("p", { class: "muted", text: "Every attempt the gateway made (metadata only: never a prompt or a body), newest first." })),
        filterForm(ctx, BASE, [
          { name: "pool", label: "Pool", type: "select", options: [["", "All pools"], ...data.pools.map((x) => [x.name, x.name])] },
          { name: "account", label: "Account", hint: "Id or label" },
          { name: "key", label: "Key", hint: "Id or label" },
          { name: "outcome", label: "Outcome", type: "select", options: [["", "All attempts"], ["failed", "Failed only"]] },
          { name: "since", label: "Since", type: "select", options: [["", "Any time"], ["15m", "Last 15 minutes"], ["1h", "Last hour"], ["24h", "Last 24 hours"], ["7d", "Last 7 days"]] },
          { name: "limit", label: "Rows", type: "number", placeholder: "50" },
        ]),
        ctx.table, ctx.paging);
    }
    const columns = [{ label: "Time" }, { label: "Pool" }, { label: "Key" }, { label: "Account" }, { label: "Path" },
      { label: "Status", className: "num" }, { label: "Latency", className: "num" }, { label: "Attempt" }, { label: "Error" }];
    const { wrapper, tbody } = dataTable({ caption: ctx.query.get("before") ? "Older requests" : "Latest requests", columns, testid: "requests-table" });
    if (data.rows.length === 0) tbody.append(emptyRow(columns.length, "No requests match."));
    const rows = fragment();
    for (const r of data.rows) {
      const failed = r.status === 0 || r.status >= 400 || r.error_code;
      rows.append(h("tr", { "data-request": r.id, class: failed ? "row-error" : null },
        h("td", {}, timeElement(r.received_at_ms, { seconds: true })),
        h("td", { "data-col": "pool", text: r.pool ?? "(deleted)" }),
        h("td", { "data-col": "key", text: r.key ?? r.key_id }),
        h("td", { "data-col": "account", text: r.policy_refusal && !r.account_id ? "— (refused by the key's policy)" : (r.account ?? r.account_id) }),
        h("td", { class: "path" }, h("code", { text: r.path ?? "—" })),
        h("td", { class: "num", "data-col": "status", text: r.status === 0 ? "0 (no answer)" : String(r.status) }),
        h("td", { class: "num", "data-col": "latency", text: formatMs(r.latency_ms) }),
        h("td", { "data-col": "attempt" }, `#${r.attempt}`, r.fallback ? [" ", badge("fallback", "fallback")] : null, r.reason ? h("span", { class: "muted small", text: ` ${r.reason}` }) : null),
        h("td", { "data-col": "error" }, r.policy_refusal ? h("code", { "data-testid": "policy-refusal", text: `policy: ${r.policy_refusal}` }) : r.error_code ? h("code", { text: r.error_code }) : h("span", { class: "muted", text: "—" }), r.error_source ? h("span", { class: "muted small", text: ` (${r.error_source})` }) : null)));
    }
    tbody.append(rows);
    ctx.table.replaceChildren(wrapper);
    ctx.paging.replaceChildren(...pagingLinks(BASE, ctx.query, data.rows, data.limit));
  },
};
