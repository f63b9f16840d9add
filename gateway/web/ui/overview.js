// The overview: models, memory pools, requests, sparklines; polled every 2 s while it is shown.

import { getJson, getText, parseMetrics, postJson } from "./api.js";
import { $, bytes, h, ms, seconds, sparkline } from "./dom.js";

const POLL_MS = 2000;
const HISTORY = 60; // two minutes of points per sparkline

export class Overview {
  constructor(session, onUnauthorized) {
    this.admin = session.admin;
    this.onUnauthorized = onUnauthorized;
    this.rows = new Map();
    this.history = new Map(); // model → {tps: [], ttft: []}
    this.previous = null; // the last metrics sample: {t, per model counters}
    this.timer = null;
    this.ticker = null;
    document.body.classList.toggle("is-admin", this.admin);
    $("#reload-config").hidden = !this.admin;
    $("#pools-section").hidden = !this.admin;
    $("#recent-section").hidden = !this.admin;
    $("#reload-config").onclick = () => this.act(() => postJson("/admin/reload"), "Configuration reloaded.");
  }

  start() {
    if (this.timer !== null) return;
    const loop = async () => {
      if (!document.hidden) await this.poll(); // a tab in the background does not poll a busy box
      this.timer = setTimeout(loop, POLL_MS);
    };
    this.timer = 0;
    loop();
    this.ticker = setInterval(() => this.tick(), 1000);
  }

  stop() {
    clearTimeout(this.timer);
    clearInterval(this.ticker);
    this.timer = null;
  }

  async poll() {
    try {
      const [models, metrics, recent] = await Promise.all([
        this.admin ? getJson("/admin/models") : getJson("/v1/models"),
        getText("/metrics").catch(() => ""),
        this.admin ? getJson("/admin/requests?limit=25") : Promise.resolve(null),
      ]);
      const rows = this.admin ? models.models.map(fromState) : models.data.filter((c) => c.status).map(fromCard);
      this.sample(metrics, rows);
      if (this.admin) this.renderPools(models.pools, rows);
      this.renderModels(rows);
      if (recent) this.renderRecent(recent.data);
      const loaded = rows.filter((r) => r.state === "loaded").length;
      $("#overview-status").textContent =
        `${rows.length} models, ${loaded} loaded · updated ${new Date().toLocaleTimeString()}`;
      $("#overview-error").textContent = "";
    } catch (error) {
      if (error.status === 401) this.onUnauthorized();
      else $("#overview-error").textContent = `Could not read the gateway's state: ${error.message}`;
    }
  }

  // Per model, tokens generated per second and the mean TTFT of the requests that ended since the last poll.
  sample(text, rows) {
    const now = performance.now();
    const counters = {};
    for (const s of parseMetrics(text)) {
      const model = s.labels.model;
      if (model === undefined) continue;
      const c = (counters[model] ??= { tokens: 0, ttftSum: 0, ttftCount: 0 });
      if (s.name === "gateway_completion_tokens_total") c.tokens = s.value;
      else if (s.name === "gateway_time_to_first_token_seconds_sum") c.ttftSum = s.value;
      else if (s.name === "gateway_time_to_first_token_seconds_count") c.ttftCount = s.value;
    }
    const previous = this.previous;
    this.previous = { t: now, counters };
    if (!previous) return;
    const dt = (now - previous.t) / 1000;
    for (const row of rows) {
      const c = counters[row.id] || { tokens: 0, ttftSum: 0, ttftCount: 0 };
      const p = previous.counters[row.id] || { tokens: 0, ttftSum: 0, ttftCount: 0 };
      const series = this.history.get(row.id) || { tps: [], ttft: [] };
      const count = c.ttftCount - p.ttftCount;
      series.tps.push(Math.max(0, (c.tokens - p.tokens) / dt));
      series.ttft.push(count > 0 ? ((c.ttftSum - p.ttftSum) / count) * 1000 : null);
      series.tps = series.tps.slice(-HISTORY);
      series.ttft = series.ttft.slice(-HISTORY);
      this.history.set(row.id, series);
    }
  }

