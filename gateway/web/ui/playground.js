// The playground: one conversation sent to one to three models at once, streamed side by side.

import { getJson, streamChat } from "./api.js";
import { $, bytes, h, ms } from "./dom.js";

const MAX_COLUMNS = 3;

function capable(card, what) {
  return Array.isArray(card.capabilities) && card.capabilities.includes(what);
}

export class Playground {
  constructor(session) {
    // Cards that say what they can do: those that chat; cards that do not say (older gateways): all.
    this.cards = (session.models || []).filter((c) => !Array.isArray(c.capabilities) || capable(c, "chat"));
    this.columns = [];
    this.controller = null;
    this.serial = 0;
    $("#model-pickers").replaceChildren();
    $("#columns").replaceChildren();
    if (this.cards.length) this.addColumn();
    $("#add-model").onclick = () => this.addColumn();
    $("#composer").onsubmit = (event) => {
      event.preventDefault();
      this.send();
    };
    $("#prompt").onkeydown = (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("#composer").requestSubmit();
      }
    };
    $("#stop").onclick = () => this.controller?.abort();
    $("#clear").onclick = () => this.clear();
    this.update();
  }

  addColumn() {
    if (this.columns.length >= MAX_COLUMNS || !this.cards.length) return;
    const n = ++this.serial;
    const used = new Set(this.columns.map((c) => c.select.value));
    const choice = this.cards.find((c) => !used.has(c.id)) || this.cards[0];
    const select = h(
      "select",
      { id: `model-${n}` },
      this.cards.map((c) => h("option", { value: c.id, selected: c.id === choice.id }, c.id)),
    );
    const title = h("h3", { id: `column-title-${n}` });
    const memory = h("p", { class: "muted memory" });
    const log = h("div", { class: "log", role: "log", "aria-labelledby": `column-title-${n}` });
    const totals = h("p", { class: "muted totals" });
    const column = {
      select,
      title,
      memory,
      log,
      totals,
      history: [],
      tokens: 0,
      element: h("section", { class: "column", "aria-labelledby": `column-title-${n}` }, title, memory, log, totals),
    };
    const remove = h(
      "button",
      { type: "button", class: "remove", "aria-label": `Remove model ${n}`, onclick: () => this.removeColumn(column) },
      "✕",
    );
    column.picker = h("div", { class: "picker" }, h("label", { for: `model-${n}` }, `Model ${n}`), select, remove);
    column.remove = remove;
    select.onchange = () => {
      column.history = [];
      column.log.replaceChildren();
      this.update();
    };
    this.columns.push(column);
    $("#model-pickers").append(column.picker);
    $("#columns").append(column.element);
    this.update();
  }

  removeColumn(column) {
    this.columns = this.columns.filter((c) => c !== column);
    column.picker.remove();
    column.element.remove();
    this.update();
  }

  card(column) {
    return this.cards.find((c) => c.id === column.select.value);
  }

  update() {
    $("#add-model").disabled = this.columns.length >= MAX_COLUMNS || this.columns.length >= this.cards.length;
    $("#columns").dataset.count = String(this.columns.length);
    for (const column of this.columns) {
      column.remove.hidden = this.columns.length < 2;
      column.title.textContent = column.select.value;
      this.showMemory(column, this.card(column));
    }
    // Images go to the models that see; the button shows only when one of the chosen models does.
    $("#attach-row").hidden = !this.columns.some((c) => capable(this.card(c) || {}, "vision"));
    $("#send").disabled = !this.columns.length || this.controller !== null;
    if (!this.cards.length) $("#chat-error").textContent = "This key may use no chat model.";
  }

  showMemory(column, card) {
    if (!card) return;
    const state = card.status?.value ?? "";
    column.memory.textContent = `${state}${card.memory_bytes ? ` · memory ${bytes(card.memory_bytes)}` : ""}`;
  }

  clear() {
    this.controller?.abort();
    for (const column of this.columns) {
      column.history = [];
      column.tokens = 0;
      column.log.replaceChildren();
      column.totals.textContent = "";
    }
    $("#chat-error").textContent = "";
    $("#prompt").focus();
  }

  options() {
    const body = {};
    for (const name of ["temperature", "top_p", "max_tokens", "seed"]) {
      const value = $(`#${name}`).value;
      if (value !== "") body[name] = Number(value);
    }
    const schema = $("#schema").value.trim();
    if (schema) {
      body.response_format = { type: "json_schema", json_schema: { name: "answer", schema: parse(schema, "JSON schema") } };
    }
    const tools = $("#tools").value.trim();
    if (tools) body.tools = parse(tools, "Tools");
    return body;
  }

  async send() {
    const text = $("#prompt").value.trim();
    if (!text || this.controller) return;
    let options;
    let image = null;
    try {
      options = this.options();
      image = await readImage();
    } catch (error) {
      $("#chat-error").textContent = error.message;
      return;
    }
    $("#chat-error").textContent = "";
    $("#prompt").value = "";
    $("#image").value = "";
    const system = $("#system").value.trim();
    this.controller = new AbortController();
    $("#stop").disabled = false;
    this.update();
    await Promise.all(
      this.columns.map((column) => {
        const sees = image && capable(this.card(column) || {}, "vision");
        const content = sees ? [{ type: "text", text }, { type: "image_url", image_url: { url: image } }] : text;
        column.history.push({ role: "user", content });
        column.log.append(h("div", { class: "msg user" }, h("span", { class: "who" }, "You"), text));
        const messages = system ? [{ role: "system", content: system }, ...column.history] : column.history;
        return this.answer(column, { ...options, model: column.select.value, messages });
      }),
    );
    this.controller = null;
    $("#stop").disabled = true;
    this.update();
    $("#prompt").focus();
  }

  // One model's answer, streamed into its column, with its speed underneath.
  async answer(column, body) {
    const reasoningText = h("div", { class: "reasoning-text" });
    const reasoning = h("details", { class: "reasoning", hidden: true }, h("summary", {}, "Reasoning"), reasoningText);
    const content = h("div", { class: "content" });
    const calls = h("pre", { class: "tool-calls", hidden: true });
    const stats = h("p", { class: "stats muted" }, "waiting…");
    const element = h("div", { class: "msg assistant", "aria-busy": "true" }, h("span", { class: "who" }, column.select.value), reasoning, content, calls, stats);
    column.log.append(element);
    const started = performance.now();
    let first = null;
    let usage = null;
    let chunks = 0;
    const toolCalls = [];
    let answer = "";
    try {
      await streamChat(
        body,
        (chunk) => {
          if (chunk.usage) usage = chunk.usage;
          const delta = chunk.choices?.[0]?.delta;
          if (!delta) return;
          if (delta.reasoning_content || delta.content || delta.tool_calls) {
            first ??= performance.now();
            chunks += 1;
            stats.textContent = `TTFT ${ms(first - started)} · streaming…`;
          }
          if (delta.reasoning_content) {
            reasoning.hidden = false;
            reasoningText.textContent += delta.reasoning_content;
          }
          if (delta.content) {
            answer += delta.content;
            content.textContent = answer;
          }
          for (const call of delta.tool_calls || []) {
            const slot = (toolCalls[call.index ?? 0] ??= { id: call.id, type: "function", function: { name: "", arguments: "" } });
            if (call.id) slot.id = call.id;
            slot.function.name += call.function?.name || "";
            slot.function.arguments += call.function?.arguments || "";
            calls.hidden = false;
            calls.textContent = toolCalls.map((c) => `${c.function.name}(${c.function.arguments})`).join("\n");
          }
        },
        this.controller.signal,
      );
    } catch (error) {
      const stopped = error.name === "AbortError";
      element.append(h("p", { class: stopped ? "muted" : "error" }, stopped ? "Stopped." : error.message));
    }
    const ended = performance.now();
    const out = usage?.completion_tokens ?? chunks;
    const decode = first === null ? 0 : (ended - first) / 1000;
    const rate = out > 1 && decode > 0 ? (out - 1) / decode : null; // the gateway's decode rate
    column.tokens += out;
    stats.textContent = [
      usage ? `${usage.prompt_tokens} in, ${usage.completion_tokens} out` : `${out} chunks`,
      rate === null ? null : `${rate.toFixed(1)} tokens/s`,
      first === null ? null : `TTFT ${ms(first - started)}`,
      `total ${ms(ended - started)}`,
    ]
      .filter(Boolean)
      .join(" · ");
    element.removeAttribute("aria-busy");
    element.dataset.done = "true";
    const message = { role: "assistant", content: answer };
    if (toolCalls.length) message.tool_calls = toolCalls.filter(Boolean);
    column.history.push(message);
    column.totals.textContent = `${column.tokens} tokens generated in this conversation`;
    try {
      const card = await getJson(`/v1/models/${encodeURIComponent(column.select.value)}`);
      this.cards = this.cards.map((c) => (c.id === card.id ? { ...c, ...card } : c));
      this.showMemory(column, card);
    } catch {
      // the memory line keeps its last figure
    }
  }
}

function parse(text, what) {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(`${what} is not valid JSON: ${error.message}`);
  }
}

function readImage() {
  const input = $("#image");
  const file = input.files?.[0];
  if (!file || $("#attach-row").hidden) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("The image could not be read."));
    reader.readAsDataURL(file);
  });
}
