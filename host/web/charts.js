// vigil's dashboard, part 2 of 3: a run's series (as the server names them) and the charts
// they make, drawn with uPlot. Loaded after lib.js, before app.js.
"use strict";

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
  // Monitors in the order a reader looks for them, each one's diagnostics (iterations,
  // residuals, products spent, call counts) after every monitor's main values.
  const order = ["gradient", "curvature", "noise", "loss-slope"];
  const diagnostic = (title) => /(_iters|_residual|hvps|probe_loss|calls)$/.test(title);
  const rank = (title) => {
    const monitor = order.indexOf(title.split(" · ")[0]);
    return (diagnostic(title) ? 100 : 0) + (monitor < 0 ? order.length : monitor);
  };
  const sortedGroups = [...groups].sort((a, b) => rank(a[0]) - rank(b[0]));
  for (const [title, members] of sortedGroups) {
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

