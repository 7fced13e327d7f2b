// invite.js — the open invite page (/invite): redeem an invite code for a pool key of your own.
//
// Rules this module keeps:
// - No session: the one call is POST /api/v1/invites/redeem {code, name}; the code is the
//   credential. The code comes from the link's fragment (#code=…, never sent to a server) or is
//   typed; the fragment is cleared from the address bar once read, so it does not linger in
//   the history.
// - The key exists only in the answer and the panel built from it (never stored, never in a
//   URL); the snippets are the Keys page's (snippets.js).
// - Errors are the API's messages (wrong code, expired, revoked, used up, too many attempts).

import { post } from "./api.js";
import { h, field, statusArea, showError, clearStatus, whileBusy, copyText } from "./ui.js";
import { snippetsBlock } from "./snippets.js";

function codeFromFragment() {
  const params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
  const code = params.get("code") || "";
  if (code) history.replaceState(null, "", window.location.pathname);
  return code;
}

function render(main) {
  const area = statusArea();
  const code = h("input", { name: "code", type: "text", required: true, autocomplete: "off", spellcheck: "false", value: codeFromFragment() });
  const name = h("input", { name: "name", type: "text", required: true, autocomplete: "name", maxlength: "128" });
  const submit = h("button", { type: "submit", class: "button button-primary", text: "Get my key" });
  const result = h("div");
  const form = h("form", { class: "card", "data-testid": "redeem-invite", "aria-labelledby": "redeem-title" },
    h("h2", { id: "redeem-title", text: "Redeem your invite" }),
    field("Invite code", code, "From the link you were sent (cmi_…)."),
    field("Your name", name, "It labels your key, so the operators know whose it is."),
    h("div", { class: "actions" }, submit),
    area);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy(submit, async () => {
      clearStatus(area, form);
      try {
        const reply = await post("/invites/redeem", { code: code.value.trim(), name: name.value.trim() }, { allow401: true });
        form.remove();
        result.replaceChildren(keyPanel(reply));
        result.querySelector("h2")?.focus();
      } catch (e) {
        showError(area, e, form);
      }
    });
  });
  main.replaceChildren(
    h("div", { class: "page-head" }, h("h1", { text: "You are invited" }),
      h("p", { class: "muted", text: "Redeem the invite to get a pool key of your own for Codex CLI, Claude Code, Gemini CLI and OpenAI-compatible tools." })),
    form,
    result);
  (code.value ? name : code).focus();
}

function keyPanel(reply) {
  const secret = reply.secret;
  const value = h("code", { "data-testid": "new-key-value", class: "secret", text: secret });
  const status = h("span", { class: "copy-status", "aria-live": "polite" });
  const copy = h("button", { type: "button", class: "button button-primary", "data-testid": "copy-key", text: "Copy key" });
  copy.addEventListener("click", () => copyText(secret, value, status));
  return h("section", { class: "card new-key", "data-testid": "new-key", "aria-labelledby": "new-key-title" },
    h("h2", { id: "new-key-title", tabindex: "-1", text: `Your key ${reply.key.label} for pool ${reply.key.pool}` }),
    h("p", { class: "notice notice-warning", role: "status", text: "This key is shown only now. Copy it and store it somewhere safe: nobody can show it to you again." }),
    h("div", { class: "key-line" }, value, copy, status),
    h("h3", { text: "Use it" }),
    snippetsBlock({ gateway: reply.gateway, key: secret }));
}

render(document.getElementById("main"));