  // A bar per pool against its budget, made of one segment per resident model (hover: which, how much).
  // A model still loading has its claim reserved but is not yet counted as used: its segment is hatched
  // and its bytes are shown apart, as /admin/models reports them (`used` and `loading`).
  renderPools(pools, rows) {
    const list = $("#pools");
    const resident = rows.filter((r) => ["loading", "loaded", "unloading"].includes(r.state));
    list.replaceChildren(
      ...pools.map((p) => {
        const share = p.budget ? Math.min(1, (p.used + (p.loading || 0)) / p.budget) : 0;
        const users = resident.filter((r) => (r.claimed || {})[p.name] > 0);
        const name = (r) => (r.state === "loading" ? `${r.id} (loading)` : r.id);
        const segments = users.map((r) => {
          const n = r.claimed[p.name];
          const kind = `fill${r.state === "loading" ? " loading" : ""}${share > 0.9 ? " high" : ""}`;
          const fill = h("span", { class: kind, title: `${name(r)}: ${bytes(n)}` });
          fill.style.width = `${p.budget ? Math.min(100, (n / p.budget) * 100).toFixed(1) : 0}%`;
          return fill;
        });
        const who = users.map((r) => `${name(r)} ${bytes(r.claimed[p.name])}`).join(", ");
        const loading = p.loading ? `, ${bytes(p.loading)} loading` : "";
        const label = `${p.name}: ${bytes(p.used)} of ${bytes(p.budget)} budget${loading}${who ? ` (${who})` : ""}`;
        return h(
          "li",
          { class: "pool" },
          h("span", { class: "pool-name" }, p.name, p.description ? h("small", {}, ` ${p.description}`) : null),
          h("span", { class: "meter", role: "img", "aria-label": label }, segments),
          h(
            "span",
            { class: "pool-figures" },
            `${bytes(p.used)} / ${bytes(p.budget)}`,
            p.loading ? h("small", { class: "pool-loading" }, ` +${bytes(p.loading)} loading`) : null,
            p.total ? h("small", {}, ` of ${bytes(p.total)}${p.free !== null ? `, ${bytes(p.free)} free` : ""}`) : null,
          ),
        );
      }),
    );
  }

  renderModels(rows) {
    const body = $("#models tbody");
    const seen = new Set();
    for (const row of rows) {
      seen.add(row.id);
      let cells = this.rows.get(row.id);
      if (!cells) {
        cells = this.makeRow(row.id);
        this.rows.set(row.id, cells);
      }
      body.append(cells.tr); // keeps configuration order; moving a row keeps its buttons' focus
      this.fillRow(cells, row);
    }
    for (const [id, cells] of this.rows) {
      if (!seen.has(id)) {
        cells.tr.remove();
        this.rows.delete(id);
      }
    }
  }

  makeRow(id) {
    const cell = (cls) => h("td", { class: cls });
    const cells = {
      name: h("th", { scope: "row" }),
      state: cell(),
      placement: cell(),
      memory: cell(),
      requests: cell("admin-col"),
      slots: cell("admin-col"),
      kv: cell("admin-col"),
      ttl: cell("admin-col"),
      tps: cell(),
      ttft: cell(),
      actions: cell("admin-col"),
    };
    const path = `/admin/models/${encodeURIComponent(id)}`;
    cells.load = h("button", { type: "button", onclick: () => this.act(() => postJson(`${path}/load`)) }, "Load");
    cells.unload = h("button", { type: "button", onclick: () => this.act(() => postJson(`${path}/unload`)) }, "Unload");
    cells.reload = h(
      "button",
      {
        type: "button",
        title: "Unload, then load again",
        onclick: () =>
          this.act(async () => {
            await postJson(`${path}/unload`);
            await postJson(`${path}/load`);
          }),
      },
      "Reload",
    );
    for (const b of [cells.load, cells.unload, cells.reload]) b.setAttribute("aria-label", `${b.textContent} ${id}`);
    if (this.admin) cells.actions.append(h("div", { class: "actions" }, cells.load, cells.unload, cells.reload));
    cells.tr = h("tr", { "data-model": id }, Object.values(cells).filter((c) => c instanceof HTMLTableCellElement));
    return cells;
  }

