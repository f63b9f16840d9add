// The Vercel AI SDK against the gateway, as its users write it: one provider (argv[2]: compatible,
// openai (the Responses API), openai-chat, anthropic) through plain, streamed, forced-tool,
// structured and multi-turn flows, and a tool round answered with toolChoice "none" (prepareStep).
// Prints one JSON line: per flow its result, or {"error": message}.
import { generateObject, generateText, stepCountIs, streamText, tool } from "ai";
import { createAnthropic } from "@ai-sdk/anthropic";
import { createOpenAI } from "@ai-sdk/openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { z } from "zod";

const baseURL = process.env.GATEWAY_BASE_URL; // ends with /v1
const name = process.env.GATEWAY_MODEL;
const which = process.argv[2];
const models = {
  // The gateway enforces JSON schemas: an openai-compatible user says so to get them sent.
  compatible: () =>
    createOpenAICompatible({ name: "gateway", baseURL, apiKey: "unused", supportsStructuredOutputs: true })(name),
  openai: () => createOpenAI({ baseURL, apiKey: "unused" })(name),
  "openai-chat": () => createOpenAI({ baseURL, apiKey: "unused" }).chat(name),
  anthropic: () => createAnthropic({ baseURL, apiKey: "unused" })(name),
};
const model = models[which]();
const common = { model, temperature: 0, maxRetries: 0 };
const weather = tool({
  description: "Get the current weather in a city",
  inputSchema: z.object({ city: z.string() }),
});

const flows = {
  plain: async () => {
    const r = await generateText({ ...common, prompt: "Say hello.", maxOutputTokens: 12 });
    return { text: r.text, finishReason: r.finishReason, outputTokens: r.usage.outputTokens };
  },
  stream: async () => {
    const r = streamText({ ...common, prompt: "Name three colors.", maxOutputTokens: 16 });
    let text = "";
    let chunks = 0;
    for await (const piece of r.textStream) {
      text += piece;
      chunks += 1;
    }
    return { text, chunks, finishReason: await r.finishReason };
  },
  tool: async () => {
    const r = await generateText({
      ...common,
      prompt: "What is the weather in Paris?",
      tools: { get_weather: weather },
      toolChoice: { type: "tool", toolName: "get_weather" },
      maxOutputTokens: 60,
    });
    return { calls: r.toolCalls.map((c) => ({ name: c.toolName, input: c.input })) };
  },
  structured: async () => {
    const r = await generateObject({
      ...common,
      prompt: "Name a city and its country.",
      schema: z.object({ name: z.string(), country: z.string() }),
      maxOutputTokens: 60,
    });
    return { object: r.object };
  },
  multiturn: async () => {
    const r = await generateText({
      ...common,
      maxOutputTokens: 16,
      messages: [
        { role: "user", content: "My name is Ada." },
        { role: "assistant", content: "Hello Ada." },
        { role: "user", content: "What is my name?" },
      ],
    });
    return { text: r.text };
  },
  toolRound: async () => {
    const r = await generateText({
      ...common,
      prompt: "What is the weather in Paris?",
      tools: { get_weather: tool({ ...weather, execute: async () => "sunny, 21 C" }) },
      stopWhen: stepCountIs(2),
      prepareStep: ({ stepNumber }) => ({
        toolChoice: stepNumber === 0 ? { type: "tool", toolName: "get_weather" } : "none",
      }),
      maxOutputTokens: 40,
    });
    return { steps: r.steps.length, text: r.text };
  },
};

const results = {};
for (const [flow, run] of Object.entries(flows)) {
  try {
    results[flow] = await run();
  } catch (error) {
    results[flow] = { error: String(error?.message ?? error) };
  }
}
console.log(JSON.stringify(results));
