// vigil's dashboard: one page, four views chosen by the URL's hash:
//   #/                 runs and studies, live
//   #/run/<id>         a run's charts (live), images, summary and config
//   #/study/<id>       a study's counts, flags, table, scatter and report
//   #/compare?run=<id>&run=<id>…   runs side by side, and one scalar overlaid
// Every text from the server goes into the page as text (textContent), never as HTML.
// Part 3 of 3: the views and the router; lib.js and charts.js come first.
"use strict";

const view = document.getElementById("view");
const crumbs = document.getElementById("crumbs");
const liveBadge = document.getElementById("live");
// Set once per page load: the tests read it to tell an update from a reload.
window.vigilPageLoad = window.vigilPageLoad || Date.now() + Math.random();

let cleanup = [];
function onLeave(fn) { cleanup.push(fn); }

function setCrumbs(...parts) {
  crumbs.replaceChildren(...parts.map((p) => (typeof p === "string" ? el("span", {}, p) : p)));
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
  const problems = el("div", { "data-problems": "" });
  const summary = el("div");
  const config = el("div");
  const title = el("h1", {}, run.name, " ", badge(run.facts.status));
  view.replaceChildren(title, head, problems,
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
  // What went wrong so far, from the log: shown while the run trains, before run.json exists.
  function drawProblems(lines) {
    problems.replaceChildren(...(lines.length ? [el("div", { class: "card" },
      el("h3", { class: "warn" }, `Warnings and errors in vigil.log (${lines.length}, newest last)`),
      el("ul", {}, lines.map((line) => el("li", { class: line.includes("[ERROR]") ? "bad" : "warn" }, line))))] : []));
  }
  drawProblems(run.log_problems);

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
  let source = null, pending = false, lastDraw = 0, ended = false;
  function redraw() {
    pending = false;
    lastDraw = Date.now();
    addBands(store);
    build();
  }
  function connect() {
    source = new EventSource(`/api/events?${q({ run: id, offset: store.offset })}`);
    // EventSource would reconnect by itself with the offset it started from, and add again
    // what it already had: reconnect from the offset reached instead.
    source.onerror = () => {
      if (ended) return;
      source.close();
      setTimeout(connect, 2000);
    };
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
      drawProblems(fresh.log_problems);
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
      ended = true;
      source.close();
      liveBadge.textContent = "";
      const fresh = await getJSON(`/api/run?${q({ run: id })}`);
      drawHead(fresh.facts);
      drawProblems(fresh.log_problems);
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
    drawProblems(fresh.log_problems);
    if (fresh.images.length !== images.dataset.count * 1) drawImages(images, id, fresh.images);
  }, 10000);
  onLeave(() => { ended = true; source.close(); clearInterval(imageTimer); liveBadge.textContent = ""; });
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
