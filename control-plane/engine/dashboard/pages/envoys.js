// pages/envoys.js — the Envoys subscribed to this control plane (and those known from their
// snapshot verdicts), whether they run the newest snapshot, and what they rejected.
//
// Rules this module keeps: two requests in parallel (envoys, status for the store revision);
// "in sync" means the version its filter accepted (ACK) is the store revision (the newest
// snapshot), or, before any ACK, that the version running (from outcome reports) is the version
// last sent; a rejection (NACK) shows its version and reason.

import { get } from "../api.js";
import { h, fragment, badge, dataTable, emptyRow, timeElement, formatNumber } from "../ui.js";

export default {
  name: "envoys",
  title: "Envoys",
  async load() {
    const [envoys, status] = await Promise.all([get("/envoys"), get("/status").catch(() => null)]);
    return { envoys, status };
  },
  render(ctx, { envoys, status }, { first }) {
    if (first) {
      ctx.summary = h("p", { class: "muted" });
      ctx.table = h("div");
      ctx.root.replaceChildren(h("div", { class: "page-head" }, h("h1", { text: "Envoys" }), ctx.summary), ctx.table);
    }
    const revision = status?.revision;
    const connected = envoys.filter((e) => e.connected !== false).length;
    ctx.summary.textContent = `${connected} Envoy${connected === 1 ? "" : "s"} connected${revision !== undefined ? ` · store revision ${formatNumber(revision)}` : ""}.`;
    const columns = [{ label: "Node" }, { label: "Peer" }, { label: "Build" }, { label: "Connected since" },
      { label: "Sent", className: "num" }, { label: "Running", className: "num" }, { label: "Acked", className: "num" }, { label: "Sync" },
      { label: "Last rejected" }, { label: "Last report" }];
    const { wrapper, tbody } = dataTable({ caption: "Envoys: the snapshot version each runs, accepted and rejected", columns, testid: "envoys-table" });
    if (envoys.length === 0) tbody.append(emptyRow(columns.length, "No Envoy is connected or known."));
    const rows = fragment();
    const known = (v) => v !== null && v !== undefined;
    for (const e of envoys) {
      let sync;
      if (known(e.acked_version) && revision !== undefined) sync = badge(e.acked_version >= revision ? "in_sync" : "behind");
      else if (known(e.running_version)) sync = badge(known(e.sent_version) && e.running_version >= e.sent_version ? "in_sync" : "behind");
      else sync = h("span", { class: "muted", text: "no report yet" });
      const rejected = known(e.nacked_version)
        ? h("div", { "data-testid": "nack" }, badge("failed", `rejected v${e.nacked_version}`), " ", timeElement(e.nacked_at_ms, { seconds: true }),
          h("div", { class: "muted", "data-testid": "nack-reason", text: e.nack_reason ?? "" }))
        : h("span", { class: "muted", text: "—" });
      const online = e.connected !== false;
      rows.append(h("tr", { "data-node": e.node_id },
        h("th", { scope: "row", text: e.node_id }),
        h("td", {}, online ? h("code", { text: e.peer }) : h("span", { class: "muted", text: "not connected here" })),
        h("td", { text: e.client_build }),
        h("td", {}, online ? timeElement(e.connected_at_ms) : h("span", { class: "muted", text: "—" })),
        h("td", { class: "num", text: e.sent_version ?? "—" }),
        h("td", { class: "num", text: e.running_version ?? "—" }),
        h("td", { class: "num", "data-testid": "acked", text: e.acked_version ?? "—" }),
        h("td", {}, sync),
        h("td", {}, rejected),
        h("td", {}, timeElement(e.reported_at_ms, { seconds: true }))));
    }
    tbody.append(rows);
    ctx.table.replaceChildren(wrapper);
  },
};
