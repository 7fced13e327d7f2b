// pages/signin.js — sign-in: name and password, then (when the server asks) a TOTP code.
//
// Rules this module keeps:
// - The password is only ever sent to POST /api/v1/session and never kept in the page after it.
// - A 401 with kind "totp_required" shows a second step (one-time code); any other 401 says
//   "Wrong name, password or code"; a 429 shows the server's message (the name is locked).
// - After sign-in the page goes to ?next= only when it is a /ui/ path (no open redirect).

import { post, ApiError } from "../api.js";
import { h, field, statusArea, showError, clearStatus, whileBusy } from "../ui.js";

export default {
  name: "sign-in",
  title: "Sign in",
  static: true,
  async load() { return null; },
  render(ctx) {
    const area = statusArea();
    const name = h("input", { id: "signin-name", name: "name", type: "text", autocomplete: "username", required: true, autocapitalize: "none", spellcheck: "false" });
    const password = h("input", { id: "signin-password", name: "password", type: "password", autocomplete: "current-password", required: true });
    const totpSlot = h("div", { class: "totp-slot" });
    const submit = h("button", { type: "submit", class: "button button-primary", text: "Sign in" });
    const form = h("form", { class: "card signin-form", novalidate: false },
      field("Name", name), field("Password", password), totpSlot, area, h("div", { class: "actions" }, submit));
    let totp = null;

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearStatus(area, form);
      const body = { name: name.value.trim(), password: password.value };
      if (totp) body.totp = totp.value.trim();
      await whileBusy(submit, async () => {
        try {
          await post("/session", body, { allow401: true });
          password.value = "";
          const me = await ctx.reloadIdentity();
          const next = new URLSearchParams(location.search).get("next");
          ctx.navigate(me.totp_setup_only ? "/ui/" : ctx.safeNext(next), { replace: true });
        } catch (e) {
          if (e instanceof ApiError && e.status === 401 && e.kind === "totp_required" && !totp) {
            totp = h("input", { id: "signin-totp", name: "totp", type: "text", inputmode: "numeric", autocomplete: "one-time-code", pattern: "[0-9 ]*", required: true, maxlength: "10" });
            totpSlot.replaceChildren(
              h("p", { class: "hint", text: "This account has a second factor. Enter the 6-digit code from your authenticator app." }),
              field("One-time code", totp));
            submit.textContent = "Verify and sign in";
            totp.focus();
          } else if (e instanceof ApiError && e.status === 401) {
            showError(area, { message: "Wrong name, password or code." });
            if (totp) { totp.value = ""; totp.focus(); } else password.focus();
          } else {
            showError(area, e, form);
          }
        }
      });
    });

    ctx.root.replaceChildren(
      h("div", { class: "signin-wrap" },
        h("h1", { text: "Sign in to codexmesh" }),
        h("p", { class: "muted", text: "Operators sign in with the name and password an owner gave them." }),
        form));
    queueMicrotask(() => name.focus());
  },
};
