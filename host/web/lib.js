// vigil's dashboard, part 1 of 3: small helpers every view uses (elements, requests,
// number and time formats, sortable tables). Loaded before charts.js and app.js.
"use strict";

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

