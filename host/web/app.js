// vigil's dashboard: one page, four views chosen by the URL's hash:
//   #/                 runs and studies, live
//   #/run/<id>         a run's charts (live), images, summary and config
//   #/study/<id>       a study's counts, flags, table, scatter and report
//   #/compare?run=<id>&run=<id>…   runs side by side, and one scalar overlaid
// Every text from the server goes into the page as text (textContent), never as HTML.
"use strict";

const view = document.getElementById("view");
const crumbs = document.getElementById("crumbs");
const liveBadge = document.getElementById("live");
// Set once per page load: the tests read it to tell an update from a reload.
window.vigilPageLoad = window.vigilPageLoad || Date.now() + Math.random();

let cleanup = [];
function onLeave(fn) { cleanup.push(fn); }

// ---- small helpers ----------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`${url}: ${response.status} ${(await response.text()).trim()}`);
  return response.json();
}

const q = (params) => Object.entries(params)
  .flatMap(([k, v]) => (Array.isArray(v) ? v : [v]).map((x) => `${k}=${encodeURIComponent(x)}`))
  .join("&");

function fmt(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(digits - 1);
  return String(Number(value.toPrecision(digits)));
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  seconds = Math.round(seconds);
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(s).padStart(2, "0")}s` : `${s}s`;
}

function when(unix) {
  if (!unix) return "—";
  const d = new Date(unix * 1000);
  return d.toISOString().slice(0, 16).replace("T", " ");
}

function badge(status) { return el("span", { class: `badge ${status}` }, status); }

function progressCell(facts) {
  const cell = [badge(facts.status)];
  if (facts.status === "running" && facts.total_steps && facts.global_step !== null) {
    const share = Math.min(1, facts.global_step / facts.total_steps);
    cell.push(el("span", { class: "progress", title: `${Math.round(share * 100)} %` },
      el("i", { style: `width:${(share * 100).toFixed(1)}%` })));
    cell.push(el("span", { class: "muted" }, ` ${Math.round(share * 100)} %, ETA ${duration(facts.eta_s)}`));
  }
  return cell;
}

function setCrumbs(...parts) {
  crumbs.replaceChildren(...parts.map((p) => (typeof p === "string" ? el("span", {}, p) : p)));
}

// A table whose columns sort on a click: columns = [{name, get, num, render}].
function sortableTable(columns, rows, options = {}) {
  let sortBy = options.sortBy ?? null, ascending = options.ascending ?? true;
  const table = el("table", { "data-table": options.name || "" });
  const head = el("thead");
  const body = el("tbody");
  function draw() {
    const sorted = rows.slice();
    if (sortBy !== null) {
      const get = columns[sortBy].get;
      sorted.sort((a, b) => {
        const x = get(a), y = get(b);
        if (x === y) return 0;
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        return (x < y ? -1 : 1) * (ascending ? 1 : -1);
      });
    }
    head.replaceChildren(el("tr", {}, columns.map((c, i) => el("th", {
      class: i === sortBy ? `sorted ${ascending ? "asc" : ""}` : "",
      title: c.title || "",
      onclick: () => { if (sortBy === i) ascending = !ascending; else { sortBy = i; ascending = true; } draw(); },
    }, c.name))));
    body.replaceChildren(...sorted.map((row) => el("tr", {}, columns.map((c) =>
      el("td", { class: c.num ? "num" : "" }, c.render ? c.render(row) : fmt(c.get(row)))))));
  }
  table.append(head, body);
  draw();
  table.redraw = (newRows) => { rows = newRows; draw(); };
  return table;
}

// ---- charts -----------------------------------------------------------------------------

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04",
  "#db2777", "#4b5563", "#65a30d", "#7c3aed", "#0d9488"];

// The series name of a record's field, as the server names it (serve/series.rs).
function seriesPrefix(record) { return record.kind === "monitor" ? record.monitor : record.kind; }
function seriesName(prefix, key) {
  return key.startsWith(prefix + "/") ? key : `${prefix}/${key}`;
}
const NOT_VALUES = new Set(["kind", "monitor", "epoch", "global_step", "wall_time"]);

// TensorBoard's smoothing: an exponential moving average with its start-up bias removed.
function smooth(ys, weight) {
  if (!weight) return ys;
  let last = 0, count = 0;
  return ys.map((y) => {
    if (y === null || !Number.isFinite(y)) return y;
    last = last * weight + (1 - weight) * y;
    count += 1;
    return last / (1 - Math.pow(weight, count));
  });
}

// Axis labels with as many digits as small values need (uPlot's default rounds 1e-3 to 0).
const tick = (u, values) => values.map((v) => (v === null ? "" : fmt(v, 3)));
const AXES = [{ values: tick }, { values: tick, size: 60 }];

// One chart of several series against the global step; `lines` = [{name, label, smooth}].
class Chart {
  constructor(parent, title, lines, options = {}) {
    this.lines = lines;
    this.options = options;
    this.box = el("div", { class: "chart", "data-chart": title });
    this.box.append(el("h3", {}, title));
    parent.append(this.box);
    this.plot = null;
    this.zoomed = null;
  }

  draw(store, smoothing) {
    const tables = [];
    const series = [{ label: "step" }];
    let points = 0;
    this.lines.forEach((line, i) => {
      const s = store.get(line.name);
      if (!s || !s.x.length) return;
      const ys = line.smooth ? smooth(s.y, smoothing) : s.y;
      tables.push([s.x, ys]);
      points += s.x.length;
      series.push({
        label: line.label || line.name,
        stroke: line.color || COLORS[i % COLORS.length],
        width: line.width || 1.5,
        dash: line.dash,
        spanGaps: true,
        points: { show: s.x.length < 60 || !!line.markers, size: 4 },
      });
    });
    this.box.dataset.points = String(points);
    if (!tables.length) return;
    const data = tables.length === 1 ? [tables[0][0], tables[0][1]] : uPlot.join(tables);
    const width = Math.max(300, this.box.clientWidth - 18);
    const sameShape = this.plot && this.plot.series.length === series.length;
    if (sameShape) {
      this.plot.setData(data, !this.zoomed);
      return;
    }
    if (this.plot) this.plot.destroy();
    this.plot = new uPlot({
      width, height: this.options.height || 220,
      scales: { x: { time: false }, y: { distr: this.options.log ? 3 : 1 } },
      axes: AXES,
      series,
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      hooks: { setScale: [(u, key) => { if (key === "x") this.onZoom(u); }] },
    }, data, this.box);
  }

  onZoom(u) {
    const { min, max } = u.scales.x;
    const full = u.data[0];
    this.zoomed = full.length && (min > full[0] || max < full[full.length - 1]) ? [min, max] : null;
    if (this.options.onZoom) this.options.onZoom(this, this.zoomed);
  }
}

// A run's series: filled from /api/metrics, extended by /api/events records.
class SeriesStore {
  constructor() { this.map = new Map(); this.offset = 0; this.lines = 0; }
  get(name) { return this.map.get(name); }
  names() { return [...this.map.keys()].sort(); }
  load(answer) {
    this.map.clear();
    for (const [name, s] of Object.entries(answer.series)) this.map.set(name, { x: s.x, y: s.y, total: s.total });
    this.offset = answer.offset;
    this.lines = answer.lines;
  }
  add(records) {
    const touched = new Set();
    for (const record of records) {
      const prefix = seriesPrefix(record);
      if (!prefix || typeof record.global_step !== "number") continue;
      this.lines += 1;
      for (const [key, value] of Object.entries(record)) {
        if (NOT_VALUES.has(key) || !(typeof value === "number" || value === null)) continue;
        const name = seriesName(prefix, key);
        let s = this.map.get(name);
        if (!s) { s = { x: [], y: [], total: 0 }; this.map.set(name, s); }
        s.x.push(record.global_step);
        s.y.push(value);
        s.total += 1;
        touched.add(name);
      }
    }
    return touched;
  }
}

// The charts a run's series make: loss, accuracy, learning rate, then one per monitor key
// family (a key and its `_stderr` drawn as ±2 standard errors), then system metrics.
function chartPlan(names) {
  const has = (n) => names.includes(n);
  const plan = [];
  const loss = [];
  if (has("train/train_loss")) {
    loss.push({ name: "train/train_loss", label: "train loss (raw)", color: "#93c5fd", width: 1 });
    loss.push({ name: "train/train_loss", label: "train loss (smoothed)", smooth: true, color: "#2563eb" });
  }
  if (has("validation/val_loss")) loss.push({ name: "validation/val_loss", label: "val loss", color: "#dc2626", width: 2, markers: true });
  if (loss.length) plan.push({ title: "loss", lines: loss, key: "loss" });
  const acc = [];
  if (has("train/train_acc")) acc.push({ name: "train/train_acc", label: "train acc (smoothed)", smooth: true });
  if (has("validation/val_acc")) acc.push({ name: "validation/val_acc", label: "val acc", color: "#dc2626", width: 2, markers: true });
  if (acc.length) plan.push({ title: "accuracy", lines: acc, key: "accuracy" });
  if (has("train/lr")) plan.push({ title: "learning rate", lines: [{ name: "train/lr", label: "lr" }], key: "lr" });
  const used = new Set(["train/train_loss", "validation/val_loss", "train/train_acc", "validation/val_acc", "train/lr"]);
  const groups = new Map();
  for (const name of names) {
    if (used.has(name)) continue;
    const [prefix] = name.split("/");
    if (["train", "validation", "epoch", "system"].includes(prefix)) continue;
    if (name.endsWith("_stderr") || name.endsWith("+2se") || name.endsWith("-2se")) continue;
    // gradient norms per layer share one chart; other keys each get one.
    const rest = name.slice(prefix.length + 1);
    const family = rest.includes("/") ? rest.split("/")[0] : rest;
    const key = `${prefix} · ${family}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(name);
  }
  for (const [title, members] of groups) {
    const lines = [];
    members.forEach((name) => {
      lines.push({ name, label: name.split("/").slice(1).join("/") || name });
      if (names.includes(`${name}_stderr`)) {
        lines.push({ name: `${name}+2se`, label: "+2 s.e.", color: "#9ca3af", dash: [4, 4], width: 1 });
        lines.push({ name: `${name}-2se`, label: "−2 s.e.", color: "#9ca3af", dash: [4, 4], width: 1 });
      }
    });
    plan.push({ title, lines, key: title, log: members.length > 6 });
  }
  const system = names.filter((n) => n.startsWith("system/"));
  for (const name of system) plan.push({ title: name, lines: [{ name, label: name.slice(7) }], key: name, system: true });
  return plan;
}

