// The gallery page's script: filters, and the detail view of one job. It writes text only
// as textContent, never as markup: file names and error messages are untrusted.
"use strict";
(() => {
  const data = JSON.parse(document.getElementById("gallery-data").textContent);
  const byId = (id) => document.getElementById(id);
  const figures = Array.from(document.querySelectorAll("figure.job"));
  const rows = Array.from(document.querySelectorAll("tbody tr"));
  const columns = new Map(); // column index -> its header and cells
  for (const cell of document.querySelectorAll("[data-col]")) {
    if (!columns.has(cell.dataset.col)) columns.set(cell.dataset.col, []);
    columns.get(cell.dataset.col).push(cell);
  }

  // A job shows when it passes every filter; a row or column shows while any of its jobs does.
  function applyFilters() {
    const status = byId("status").value;
    const content = byId("content").value;
    const style = byId("style").value;
    let shown = 0;
    for (const figure of figures) {
      const cell = figure.parentElement;
      const visible =
        (status === "all" || figure.dataset.status === status) &&
        (content === "all" || cell.parentElement.dataset.row === content) &&
        (style === "all" || cell.dataset.col === style);
      figure.hidden = !visible;
      if (visible) shown += 1;
    }
    const showing = (element) => element.querySelector("figure.job:not([hidden])") !== null;
    for (const row of rows) row.hidden = !showing(row);
    for (const cells of columns.values()) {
      const visible = cells.some((cell) => cell.tagName === "TD" && showing(cell));
      for (const cell of cells) cell.hidden = !visible;
    }
    byId("shown").textContent = `${shown} of ${figures.length} jobs shown`;
  }
  for (const id of ["status", "content", "style"]) {
    byId(id).addEventListener("change", applyFilters);
  }
  applyFilters();

  const dialog = byId("detail");
  let opener = null;

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function table(caption, entries, highlight) {
    const node = element("table", null, "facts");
    node.append(element("caption", caption));
    for (const [key, value] of entries) {
      const row = element("tr", null, highlight && highlight(key) ? "differs" : "");
      row.append(element("th", key), element("td", format(value)));
      node.append(row);
    }
    return node;
  }

  function format(value) {
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(4);
    if (value === null || value === undefined) return "";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  const COLOURS = { total: "#222", style: "#d62728", content: "#1f77b4", tv: "#2ca02c" };

  // Each loss against evaluations, log scale, as SVG built here from the record's history.
  function chart(history) {
    const NS = "http://www.w3.org/2000/svg";
    const svg = (tag, attributes) => {
      const node = document.createElementNS(NS, tag);
      for (const [name, value] of Object.entries(attributes || {})) {
        node.setAttribute(name, String(value));
      }
      return node;
    };
    const xs = history.evaluation || [];
    const series = Object.keys(history)
      .filter((name) => name !== "evaluation")
      .map((name) => [
        name,
        xs
          .map((x, i) => [x, history[name][i]])
          .filter(([x, y]) => typeof x === "number" && typeof y === "number" && y > 0),
      ])
      .filter(([, points]) => points.length > 1);
    if (series.length === 0) return null;
    const [W, H, L, R, T, B] = [520, 260, 52, 90, 10, 34];
    const points = series.flatMap(([, p]) => p);
    const minX = Math.min(...points.map((p) => p[0]));
    const maxX = Math.max(...points.map((p) => p[0]));
    const lo = Math.floor(Math.log10(Math.min(...points.map((p) => p[1]))));
    let hi = Math.ceil(Math.log10(Math.max(...points.map((p) => p[1]))));
    if (hi <= lo) hi = lo + 1;
    const px = (x) => L + ((W - L - R) * (x - minX)) / (maxX - minX || 1);
    const py = (y) => T + ((H - T - B) * (hi - Math.log10(y))) / (hi - lo);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
    root.setAttribute("aria-label", `losses against evaluations ${minX} to ${maxX}, log scale`);
    for (let decade = lo; decade <= hi; decade += 1) {
      const y = py(10 ** decade);
      root.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: "gridline" }));
      const label = svg("text", { x: L - 6, y: y + 4, "text-anchor": "end" });
      label.textContent = `1e${decade}`;
      root.append(label);
    }
    root.append(svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "frame" }));
    series.forEach(([name, line], i) => {
      const colour = COLOURS[name] || "#9467bd";
      const path = line.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ");
      root.append(svg("polyline", { points: path, fill: "none", stroke: colour, "stroke-width": 2 }));
      const key = svg("text", { x: W - R + 8, y: T + 14 + 16 * i, fill: colour });
      key.textContent = name;
      root.append(key);
    });
    const axis = svg("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle" });
    axis.textContent = `evaluations (${minX}-${maxX})`;
    root.append(axis);
    return root;
  }

  function open(figure) {
    const job = data.jobs[Number(figure.dataset.job)];
    const params = data.params[job.params] || {};
    opener = figure;
    byId("detail-title").textContent = job.label;
    const body = byId("detail-body");
    body.replaceChildren();
    const seconds = job.seconds === null ? "" : ` in ${job.seconds.toFixed(1)} s`;
    body.append(element("p", `${job.status}${seconds}`, `state ${job.status}`));
    if (job.error) body.append(element("p", job.error, "error"));
    const links = element("p", null, "links");
    if (job.output) {
      const link = element("a");
      link.href = job.output;
      const image = element("img", null, "full");
      image.src = job.output;
      image.alt = job.label;
      link.append(image);
      body.append(link);
      const text = element("a", "full-size output");
      text.href = job.output;
      links.append(text, " ");
    }
    if (job.record) {
      const record = element("a", "record (JSON)");
      record.href = job.record;
      links.append(record);
    }
    body.append(links);
    if (Object.keys(job.losses).length) body.append(table("final losses", Object.entries(job.losses)));
    const curve = job.history ? chart(job.history) : null;
    if (curve) body.append(curve);
    else if (job.history) body.append(element("p", "too few recorded losses for a curve", "note"));
    const facts = ["size", "device", "precision", "evaluations", "created"]
      .filter((key) => job[key] !== undefined && job[key] !== null)
      .map((key) => [key, job[key]]);
    if (facts.length) body.append(table("run", facts));
    for (const note of job.notes || []) body.append(element("p", note, "note"));
    const differs = (key) => JSON.stringify(params[key]) !== JSON.stringify(data.common[key]);
    if (Object.keys(params).length) {
      body.append(table("parameters (marked: differ from most jobs)", Object.entries(params), differs));
    }
    dialog.showModal();
  }

  for (const figure of figures) {
    figure.addEventListener("click", () => open(figure));
    figure.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        open(figure);
      }
    });
  }
  byId("detail-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    byId("detail-body").replaceChildren(); // stop loading a large image nobody looks at
    if (opener) opener.focus();
  });
})();
