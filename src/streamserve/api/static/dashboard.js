// The streamserve dashboard: polls dashboard/summary (relative, so it works behind a path
// prefix), keeps the history it was sent, and draws it with uPlot. Every text from the server
// (keys, model names, reasons) goes into the page as text, never as markup.
"use strict";

(function () {
  const TOP_KEYS = 15;
  const MAX_EVENTS = 200;
  const EVENTS_SHOWN = 60;
  const SEARCH_DELAY_MS = 250;
  const COLORS = ["#1f6feb", "#cf222e", "#8250df", "#bf8700", "#1a7f37", "#e16f24", "#57606a", "#0a3069"];
  const SWAP_KINDS = new Set(["model_swapped", "model_restored"]);
  const REJECT_KINDS = new Set(["model_rejected", "model_quarantined"]);

  const state = {
    next: 0,
    historyS: 600,
    pollMs: 2000,
    sort: "records",
    q: "",
    selected: linkedKey(),
    columns: emptyColumns(),
    events: [],
    timer: null,
    inFlight: false,
    again: false,
  };
  const charts = {};

  // The key named by the link (#key=...); none if the link mangled it (cut when pasted, say).
  function linkedKey() {
    const found = location.hash.match(/^#key=(.*)$/);
    if (!found) return "";
    try {
      return decodeURIComponent(found[1]);
    } catch (err) {
      return "";
    }
  }

  function emptyColumns() {
    return { t: [], records: [], results: [], errors: [], p50: [], p99: [], lag: [], kinds: {} };
  }

  function $(id) {
    return document.getElementById(id);
  }

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function count(value) {
    return value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US");
  }

  function micros(seconds) {
    return (seconds * 1e6).toLocaleString("en-US", { maximumFractionDigits: 2 });
  }

  function clock(epochS) {
    if (!epochS) return "–";
    return new Date(epochS * 1000).toLocaleTimeString("en-GB", { hour12: false });
  }

  // --- the history ----------------------------------------------------------------------------
  function merge(history, serverNow) {
    const c = state.columns;
    const before = c.t.length;
    const added = history.t.length;
    c.t.push(...history.t);
    c.records.push(...history.records_per_s);
    c.results.push(...history.results_per_s);
    c.errors.push(...history.errors_per_s);
    c.p50.push(...history.p50_s.map(toMillis));
    c.p99.push(...history.p99_s.map(toMillis));
    c.lag.push(...history.consumer_lag);
    for (const kind of Object.keys(history.errors_per_s_by_kind)) {
      if (!c.kinds[kind]) c.kinds[kind] = new Array(before).fill(0);
    }
    for (const kind of Object.keys(c.kinds)) {
      const values = history.errors_per_s_by_kind[kind] || new Array(added).fill(0);
      c.kinds[kind].push(...values);
    }
    trim(serverNow);
  }

  function toMillis(seconds) {
    return seconds === null ? null : seconds * 1000;
  }

  // Samples older than the history, by the server's clock: the browser's may be far off.
  function trim(serverNow) {
    const c = state.columns;
    const oldest = serverNow - state.historyS;
    let drop = 0;
    while (drop < c.t.length && c.t[drop] < oldest) drop++;
    if (!drop) return;
    for (const name of ["t", "records", "results", "errors", "p50", "p99", "lag"]) c[name].splice(0, drop);
    for (const kind of Object.keys(c.kinds)) c.kinds[kind].splice(0, drop);
  }

  // --- charts -----------------------------------------------------------------------------------
  function markers() {
    return {
      hooks: {
        draw: [
          (u) => {
            const ctx = u.ctx;
            const { left, top, width, height } = u.bbox;
            ctx.save();
            ctx.lineWidth = 2 * devicePixelRatio;
            for (const event of state.events) {
              const swap = SWAP_KINDS.has(event.kind);
              if (!swap && !REJECT_KINDS.has(event.kind)) continue;
              const x = Math.round(u.valToPos(event.at, "x", true));
              if (x < left || x > left + width) continue;
              ctx.strokeStyle = swap ? "rgba(26,127,55,0.55)" : "rgba(207,34,46,0.55)";
              ctx.beginPath();
              ctx.moveTo(x, top);
              ctx.lineTo(x, top + height);
              ctx.stroke();
            }
            ctx.restore();
          },
        ],
      },
    };
  }

  function chartOptions(container, series, format) {
    return {
      width: Math.max(container.clientWidth, 200),
      height: 200,
      series: [{}, ...series],
      scales: { x: { time: true } },
      axes: [
        { space: 70, values: (u, values) => values.map(clock) },
        { size: 64, values: (u, values) => values.map(format) },
      ],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      plugins: [markers()],
    };
  }

  function line(label, color, extra) {
    return Object.assign({ label, stroke: color, width: 1.5, spanGaps: false }, extra || {});
  }

  function shortNumber(value) {
    if (value === null || value === undefined) return "";
    const abs = Math.abs(value);
    if (abs >= 1e6) return (value / 1e6).toFixed(abs >= 1e7 ? 0 : 1) + "M";
    if (abs >= 1e3) return (value / 1e3).toFixed(abs >= 1e4 ? 0 : 1) + "k";
    return abs >= 10 || value === 0 ? value.toFixed(0) : value.toPrecision(2);
  }

  function chartData(name) {
    const c = state.columns;
    if (name === "rate") return [c.t, c.records, c.results];
    if (name === "latency") return [c.t, c.p50, c.p99];
    if (name === "lag") return [c.t, c.lag];
    const kinds = Object.keys(c.kinds).sort();
    return kinds.length ? [c.t, ...kinds.map((kind) => c.kinds[kind])] : [c.t, c.errors];
  }

  function chartSeries(name) {
    if (name === "rate") return [line("records/s", COLORS[0]), line("results/s", COLORS[4], { dash: [6, 4] })];
    if (name === "latency") return [line("p50", COLORS[0]), line("p99", COLORS[2])];
    if (name === "lag") return [line("lag", COLORS[3])];
    const kinds = Object.keys(state.columns.kinds).sort();
    if (!kinds.length) return [line("errors/s", COLORS[1])];
    return kinds.map((kind, index) => line(kind, COLORS[(index + 1) % COLORS.length]));
  }

  function drawChart(name, format) {
    const container = $("chart-" + name);
    container.dataset.points = String(state.columns.t.length); // the samples drawn
    const series = chartSeries(name);
    const shape = series.map((s) => s.label).join("|");
    const existing = charts[name];
    if (existing && existing.shape === shape) {
      existing.plot.setData(chartData(name));
      return;
    }
    if (existing) existing.plot.destroy();
    const plot = new uPlot(chartOptions(container, series, format), chartData(name), container);
    charts[name] = { plot, shape };
  }

  function drawCharts() {
    drawChart("rate", shortNumber);
    drawChart("latency", (v) => (v === null ? "" : v < 1 ? v.toPrecision(2) : shortNumber(v)));
    drawChart("errors", shortNumber);
    const onKafka = state.columns.lag.some((value) => value !== null);
    $("lag-figure").hidden = !onKafka; // the embedded runtime has no lag: no empty chart
    if (onKafka) drawChart("lag", shortNumber);
  }

  function resizeCharts() {
    for (const name of Object.keys(charts)) {
      const container = $("chart-" + name);
      charts[name].plot.setSize({ width: Math.max(container.clientWidth, 200), height: 200 });
    }
  }

  // --- totals, keys, the selected key, the timeline --------------------------------------------
  function showTotals(doc) {
    const t = doc.totals;
    $("version").textContent = "v" + doc.version;
    $("total-records").textContent = count(t.records);
    $("total-results").textContent = count(t.results);
    $("total-errors").textContent = count(t.errors);
    $("total-keys").textContent = count(t.keys);
    $("total-model-messages").textContent = count(t.model_messages);
    $("total-loads").textContent = count(t.loads_pending);
    $("total-lag").textContent = t.consumer_lag === null ? "not on Kafka" : count(t.consumer_lag);
  }

  function showKeys(keys) {
    const body = document.querySelector("#keys-table tbody");
    const rows = keys.rows.map((row) => {
      const tr = document.createElement("tr");
      tr.dataset.key = row.key;
      if (row.key === state.selected) tr.className = "selected";
      tr.append(
        element("td", row.key),
        element("td", row.model === null ? "no model" : row.model),
        element("td", count(row.records), "num"),
        element("td", count(row.errors), "num"),
        element("td", count(row.records_per_s), "num"),
        element("td", row.staged === null ? "" : row.staged),
      );
      tr.title = row.version === null ? row.key : row.key + ": " + row.model + " " + row.version;
      return tr;
    });
    body.replaceChildren(...rows);
    const shown = keys.rows.length;
    const what = keys.q ? "matching “" + keys.q + "”" : "";
    $("keys-count").textContent = shown + " of " + count(keys.total) + " " + what;
  }

  function showKey(doc) {
    const body = document.querySelector("#models-table tbody");
    $("detail-key").textContent = doc ? doc.key : state.selected || "–";
    if (!doc) {
      $("detail-flags").textContent = state.selected ? "(no such key now)" : "";
      body.replaceChildren();
      $("detail-rejections").replaceChildren();
      $("detail-rejected").textContent = "";
      return;
    }
    const flags = [];
    if (doc.pinned) flags.push("pinned");
    if (doc.value_type) flags.push("values: " + doc.value_type);
    $("detail-flags").textContent = flags.join(", ");
    body.replaceChildren(...["current", "staged", "previous"].map((role) => modelRow(role, doc[role])));
    const rejections = doc.recent_rejections.slice(-5).reverse().map((r) => {
      const item = element("li", clock(r.at) + " " + r.name + " (" + r.kind + "): " + r.reason);
      item.title = r.reason;
      return item;
    });
    $("detail-rejections").replaceChildren(...rejections);
    $("detail-rejected").textContent = "(" + count(doc.rejected_total) + " rejected, " + count(doc.quarantined_total) + " quarantined)";
  }

  function modelRow(role, model) {
    const tr = document.createElement("tr");
    tr.dataset.role = role;
    if (!model) {
      tr.className = "empty";
      tr.append(element("td", role), element("td", "none"));
      return tr;
    }
    const name = element("td", model.name, "name");
    name.title = model.description || model.name;
    tr.append(
      element("td", role),
      name,
      element("td", model.version, "version"),
      element("td", model.model_type),
      element("td", clock(model.since)),
      element("td", count(model.invocations), "num"),
      element("td", count(model.errors), "num"),
      element("td", micros(model.average_duration_s), "num"),
      element("td", micros(model.min_duration_s), "num"),
      element("td", micros(model.max_duration_s), "num"),
      element("td", model.load_duration_s.toFixed(2), "num"),
    );
    return tr;
  }

  function showTimeline() {
    const items = state.events.slice(-EVENTS_SHOWN).reverse().map((event) => {
      const li = document.createElement("li");
      li.dataset.kind = event.kind;
      li.dataset.key = event.key;
      let what = event.model ? event.model + (event.version ? " " + event.version : "") : "";
      if (event.previous) what += " (was " + event.previous + ")";
      if (event.reason) what += (what ? ": " : "") + event.reason;
      const detail = element("span", what, "what");
      detail.title = what;
      li.append(
        element("span", clock(event.at), "at"),
        element("span", event.kind.replace("model_", ""), "kind"),
        element("span", event.key || "(no key)", "key"),
        detail,
      );
      return li;
    });
    $("timeline").replaceChildren(...items);
  }

  // --- polling ----------------------------------------------------------------------------------
  function apply(doc) {
    if (doc.next < state.next) {
      // a server restarted with its clock set back: its cursor (from its clock) starts lower
      state.columns = emptyColumns();
      state.events = [];
      state.next = 0;
      return true;
    }
    state.next = doc.next;
    state.historyS = doc.history_s;
    state.pollMs = doc.poll_s * 1000;
    merge(doc.history, doc.now);
    state.events.push(...doc.events);
    state.events.sort((a, b) => a.at - b.at);
    if (state.events.length > MAX_EVENTS) state.events.splice(0, state.events.length - MAX_EVENTS);
    if (!state.selected && doc.keys.rows.length && !state.q) {
      state.selected = doc.keys.rows[0].key;
      return true; // ask again at once, for the selected key's models
    }
    showTotals(doc);
    showKeys(doc.keys);
    showKey(doc.key);
    showTimeline();
    drawCharts();
    return false;
  }

  function summaryUrl() {
    const params = new URLSearchParams({ since: String(state.next), sort: state.sort, top: String(TOP_KEYS) });
    if (state.q) params.set("q", state.q);
    if (state.selected) params.set("key", state.selected);
    return "dashboard/summary?" + params.toString();
  }

  function setStatus(kind, text) {
    const status = $("status");
    status.dataset.state = kind;
    status.textContent = text;
  }

  async function poll() {
    clearTimeout(state.timer);
    if (state.inFlight) {
      state.again = true;
      return;
    }
    state.inFlight = true;
    let soon = false;
    try {
      const reply = await fetch(summaryUrl(), { cache: "no-store", headers: { accept: "application/json" } });
      const doc = await reply.json();
      if (!reply.ok) throw new Error(doc.error || "HTTP " + reply.status);
      soon = apply(doc);
      setStatus("live", "updated " + clock(doc.now));
    } catch (err) {
      setStatus("offline", "cannot reach the server: " + err.message);
    } finally {
      state.inFlight = false;
      const wait = soon || state.again ? 0 : state.pollMs;
      state.again = false;
      if (!document.hidden) state.timer = setTimeout(poll, wait);
    }
  }

  function select(key) {
    state.selected = key;
    history.replaceState(null, "", "#key=" + encodeURIComponent(key));
    poll();
  }

  function start() {
    let searchTimer = null;
    $("search").addEventListener("input", (event) => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => {
        state.q = event.target.value.trim();
        poll();
      }, SEARCH_DELAY_MS);
    });
    $("sort").addEventListener("change", (event) => {
      state.sort = event.target.value;
      poll();
    });
    document.querySelector("#keys-table tbody").addEventListener("click", (event) => {
      const row = event.target.closest("tr");
      if (row && row.dataset.key !== undefined) select(row.dataset.key);
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) poll(); // a hidden page does not poll: no work for the server
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(resizeCharts, 150);
    });
    poll();
  }

  start();
})();
