// Charts: uPlot line charts that grow point by point, and a small canvas scatter for the trade-off view.
import { el, fmt } from "./dom.js";

const uPlot = window.uPlot;

// A titled line chart; series share the x axis (step). `log` puts the y axis on a log scale.
export class LineChart {
  constructor(parent, { title, y, log = false, range = null, series }) {
    this.series = series;
    this.empty = el("p", { class: "chart-empty" }, "No points yet: the curve appears with the first evaluation.");
    this.box = el("div", { class: "chart" });
    this.card = el("figure", { class: "chart-card", "data-chart": title }, el("figcaption", {}, title), this.box,
      this.empty);
    parent.append(this.card);
    this.x = [];
    this.ys = series.map(() => []);
    const width = Math.max(280, this.box.clientWidth || 420);
    this.plot = new uPlot({
      width, height: 220,
      scales: { x: { time: false }, y: log ? { distr: 3 } : range ? { range } : {} },
      axes: [
        { label: "step", stroke: "#555", grid: { stroke: "#eee" } },
        { label: y, stroke: "#555", grid: { stroke: "#eee" }, size: 70,
          values: (u, ticks) => ticks.map((v) => (v === null || v === undefined ? "" : fmt(v, 3))) },
      ],
      series: [{ label: "step" }, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 2,
        points: { show: true, size: 4 }, spanGaps: true, value: (u, v) => fmt(v) }))],
      legend: { live: true },
    }, [[], ...series.map(() => [])], this.box);
    new ResizeObserver(() => this.plot.setSize({ width: Math.max(280, this.box.clientWidth), height: 220 }))
      .observe(this.box);
  }

  // Adds one point per series at `step` (undefined for a series without a value there).
  push(step, values) {
    let at = this.x.indexOf(step);
    if (at === -1) {
      this.x.push(step);
      this.ys.forEach((ys) => ys.push(null));
      at = this.x.length - 1;
    }
    values.forEach((v, i) => { if (v !== undefined) this.ys[i][at] = v; });
    this.dirty = true;
  }

  // Replaces all points: x sorted ascending, ys one array per series.
  set(x, ys) {
    this.x = x;
    this.ys = ys;
    this.dirty = true;
    this.flush();
  }

  flush() {
    if (!this.dirty) return;
    this.dirty = false;
    const hasPoints = this.ys.some((ys) => ys.some((v) => v !== null && v !== undefined));
    this.empty.hidden = hasPoints;
    this.plot.setData([this.x, ...this.ys]);
    this.card.dataset.points = this.points;  // lets tests (and curious users) see the chart fill
  }

  get points() {
    return this.ys.reduce((n, ys) => n + ys.filter((v) => v !== null && v !== undefined).length, 0);
  }
}

// A scatter of (x, y) points per group, with axes, a zero line, a legend, and lines joining a group's points.
export function scatter(parent, { title, xLabel, yLabel, groups }) {
  const canvas = el("canvas", { width: 900, height: 380, class: "scatter" });
  const legend = el("div", { class: "legend" }, groups.map((g) =>
    el("span", {}, el("i", { style: `background:${g.color}` }), g.label)));
  parent.append(el("figure", { class: "chart-card wide", "data-chart": title }, el("figcaption", {}, title),
    canvas, legend));
  const ctx = canvas.getContext("2d");
  const all = groups.flatMap((g) => g.points);
  if (!all.length) {
    ctx.fillStyle = "#777";
    ctx.font = "14px system-ui";
    ctx.fillText("No evaluations yet: points appear once the jobs have evaluated.", 40, 190);
    return;
  }
  const pad = { l: 90, r: 20, t: 20, b: 50 };
  const [x0, x1] = bounds(all.map((p) => p[0]));
  const [y0, y1] = bounds(all.map((p) => p[1]).concat([0]));
  const sx = (v) => pad.l + ((v - x0) / (x1 - x0)) * (canvas.width - pad.l - pad.r);
  const sy = (v) => canvas.height - pad.b - ((v - y0) / (y1 - y0)) * (canvas.height - pad.t - pad.b);
  ctx.font = "12px system-ui";
  ctx.strokeStyle = "#ccc";
  ctx.fillStyle = "#444";
  for (let i = 0; i <= 5; i++) {
    const xv = x0 + ((x1 - x0) * i) / 5;
    const yv = y0 + ((y1 - y0) * i) / 5;
    ctx.textAlign = "center";
    ctx.fillText(fmt(xv, 3), sx(xv), canvas.height - pad.b + 16);
    ctx.textAlign = "right";
    ctx.fillText(fmt(yv, 3), pad.l - 8, sy(yv) + 4);
    ctx.textAlign = "left";
    ctx.beginPath(); ctx.moveTo(pad.l, sy(yv)); ctx.lineTo(canvas.width - pad.r, sy(yv)); ctx.stroke();
  }
  ctx.strokeStyle = "#888";
  ctx.beginPath(); ctx.moveTo(pad.l, sy(0)); ctx.lineTo(canvas.width - pad.r, sy(0)); ctx.stroke();
  ctx.textAlign = "center";
  ctx.fillText(xLabel, (pad.l + canvas.width - pad.r) / 2, canvas.height - 12);
  ctx.save(); ctx.translate(18, (pad.t + canvas.height - pad.b) / 2); ctx.rotate(-Math.PI / 2);
  ctx.fillText(yLabel, 0, 0); ctx.restore();
  ctx.textAlign = "left";
  for (const g of groups) {
    ctx.strokeStyle = g.color; ctx.fillStyle = g.color; ctx.globalAlpha = 0.35;
    ctx.beginPath();
    g.points.forEach(([x, y], i) => (i ? ctx.lineTo(sx(x), sy(y)) : ctx.moveTo(sx(x), sy(y))));
    ctx.stroke(); ctx.globalAlpha = 1;
    for (const [x, y] of g.points) { ctx.beginPath(); ctx.arc(sx(x), sy(y), 4, 0, 2 * Math.PI); ctx.fill(); }
  }
}

function bounds(values) {
  let lo = Math.min(...values), hi = Math.max(...values);
  if (lo === hi) { lo -= 1; hi += 1; }
  const margin = (hi - lo) * 0.08;
  return [lo - margin, hi + margin];
}
