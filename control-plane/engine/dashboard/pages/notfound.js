// pages/notfound.js — the page for an unknown route or a pool the caller cannot see.
//
// Rules this module keeps: it fetches nothing and says only that the thing is not here (a
// pool the caller may not see answers exactly like one that does not exist).

import { h } from "../ui.js";

export default {
  name: "not-found",
  title: "Not found",
  static: true,
  async load() { return null; },
  render(ctx) {
    const title = ctx.params.title || "Page not found";
    const message = ctx.params.message || "There is no dashboard page at this address.";
    ctx.root.replaceChildren(
      h("h1", { text: title }),
      h("p", { text: message }),
      h("p", {}, h("a", { href: "/ui/", text: "Back to the overview" })));
  },
};