// Derived ±2 s.e. bands for keys that have a `_stderr` partner.
function addBands(store) {
  for (const name of store.names()) {
    if (!name.endsWith("_stderr")) continue;
    const base = store.get(name.slice(0, -7));
    const se = store.get(name);
    if (!base || !se || base.x.length !== se.x.length) continue;
    store.map.set(`${name.slice(0, -7)}+2se`, { x: base.x, y: base.y.map((y, i) => (y === null || se.y[i] === null ? null : y + 2 * se.y[i])) });
    store.map.set(`${name.slice(0, -7)}-2se`, { x: base.x, y: base.y.map((y, i) => (y === null || se.y[i] === null ? null : y - 2 * se.y[i])) });
  }
}

// ---- views ------------------------------------------------------------------------------

async function runsView() {
  setCrumbs("runs");
  const filter = el("input", { type: "search", placeholder: "filter: name, status, model, dataset…", "data-filter": "" });
  const compareButton = el("button", { disabled: true }, "Compare selected");
  const selected = new Set();
  const studiesBox = el("div");
  const tableBox = el("div", { class: "scroll" });
  const summary = el("span", { class: "muted" });
  view.replaceChildren(el("h1", {}, "Runs"), studiesBox,
    el("div", { class: "toolbar" }, filter, compareButton, summary), tableBox);
  compareButton.addEventListener("click", () => {
    location.hash = `#/compare?${q({ run: [...selected] })}`;
  });
  const columns = [
    { name: "", get: () => null, render: (r) => el("input", { type: "checkbox", checked: selected.has(r.id), onchange: (e) => { if (e.target.checked) selected.add(r.id); else selected.delete(r.id); compareButton.disabled = selected.size < 2; } }) },
    { name: "run", get: (r) => r.name, render: (r) => el("a", { href: `#/run/${encodeURIComponent(r.id)}` }, r.name) },
    { name: "status", get: (r) => r.facts.status, render: (r) => progressCell(r.facts) },
    { name: "model", get: (r) => r.facts.model },
    { name: "dataset", get: (r) => r.facts.dataset },
    { name: "steps", get: (r) => r.facts.global_step, num: true },
    { name: "best val loss", get: (r) => r.facts.best_val_loss, num: true },
    { name: "last val loss", get: (r) => r.facts.last_val_loss, num: true },
    { name: "last val acc", get: (r) => r.facts.last_val_acc, num: true },
    { name: "started", get: (r) => r.facts.started, render: (r) => when(r.facts.started) },
    { name: "duration", get: (r) => r.facts.duration_s, render: (r) => duration(r.facts.duration_s), num: true },
  ];
  let all = [];
  const table = sortableTable(columns, [], { name: "runs", sortBy: 9, ascending: false });
  tableBox.append(table);
  const matches = (r, text) => !text || [r.name, r.facts.status, r.facts.model, r.facts.dataset]
    .some((v) => v && String(v).toLowerCase().includes(text));
  const redraw = () => {
    const text = filter.value.trim().toLowerCase();
    const shown = all.filter((r) => matches(r, text));
    table.redraw(shown);
    summary.textContent = `${shown.length} of ${all.length} runs`;
  };
  filter.addEventListener("input", redraw);
  let timer = null;
  async function refresh() {
    const answer = await getJSON("/api/runs");
    all = answer.runs;
    studiesBox.replaceChildren(...(answer.studies.length ? [el("h2", {}, "Studies"), el("div", { class: "card" },
      answer.studies.map((s) => el("div", {}, el("a", { href: `#/study/${encodeURIComponent(s.id)}` }, s.name),
        el("span", { class: "muted" }, ` ${s.runs ?? "?"} runs`))))] : []));
    if (!all.length) tableBox.replaceChildren(el("p", { class: "muted", style: "padding:10px" }, `No runs under ${answer.roots.join(", ")} yet.`));
    else if (!tableBox.contains(table)) tableBox.replaceChildren(table);
    redraw();
    const running = all.some((r) => r.facts.status === "running");
    liveBadge.textContent = running ? "● live" : "";
    timer = setTimeout(refresh, running ? 2000 : 5000);
  }
  onLeave(() => clearTimeout(timer));
  await refresh();
}

