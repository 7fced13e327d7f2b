// pages/envoys.js — the Envoys subscribed to this control plane and whether they run the
// newest snapshot.
//
// Rules this module keeps: two requests in parallel (envoys, status for the store revision);
// "in sync" means the version running (from outcome reports) is the version last sent.

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
    ctx.summary.textContent = `${envoys.length} Envoy${envoys.length === 1 ? "" : "s"} connected${revision !== undefined ? ` · store revision ${formatNumber(revision)}` : ""}.`;
    const columns = [{ label: "Node" }, { label: "Peer" }, { label: "Build" }, { label: "Connected since" },
      { label: "Sent", className: "num" }, { label: "Running", className: "num" }, { label: "Sync" }, { label: "Last report" }];
    const { wrapper, tbody } = dataTable({ caption: "Connected Envoys and the snapshot version each runs", columns, testid: "envoys-table" });
    if (envoys.length === 0) tbody.append(emptyRow(columns.length, "No Envoy is connected."));
    const rows = fragment();
    for (const e of envoys) {
      const inSync = e.sent_version !== null && e.sent_version !== undefined && e.running_version !== null && e.running_version !== undefined && e.running_version >= e.sent_version;
      rows.append(h("tr", { "data-node": e.node_id },
        h("th", { scope: "row", text: e.node_id }),
        h("td", {}, h("code", { text: e.peer })),
        h("td", { text: e.client_build }),
        h("td", {}, timeElement(e.connected_at_ms)),
        h("td", { class: "num", text: e.sent_version ?? "—" }),
        h("td", { class: "num", text: e.running_version ?? "—" }),
        h("td", {}, e.running_version === null || e.running_version === undefined ? h("span", { class: "muted", text: "no report yet" }) : badge(inSync ? "in_sync" : "behind")),
        h("td", {}, timeElement(e.reported_at_ms, { seconds: true }))));
    }
    tbody.append(rows);
    ctx.table.replaceChildren(wrapper);
  },
};
