// Drives the real OpenAI Node SDK against codexmesh's /v1 surface, one scenario per run.
// Usage: node node_client.mjs SCENARIO  (OPENAI_BASE_URL and OPENAI_API_KEY = the pool key)
// Prints one JSON object with what the SDK returned; exits non-zero with the SDK's error.
import OpenAI from "openai";

const MODEL = "gpt-5.1-codex";
const client = new OpenAI({ maxRetries: 0, timeout: 30_000 });

const scenarios = {
  async responses() {
    const r = await client.responses.create({ model: MODEL, input: "Say hello." });
    let streamed = "";
    const stream = await client.responses.create({ model: MODEL, input: "Say hello.", stream: true });
    for await (const event of stream) {
      if (event.type === "response.output_text.delta") streamed += event.delta;
    }
    return { text: r.output_text, status: r.status, streamed };
  },
  async chat() {
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "Say hello." }],
    });
    let streamed = "";
    let finish = null;
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "Say hello." }],
      stream: true,
    });
    for await (const chunk of stream) {
      for (const choice of chunk.choices) {
        streamed += choice.delta.content ?? "";
        finish = choice.finish_reason ?? finish;
      }
    }
    return {
      text: r.choices[0].message.content,
      finish_reason: r.choices[0].finish_reason,
      streamed,
      stream_finish_reason: finish,
    };
  },
};

const name = process.argv[2];
if (!scenarios[name]) {
  console.error(`unknown scenario ${name}; one of ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
try {
  console.log(JSON.stringify(await scenarios[name]()));
} catch (e) {
  console.error(`${e.constructor.name}: ${e.message}`);
  process.exit(1);
}
