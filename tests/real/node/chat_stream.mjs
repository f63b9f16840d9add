// A chat stream through the openai package for Node, as a Node user writes it; prints one JSON line.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.GATEWAY_BASE_URL, apiKey: "unused", maxRetries: 0 });
const stream = await client.chat.completions.create({
  model: process.env.GATEWAY_MODEL,
  messages: [{ role: "user", content: "Name three colors." }],
  max_tokens: 24,
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let chunks = 0;
let role = null;
let finishReason = null;
let usage = null;
for await (const chunk of stream) {
  chunks += 1;
  if (chunk.usage) usage = chunk.usage;
  for (const choice of chunk.choices) {
    role = role ?? choice.delta.role ?? null;
    text += choice.delta.content ?? "";
    finishReason = choice.finish_reason ?? finishReason;
  }
}
console.log(JSON.stringify({ text, chunks, role, finishReason, usage }));