async function runView(id) {
  setCrumbs(el("a", { href: "#/" }, "runs"), id.replace(/^\d+\//, ""));
  const [run, first] = await Promise.all([
    getJSON(`/api/run?${q({ run: id })}`),
    getJSON(`/api/metrics?${q({ run: id })}`),
  ]);
  const store = new SeriesStore();
  store.load(first);
  addBands(store);
  const head = el("div");
  const smoothing = el("input", { type: "range", min: 0, max: 0.99, step: 0.01, value: 0.6, "data-smoothing": "" });
  const smoothingValue = el("span", { class: "muted" }, "0.6");
  const charts = el("div", { class: "grid", "data-charts": "" });
  const systemCharts = el("div", { class: "grid" });
  const images = el("div");
  const summary = el("div");
  const config = el("div");
  const title = el("h1", {}, run.name, " ", badge(run.facts.status));
  view.replaceChildren(title, head,
    el("div", { class: "toolbar" }, el("label", {}, "smoothing ", smoothing), smoothingValue,
      el("span", { class: "muted" }, "drag on a chart to zoom (full resolution), double-click to reset")),
    charts, el("details", {}, el("summary", {}, "system metrics"), systemCharts),
    images, summary, config);

  function drawHead(facts) {
    title.replaceChildren(run.name, " ", badge(facts.status));
    head.replaceChildren(el("div", { class: "card facts" },
      [["status", progressCell(facts)], ["model", facts.model], ["dataset", facts.dataset],
        ["epoch", facts.epochs ? `${fmt(facts.epoch)} / ${facts.epochs}` : fmt(facts.epoch)],
        ["step", facts.total_steps ? `${fmt(facts.global_step)} / ${facts.total_steps}` : fmt(facts.global_step)],
        ["best val loss", fmt(facts.best_val_loss)], ["last val loss", fmt(facts.last_val_loss)],
        ["last val acc", fmt(facts.last_val_acc)], ["steps/s", fmt(facts.steps_per_second, 3)],
        ["started", when(facts.started)], ["duration", duration(facts.duration_s)],
        ["ETA", facts.status === "running" ? duration(facts.eta_s) : "—"]]
        .map(([k, v]) => el("div", {}, el("b", {}, k), v ?? "—"))));
  }
  drawHead(run.facts);

  let built = new Map();
  function build() {
    const plan = chartPlan(store.names());
    for (const item of plan) {
      if (built.has(item.key)) continue;
      const chart = new Chart(item.system ? systemCharts : charts, item.title, item.lines, { log: item.log, onZoom: zoom });
      built.set(item.key, chart);
    }
    for (const chart of built.values()) chart.draw(store, Number(smoothing.value));
  }
  // Zoomed in on a range that was thinned: ask for it at full resolution.
  async function zoom(chart, range) {
    const names = chart.lines.map((l) => l.name).filter((n) => { const s = store.get(n); return s && s.total > s.x.length; });
    if (!range || !names.length) return;
    const answer = await getJSON(`/api/metrics?${q({ run: id, series: names, x0: range[0], x1: range[1], max: 4000 })}`);
    const local = new SeriesStore();
    local.map = new Map(store.map);
    for (const [name, s] of Object.entries(answer.series)) local.map.set(name, s);
    chart.draw(local, Number(smoothing.value));
    chart.plot.setScale("x", { min: range[0], max: range[1] });
  }
  smoothing.addEventListener("input", () => { smoothingValue.textContent = smoothing.value; build(); });
  build();
  charts.addEventListener("dblclick", () => { for (const c of built.values()) c.zoomed = null; build(); });

  drawImages(images, id, run.images);
  drawSummary(summary, run.run);
  drawConfig(config, run.config);

  // Live: the lines appended after the series were read, pushed by the server.
  let source = null, pending = false, lastDraw = 0;
  function redraw() {
    pending = false;
    lastDraw = Date.now();
    addBands(store);
    build();
  }
  function connect() {
    source = new EventSource(`/api/events?${q({ run: id, offset: store.offset })}`);
    source.addEventListener("records", (e) => {
      const message = JSON.parse(e.data);
      store.add(message.records);
      store.offset = message.offset;
      if (!pending) { pending = true; setTimeout(redraw, Math.max(0, 1000 - (Date.now() - lastDraw))); }
    });
    source.addEventListener("state", async (e) => {
      const state = JSON.parse(e.data).state;
      liveBadge.textContent = state === "running" ? "● live" : "";
      const fresh = await getJSON(`/api/run?${q({ run: id })}`);
      drawHead(fresh.facts);
      drawImages(images, id, fresh.images);
      drawSummary(summary, fresh.run);
    });
    source.addEventListener("reset", async () => {
      source.close();
      store.load(await getJSON(`/api/metrics?${q({ run: id })}`));
      for (const c of built.values()) c.box.remove();
      built = new Map();
      redraw();
      connect();
    });
    source.addEventListener("end", async () => {
      source.close();
      liveBadge.textContent = "";
      const fresh = await getJSON(`/api/run?${q({ run: id })}`);
      drawHead(fresh.facts);
      drawImages(images, id, fresh.images);
      drawSummary(summary, fresh.run);
    });
  }
  connect();
  // New images appear per epoch: look again every 10 s while the page is open.
  const imageTimer = setInterval(async () => {
    if (run.facts.status !== "running" && source.readyState === 2) return;
    const fresh = await getJSON(`/api/run?${q({ run: id })}`);
    drawHead(fresh.facts);
    if (fresh.images.length !== images.dataset.count * 1) drawImages(images, id, fresh.images);
  }, 10000);
  onLeave(() => { source.close(); clearInterval(imageTimer); liveBadge.textContent = ""; });
}

// Images grouped by monitor and series, with an epoch slider where a series has epochs.
function drawImages(box, id, list) {
  box.dataset.count = String(list.length);
  if (!list.length) { box.replaceChildren(); return; }
  const groups = new Map();
  for (const image of list) {
    const key = image.series;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(image);
  }
  const cards = [];
  for (const [title, items] of groups) {
    const img = el("img", { alt: title, "data-image": title });
    const caption = el("span", { class: "muted" });
    const show = (i) => {
      img.src = `/api/file?${q({ run: id, path: items[i].path })}`;
      caption.textContent = items[i].epoch !== null ? ` epoch ${items[i].epoch}` : "";
    };
    const card = el("div", { class: "card" }, el("h3", {}, title, caption));
    if (items.length > 1) {
      const slider = el("input", { type: "range", min: 0, max: items.length - 1, value: items.length - 1, "data-epoch-slider": "" });
      slider.addEventListener("input", () => show(Number(slider.value)));
      card.append(el("div", {}, el("label", {}, "epoch ", slider)));
    }
    card.append(img);
    show(items.length - 1);
    cards.push(card);
  }
  box.replaceChildren(el("h2", {}, "Images"), el("div", { class: "images" }, cards));
}

function drawSummary(box, info) {
  if (!info) { box.replaceChildren(el("h2", {}, "Summary"), el("p", { class: "muted" }, "run.json is written when training ends.")); return; }
  const parts = [el("h2", {}, "Summary")];
  const lines = [["status", info.status], ["device", info.device], ["parameters", info.parameters],
    ["steps", info.global_step], ["steps/s", fmt(info.steps_per_second, 3)], ["best val loss", fmt(info.best_val_loss)],
    ["attempts", info.attempts.length], ["vigil", info.vigil_version]];
  if (info.stopped_by) lines.push(["stopped by", `${info.stopped_by.monitor}: ${info.stopped_by.reason}`]);
  if (info.early_stopping) lines.push(["early stopping", info.early_stopping.reason || `watching ${info.early_stopping.monitor}, did not stop`]);
  if (info.error) lines.push(["error", info.error]);
  parts.push(el("div", { class: "card facts" }, lines.map(([k, v]) => el("div", {}, el("b", {}, k), fmt(v)))));
  if (info.warnings.length) {
    parts.push(el("h3", { class: "warn" }, `Warnings (${info.warnings.length})`),
      el("ul", { "data-warnings": "" }, info.warnings.map((w) => el("li", { class: "warn" }, w))));
  }
  if (info.monitors.length) {
    parts.push(el("h3", {}, "Monitors"));
    parts.push(sortableTable([
      { name: "monitor", get: (m) => m.name },
      { name: "version", get: (m) => m.version },
      { name: "status", get: (m) => m.status, render: (m) => el("span", { class: m.status === "ok" ? "" : "bad" }, m.status) },
      { name: "share of step time", get: (m) => m.share_of_step_time, render: (m) => `${fmt(100 * m.share_of_step_time, 3)} %`, num: true },
      { name: "total ms", get: (m) => m.total_ms, num: true },
      { name: "non-finite dropped", get: (m) => m.dropped_non_finite_metrics, num: true },
      { name: "failure", get: (m) => (m.disabled ? `${m.disabled.hook || ""} ${m.disabled.reason || JSON.stringify(m.disabled)}` : null), render: (m) => (m.disabled ? el("span", { class: "bad" }, m.disabled.reason || JSON.stringify(m.disabled)) : "—") },
    ], info.monitors, { name: "monitors" }));
  }
  box.replaceChildren(...parts);
}

function drawConfig(box, config) {
  const rows = Object.entries(config).map(([key, value]) => ({ key, value }));
  box.replaceChildren(el("details", {}, el("summary", {}, `Effective config (${rows.length} keys)`),
    sortableTable([{ name: "key", get: (r) => r.key }, { name: "value", get: (r) => r.value }], rows, { name: "config" })));
}

async function studyView(id) {
  setCrumbs(el("a", { href: "#/" }, "runs"), `study ${id.replace(/^\d+\//, "")}`);
  const study = await getJSON(`/api/study?${q({ study: id })}`);
  const status = study.status;
  const parts = [el("h1", {}, `Study ${status.name}`)];
  parts.push(el("div", { class: "card facts", "data-counts": "" }, status.counts.map(([state, n]) => el("div", {}, el("b", {}, state), n)),
    el("div", {}, el("b", {}, "ETA"), status.eta_seconds ? duration(status.eta_seconds) : "—")));
  parts.push(el("h2", {}, `Data-quality flags (${status.flags.length})`));
  parts.push(status.flags.length
    ? sortableTable([
      { name: "run", get: (f) => f.run, render: (f) => (f.run ? el("a", { href: `#/run/${encodeURIComponent(`${id}/${f.run}`)}` }, f.run) : "(study)") },
      { name: "check", get: (f) => f.check },
      { name: "detail", get: (f) => f.detail },
    ], status.flags, { name: "flags" })
    : el("p", { class: "muted" }, "No flags."));
  if (study.report) parts.push(el("h2", {}, "H1 / H2"), el("pre", { "data-report": "" }, study.report));
  const selected = new Set();
  const compareButton = el("button", { disabled: true, onclick: () => { location.hash = `#/compare?${q({ run: [...selected] })}`; } }, "Compare selected");
  if (study.table) {
    const columns = study.table.columns;
    const rows = study.table.rows.map((cells) => Object.fromEntries(columns.map((c, i) => [c.name, cells[i]])));
    const runColumn = columns.find((c) => c.name === "run_id") ? "run_id" : columns[0].name;
    parts.push(el("h2", {}, `Runs (${rows.length})`), el("div", { class: "toolbar" }, compareButton));
    const tableColumns = [{ name: "", get: () => null, render: (r) => el("input", { type: "checkbox", onchange: (e) => { const rid = `${id}/${r[runColumn]}`; if (e.target.checked) selected.add(rid); else selected.delete(rid); compareButton.disabled = selected.size < 2; } }) }]
      .concat(columns.map((c) => ({
        name: c.name, title: c.meaning, get: (r) => r[c.name], num: typeof rows.find((r) => r[c.name] !== null)?.[c.name] === "number",
        render: c.name === runColumn ? (r) => el("a", { href: `#/run/${encodeURIComponent(`${id}/${r[runColumn]}`)}` }, r[runColumn]) : undefined,
      })));
    parts.push(el("div", { class: "scroll" }, sortableTable(tableColumns, rows, { name: "study" })));
    const numeric = columns.filter((c) => rows.some((r) => typeof r[c.name] === "number")).map((c) => c.name);
    if (numeric.length >= 2) {
      const xs = el("select", { "data-x": "" }, numeric.map((n) => el("option", { value: n }, n)));
      const ys = el("select", { "data-y": "" }, numeric.map((n) => el("option", { value: n }, n)));
      xs.value = numeric.includes("alpha_early") ? "alpha_early" : numeric[0];
      ys.value = numeric.includes("best_val_ce") ? "best_val_ce" : numeric[1];
      const box = el("div", { class: "chart", "data-chart": "scatter" });
      const drawScatter = () => {
        const pairs = rows.map((r) => [r[xs.value], r[ys.value]]).filter(([x, y]) => typeof x === "number" && typeof y === "number").sort((a, b) => a[0] - b[0]);
        box.replaceChildren();
        box.dataset.points = String(pairs.length);
        if (!pairs.length) { box.append(el("p", { class: "muted" }, "No run has both values yet.")); return; }
        new uPlot({ width: Math.min(900, view.clientWidth - 40), height: 360, scales: { x: { time: false } },
          series: [{ label: xs.value }, { label: ys.value, stroke: "#2563eb", paths: () => null, points: { show: true, size: 7, fill: "#2563eb" } }],
          axes: [{ label: xs.value, values: tick }, { label: ys.value, values: tick, size: 60 }] }, [pairs.map((p) => p[0]), pairs.map((p) => p[1])], box);
      };
      xs.addEventListener("change", drawScatter);
      ys.addEventListener("change", drawScatter);
      parts.push(el("h2", {}, "Scatter"), el("div", { class: "toolbar" }, el("label", {}, "x ", xs), el("label", {}, "y ", ys)), box);
      view.replaceChildren(...parts);
      drawScatter();
      return;
    }
  }
  view.replaceChildren(...parts);
}

// Green where the difference is an improvement (a lower loss or time, a higher accuracy or
// speed), red where it is worse, grey where neither applies.
function deltaClass(metric, delta) {
  const lowerIsBetter = /loss|time/.test(metric), higherIsBetter = /acc|per_s/.test(metric);
  if (!delta || !(lowerIsBetter || higherIsBetter)) return "muted";
  return (delta < 0) === lowerIsBetter ? "better" : "worse";
}

async function compareView(params) {
  const ids = params.getAll("run");
  const all = params.get("all") === "1";
  setCrumbs(el("a", { href: "#/" }, "runs"), `compare ${ids.length} runs`);
  const comparison = await getJSON(`/api/compare?${q({ run: ids })}${all ? "&all=1" : ""}`);
  const runs = comparison.runs;
  const toggle = el("label", {}, el("input", { type: "checkbox", checked: all, "data-all": "", onchange: (e) => {
    const next = new URLSearchParams(params); if (e.target.checked) next.set("all", "1"); else next.delete("all");
    location.hash = `#/compare?${next.toString()}`;
  } }), " show all config keys");
  const header = el("tr", {}, el("th", {}, ""), runs.map((r) => el("th", {}, el("a", { href: `#/run/${encodeURIComponent(r.id)}` }, r.name))));
  const configRows = comparison.config.map((row) => el("tr", { class: row.differs ? "diff" : "", "data-key": row.key },
    el("td", {}, row.key), row.values.map((v) => el("td", {}, v ?? "—"))));
  const metricRows = comparison.metrics.map((row) => el("tr", { "data-metric": row.metric }, el("td", {}, row.metric),
    row.values.map((v, i) => el("td", { class: "num" }, fmt(v),
      i > 0 && row.deltas[i] !== null ? el("span", { class: deltaClass(row.metric, row.deltas[i]) }, ` (${row.deltas[i] >= 0 ? "+" : ""}${fmt(row.deltas[i])})`) : null))));
  const statusRow = el("tr", {}, el("td", {}, "status"), runs.map((r) => el("td", {}, badge(r.facts.status))));
  const overlaySelect = el("select", { "data-overlay": "" });
  const overlayBox = el("div", { class: "chart", "data-chart": "overlay" });
  view.replaceChildren(el("h1", {}, `Compare ${runs.length} runs`), el("div", { class: "toolbar" }, toggle),
    el("h2", {}, all ? "Config" : `Config keys that differ (${comparison.config.length})`),
    el("div", { class: "scroll" }, el("table", { "data-table": "compare-config" }, el("thead", {}, header.cloneNode(true)), el("tbody", {}, statusRow, configRows.length ? configRows : el("tr", {}, el("td", { class: "muted" }, "The configs do not differ."))))),
    el("h2", {}, "Metrics (difference to the first run)"),
    el("div", { class: "scroll" }, el("table", { "data-table": "compare-metrics" }, el("thead", {}, header), el("tbody", {}, metricRows))),
    el("h2", {}, "Overlay"), el("div", { class: "toolbar" }, el("label", {}, "scalar ", overlaySelect)), overlayBox);
  const answers = await Promise.all(runs.map((r) => getJSON(`/api/metrics?${q({ run: r.id })}`)));
  const names = [...new Set(answers.flatMap((a) => Object.keys(a.series)))].sort();
  overlaySelect.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  overlaySelect.value = names.includes("validation/val_loss") ? "validation/val_loss" : names[0];
  const drawOverlay = () => {
    const name = overlaySelect.value;
    const tables = [], series = [{ label: "step" }];
    answers.forEach((a, i) => {
      const s = a.series[name];
      if (!s || !s.x.length) return;
      tables.push([s.x, s.y]);
      series.push({ label: runs[i].name, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true, points: { show: s.x.length < 60 } });
    });
    overlayBox.replaceChildren();
    overlayBox.dataset.points = String(tables.reduce((n, t) => n + t[0].length, 0));
    if (!tables.length) return;
    new uPlot({ width: Math.min(1100, view.clientWidth - 40), height: 320, scales: { x: { time: false } }, axes: AXES, series },
      tables.length === 1 ? tables[0] : uPlot.join(tables), overlayBox);
  };
  overlaySelect.addEventListener("change", drawOverlay);
  drawOverlay();
}

// ---- router -----------------------------------------------------------------------------

async function route() {
  for (const fn of cleanup) fn();
  cleanup = [];
  const hash = location.hash.slice(1) || "/";
  const [path, query] = hash.split("?");
  try {
    if (path.startsWith("/run/")) await runView(decodeURIComponent(path.slice(5)));
    else if (path.startsWith("/study/")) await studyView(decodeURIComponent(path.slice(7)));
    else if (path === "/compare") await compareView(new URLSearchParams(query || ""));
    else await runsView();
    document.body.dataset.view = path.split("/")[1] || "runs";
    // When the view was drawn, in ms from the start of navigation (vigil bench --dashboard).
    window.vigilRendered = performance.now();
  } catch (err) {
    view.replaceChildren(el("h1", {}, "Could not load this page"), el("p", { class: "bad" }, String(err.message || err)),
      el("p", {}, el("a", { href: "#/" }, "Back to the runs")));
  }
}
window.addEventListener("hashchange", route);
route();
