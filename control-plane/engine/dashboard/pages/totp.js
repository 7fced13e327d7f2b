// pages/totp.js — the only page a session with totp_setup_only sees: enroll a second factor.
//
// Rules this module keeps:
// - The secret and the otpauth URI are shown as text (no QR library, nothing external), once.
// - After POST /api/v1/me/totp/confirm succeeds the session is signed out: the operator signs
//   in again with the code.

import { post, del } from "../api.js";
import { h, field, statusArea, showError, clearStatus, showNotices, whileBusy } from "../ui.js";

export default {
  name: "totp-setup",
  title: "Set up two-factor sign-in",
  static: true,
  async load() { return null; },
  render(ctx) {
    const area = statusArea();
    const start = h("button", { type: "button", class: "button button-primary", "data-write": "", text: "Create my secret" });
    const enrollment = h("div", { class: "stack" });
    const signOut = h("button", { type: "button", class: "button", text: "Sign out", on: { click: async () => {
      try { await del("/session", { allow401: true }); } catch { /* signed out either way */ }
      location.assign("/ui/sign-in");
    } } });

    start.addEventListener("click", () => whileBusy(start, async () => {
      clearStatus(area);
      try {
        const reply = await post("/me/totp");
        const code = h("input", { id: "totp-code", name: "code", type: "text", inputmode: "numeric", autocomplete: "one-time-code", required: true, maxlength: "10" });
        const confirmButton = h("button", { type: "submit", class: "button button-primary", text: "Confirm" });
        const form = h("form", { class: "stack", "data-write": "" }, field("Code from the app", code), h("div", { class: "actions" }, confirmButton));
        form.addEventListener("submit", (event) => {
          event.preventDefault();
          whileBusy(confirmButton, async () => {
            clearStatus(area, form);
            try {
              const done = await post("/me/totp/confirm", { code: code.value.trim() });
              showNotices(area, done?.notices, "Two-factor sign-in is set up. Signing you out: sign in again with a code.");
              try { await del("/session", { allow401: true }); } catch { /* already ended */ }
              setTimeout(() => location.assign("/ui/sign-in"), 2500);
            } catch (e) {
              showError(area, e, form);
            }
          });
        });
        enrollment.replaceChildren(
          h("p", { text: "Add this secret to an authenticator app (type it in, or use the otpauth link on a device that understands it), then enter the current code." }),
          h("dl", { class: "facts" },
            h("dt", { text: "Secret" }), h("dd", {}, h("code", { class: "secret", text: reply.secret_base32 })),
            h("dt", { text: "otpauth URI" }), h("dd", {}, h("code", { class: "secret wrap", text: reply.uri }))),
          form);
        start.hidden = true;
        code.focus();
      } catch (e) {
        showError(area, e);
      }
    }));

    ctx.root.replaceChildren(
      h("h1", { text: "Set up two-factor sign-in" }),
      h("p", { text: "This control plane requires a second factor for your account. Set it up now; until then nothing else is available." }),
      h("div", { class: "card stack" }, start, enrollment, area),
      h("div", { class: "actions" }, signOut));
  },
};
