// snippets.js — ready-made client configuration for a pool key (Codex CLI, Claude Code, Gemini
// CLI, OpenAI SDKs, /v1 agent tools), shared by the Keys page (with the real key, once) and the Setup page.
//
// Rules this module keeps:
// - Snippets are plain text put into <code> with textContent; the key and the gateway URL are
//   never interpreted as markup.
// - The gateway URL comes from GET /api/v1/gateway; when the server has none (null or 404) an
//   editable "Gateway URL" input (default http://127.0.0.1:18080) drives the snippets.
// - Each snippet has its own Copy button (clipboard, falling back to selecting the text).

import { getOptional } from "./api.js";
import { h, field, copyText, uniqueId } from "./ui.js";

export const DEFAULT_GATEWAY = "http://127.0.0.1:18080";

/** The gateway URL the server knows, or null. */
let gatewayLookup = null;

/** The gateway URL the server knows, or null (asked once per page load: it does not change). */
export function loadGateway() {
  gatewayLookup ||= getOptional("/gateway", null)
    .then((reply) => (reply && typeof reply.url === "string" && reply.url ? reply.url.replace(/\/+$/, "") : null))
    .catch(() => { gatewayLookup = null; return null; });
  return gatewayLookup;
}

export function snippetTexts(gateway, key) {
  const base = (gateway || DEFAULT_GATEWAY).replace(/\/+$/, "");
  return [
    {
      tool: "codex",
      title: "Codex CLI",
      note: "Add to ~/.codex/config.toml, then export the key in your shell.",
      text: `# ~/.codex/config.toml
model_provider = "codexmesh"

[model_providers.codexmesh]
name = "OpenAI"
base_url = "${base}/backend-api/codex"
env_key = "CODEXMESH_API_KEY"
wire_api = "responses"
supports_websockets = true

# in your shell
export CODEXMESH_API_KEY=${key}`,
    },
    {
      tool: "claude-code",
      title: "Claude Code",
      note: "For pools with Claude accounts. In your shell, or the same variables under \"env\" in ~/.claude/settings.json.",
      text: `export ANTHROPIC_BASE_URL=${base}
export ANTHROPIC_AUTH_TOKEN=${key}
# optional: no telemetry, update checks or other non-essential calls
export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1

# or in ~/.claude/settings.json
{"env": {"ANTHROPIC_BASE_URL": "${base}", "ANTHROPIC_AUTH_TOKEN": "${key}"}}`,
    },
    {
      tool: "gemini-cli",
      title: "Gemini CLI",
      note: "For pools with Gemini accounts. GOOGLE_GENAI_USE_GCA must be the word true.",
      text: `# ~/.gemini/settings.json
{"security": {"auth": {"selectedType": "oauth-personal"}}}

# in your shell
export GOOGLE_GENAI_USE_GCA=true
export GOOGLE_CLOUD_ACCESS_TOKEN=${key}
export CODE_ASSIST_ENDPOINT=${base}`,
    },
    {
      tool: "openai-python",
      title: "OpenAI Python SDK",
      note: "The /v1 surface (Responses and Chat Completions).",
      text: `from openai import OpenAI

client = OpenAI(
    base_url="${base}/v1",
    api_key="${key}",
)`,
    },
    {
      tool: "openai-node",
      title: "OpenAI Node SDK",
      note: "The /v1 surface (Responses and Chat Completions).",
      text: `import OpenAI from "openai";

const client = new OpenAI({
  baseURL: "${base}/v1",
  apiKey: "${key}",
});`,
    },
    {
      tool: "agents",
      title: "Agent tools using /v1",
      note: "Any tool that reads the standard OpenAI environment variables.",
      text: `export OPENAI_BASE_URL=${base}/v1
export OPENAI_API_KEY=${key}`,
    },
  ];
}

/**
 * The snippets block: an optional gateway URL input (when the server has no URL) and one
 * figure per tool. Returns the element; it re-renders itself when the URL input changes.
 */
export function snippetsBlock({ gateway, key }) {
  const container = h("div", { class: "snippets" });
  const list = h("div", { class: "snippet-list" });
  let current = gateway || DEFAULT_GATEWAY;
  const draw = () => {
    list.replaceChildren(...snippetTexts(current, key).map(snippetFigure));
  };
  if (!gateway) {
    const input = h("input", { name: "gateway_url", type: "url", value: DEFAULT_GATEWAY, autocomplete: "off", spellcheck: "false", id: uniqueId("gateway-url") });
    input.addEventListener("input", () => { current = input.value.trim() || DEFAULT_GATEWAY; draw(); });
    // A local view setting (it changes only the snippets on this page), hence data-filter.
    container.append(h("div", { class: "gateway-url", "data-filter": "" }, field("Gateway URL", input, "The address clients use to reach the gateway (Envoy). The control plane does not know it, so check it.")));
  } else {
    container.append(h("p", { class: "muted" }, "Gateway: ", h("code", { text: gateway })));
  }
  container.append(list);
  draw();
  return container;
}

function snippetFigure({ tool, title, note, text }) {
  const code = h("code", { text });
  const status = h("span", { class: "copy-status", "aria-live": "polite" });
  const captionId = uniqueId("snippet");
  const copy = h("button", { type: "button", class: "button button-small", "aria-describedby": captionId, text: "Copy" });
  copy.addEventListener("click", () => copyText(text, code, status));
  return h("figure", { class: "snippet", "data-testid": "snippet", "data-tool": tool },
    h("figcaption", { id: captionId }, h("strong", { text: title }), h("span", { class: "muted", text: ` — ${note}` })),
    h("pre", { tabindex: "0", "aria-labelledby": captionId }, code),
    h("div", { class: "snippet-actions" }, copy, status));
}
