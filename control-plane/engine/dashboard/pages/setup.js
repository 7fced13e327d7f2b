// pages/setup.js — how to point each client at the gateway, for someone who already has a key
// (the key is shown as the placeholder cmk_...).
//
// Rules this module keeps: read-only, nothing but GET /api/v1/gateway; the snippets are the
// same as the Keys page's (snippets.js).

import { h } from "../ui.js";
import { loadGateway, snippetsBlock } from "../snippets.js";

export default {
  name: "setup",
  title: "Setup",
  async load() {
    return { gateway: await loadGateway() };
  },
  render(ctx, data, { first }) {
    if (!first) return; // Nothing here changes with the store.
    ctx.root.replaceChildren(
      h("div", { class: "page-head" }, h("h1", { text: "Set up a client" }),
        h("p", { class: "muted" }, "Point your tools at the gateway with a pool key. Replace ", h("code", { text: "cmk_..." }),
          " with your key (an operator creates keys on the ", h("a", { href: "/ui/keys", text: "Keys" }), " page).")),
      snippetsBlock({ gateway: data.gateway, key: "cmk_..." }));
  },
};