  fillRow(cells, row) {
    cells.name.replaceChildren(
      ...[
        h("span", { class: "model-id" }, row.id),
        row.pinned ? h("span", { class: "tag" }, "pinned") : null,
        row.aliases.length ? h("small", { class: "aliases" }, `aka ${row.aliases.join(", ")}`) : null,
      ].filter(Boolean),
    );
    cells.state.replaceChildren(
      h("span", { class: `state state-${row.state}`, title: row.failure || "" }, row.draining ? "draining" : row.state),
    );
    cells.placement.textContent = row.placement || "—";
    const pools = Object.entries(row.pools || {});
    const resident = ["loading", "loaded", "unloading"].includes(row.state);
    const estimate = resident ? "" : "est. ";
    cells.memory.replaceChildren(
      ...(pools.length ? pools.map(([pool, n]) => h("div", {}, `${estimate}${pool} ${bytes(n)}`)) : [bytes(row.memory)]),
    );
    cells.requests.textContent = row.running === undefined ? "—" : `${row.running} / ${row.queued}`;
    const batch = row.batch;
    cells.slots.textContent = batch ? `${batch.running} of ${row.parallel}` : `— of ${row.parallel ?? "—"}`;
    if (batch && batch.kv_cells) {
      const share = batch.kv_used / batch.kv_cells;
      const fill = h("span", { class: `fill${share > 0.9 ? " high" : ""}` });
      fill.style.width = `${(share * 100).toFixed(1)}%`;
      cells.kv.replaceChildren(
        h("span", { class: "meter small", role: "img", "aria-label": `KV cache ${Math.round(share * 100)}% used` }, fill),
        h("small", {}, ` ${batch.kv_used} / ${batch.kv_cells}`),
      );
    } else {
      cells.kv.textContent = "—";
    }
    cells.expires = row.ttl === null || row.ttl === undefined ? null : performance.now() + row.ttl * 1000;
    this.tickRow(cells);
    const series = this.history.get(row.id) || { tps: [], ttft: [] };
    cells.tps.replaceChildren(sparkline(series.tps, `tokens per second, ${row.id}`, (v) => v.toFixed(1)));
    cells.ttft.replaceChildren(sparkline(series.ttft, `time to first token, ${row.id}`, ms));
    cells.load.disabled = resident;
    cells.unload.disabled = !resident;
    cells.reload.disabled = row.state !== "loaded";
  }

  tick() {
    for (const cells of this.rows.values()) this.tickRow(cells);
  }

  tickRow(cells) {
    cells.ttl.textContent = cells.expires === null ? "—" : seconds((cells.expires - performance.now()) / 1000);
  }

  renderRecent(records) {
    $("#recent tbody").replaceChildren(
      ...records.map((r) =>
        h(
          "tr",
          { "data-request-id": r.request_id },
          h("td", { title: r.ts }, r.ts.slice(11, 19)),
          h("td", {}, r.key_id ?? "—"),
          h("td", {}, r.model ?? "—"),
          h("td", {}, `${r.method} ${r.endpoint}`),
          h("td", { class: r.status >= 400 ? "bad" : "" }, String(r.status ?? "—")),
          h("td", {}, r.completion_tokens === null ? "—" : `${r.prompt_tokens} → ${r.completion_tokens}`),
          h("td", {}, ms(r.ttft_ms)),
          h("td", {}, ms(r.duration_ms)),
        ),
      ),
    );
  }

  async act(action, done = "") {
    $("#overview-error").textContent = "";
    const poll = this.poll();
    try {
      await Promise.all([action(), poll]);
      if (done) $("#overview-status").textContent = done;
    } catch (error) {
      if (error.status === 401) this.onUnauthorized();
      else $("#overview-error").textContent = error.message;
    }
    this.poll();
  }
}

function fromState(s) {
  return {
    id: s.id,
    state: s.state,
    aliases: s.aliases || [],
    pinned: s.pinned,
    placement: s.placement,
    pools: s.measured_pools || s.memory_pools,
    claimed: s.memory_pools, // what the scheduler counts against each pool's budget
    memory: s.memory_bytes,
    running: s.in_flight,
    queued: s.queued,
    parallel: s.parallel,
    batch: s.batch,
    ttl: s.idle_expires_in,
    draining: s.draining,
    failure: s.failure,
  };
}

function fromCard(c) {
  return {
    id: c.id,
    state: c.status.value,
    aliases: c.aliases || [],
    placement: c.placement,
    pools: c.memory_pools,
    memory: c.memory_bytes,
  };
}
