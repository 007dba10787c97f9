// Charts: uPlot line charts that grow point by point, and a small canvas scatter for the trade-off view.
import { el, fmt } from "./dom.js";

const uPlot = window.uPlot;
const HEIGHT = 220;

// The range an axis shows for values min..max: uPlot's padded one, except that a single value (one point, a flat
// line) gets a small span around itself instead of uPlot's 0–100.
export function axisRange(min, max, { log = false, integer = false } = {}) {
  if (min === null || max === null || !Number.isFinite(min) || !Number.isFinite(max)) return log ? [1, 10] : [0, 1];
  if (log && min <= 0) return [1, 10];  // nothing a log axis can show (no points yet)
  if (min === max) {
    if (integer) return [Math.max(0, min - 1), max + 1];
    if (log) return [min / 1.5, max * 1.5];
    const pad = Math.abs(min) * 0.1 || 0.1;
    return [min - pad, max + pad];
  }
  if (integer) return [min, max];
  return log ? uPlot.rangeLog(min, max, 10, false) : uPlot.rangeNum(min, max, 0.1, true);
}

// A y tick: 3 significant digits, whole thousands with separators (a log axis reaches 10,000 and more).
function tickLabel(v) {
  if (v === null || v === undefined) return "";
  return Number.isInteger(v) && Math.abs(v) >= 1e4 && Math.abs(v) < 1e9 ? v.toLocaleString("en-US") : fmt(v, 3);
}

// Labels of a y axis's ticks, with as many decimals as tell neighbours apart (a loss that moves in its fourth
// digit would read 6.88, 6.88, 6.88 at three significant digits).
export function tickLabels(ticks) {
  const labels = ticks.map(tickLabel);
  const shown = labels.filter(Boolean);
  const numbers = ticks.filter((v) => Number.isFinite(v));
  if (new Set(shown).size === shown.length || numbers.length < 2) return labels;
  const step = Math.min(...numbers.slice(1).map((v, i) => Math.abs(v - numbers[i])).filter((d) => d > 0));
  const decimals = Math.min(12, Math.max(0, Math.ceil(-Math.log10(step) - 1e-9)));
  return ticks.map((v) => (Number.isFinite(v) ? v.toFixed(decimals) : ""));
}

// A dashed horizontal line across the plot at `line.value` (a limit such as the forgetting budget), labelled.
function drawLimit(u, line) {
  const y = Math.round(u.valToPos(line.value, "y", true));
  const { left, top, width, height } = u.bbox;
  if (!Number.isFinite(y) || y < top || y > top + height) return;
  const ctx = u.ctx;
  const ratio = window.devicePixelRatio || 1;
  ctx.save();
  ctx.strokeStyle = ctx.fillStyle = line.color || "#111";
  ctx.lineWidth = 1.5 * ratio;
  ctx.setLineDash([6 * ratio, 4 * ratio]);
  ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + width, y); ctx.stroke();
  ctx.font = `${11 * ratio}px system-ui`;
  ctx.textAlign = "left";  // KL curves start at 0 on the left: the label stays clear of them there
  ctx.fillText(line.label, left + 4 * ratio, y - 4 * ratio);
  ctx.restore();
}

// A titled line chart; series share the x axis (step). `log` puts the y axis on a log scale, `range` fixes it,
// `empty` says when the first point comes, `limit` ({value, label, color}) draws a dashed line the y axis always
// shows. A series without points stays out of the legend.
export class LineChart {
  constructor(parent, { title, y, log = false, range = null, series, limit = null,
    empty = "No points yet: the curve appears with the first evaluation." }) {
    this.series = series;
    this.empty = el("p", { class: "chart-empty" }, empty);
    this.box = el("div", { class: "chart", hidden: true });
    this.card = el("figure", { class: "chart-card", "data-chart": title }, el("figcaption", {}, title), this.box,
      this.empty);
    if (limit) this.card.dataset.limit = limit.value;
    const withLimit = (min, max) => (limit && min !== null && max !== null
      ? [Math.min(min, limit.value), Math.max(max, limit.value)] : [min, max]);
    parent.append(this.card);
    this.x = [];
    this.ys = series.map(() => []);
    const width = Math.max(280, parent.clientWidth / 2 || 420);
    this.plot = new uPlot({
      width, height: HEIGHT,
      scales: {
        x: { time: false, range: (u, min, max) => axisRange(min, max, { integer: true }) },
        y: log ? { distr: 3, range: (u, min, max) => axisRange(min, max, { log: true }) }
          : { range: range ?? ((u, min, max) => axisRange(...withLimit(min, max))) },
      },
      axes: [
        { label: "step", stroke: "#555", grid: { stroke: "#eee" },
          values: (u, ticks) => ticks.map((v) => (Number.isInteger(v) ? v : "")) },
        { label: y, stroke: "#555", grid: { stroke: "#eee" }, size: 70,
          values: (u, ticks) => tickLabels(ticks) },
      ],
      series: [{ label: "step" }, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 2,
        points: { show: true, size: 4 }, spanGaps: true, value: (u, v) => fmt(v) }))],
      legend: { live: true },
      hooks: limit ? { draw: [(u) => drawLimit(u, limit)] } : {},
    }, [[], ...series.map(() => [])], this.box);
    new ResizeObserver(() => {
      if (this.box.clientWidth) this.plot.setSize({ width: this.box.clientWidth, height: HEIGHT });
    }).observe(this.box);
  }

  // Adds one point per series at `step` (undefined for a series without a value there).
  push(step, values) {
    let at = this.x.indexOf(step);
    if (at === -1) {
      at = this.x.findIndex((s) => s > step);  // keep x ascending: a resumed run replays earlier steps
      if (at === -1) at = this.x.length;
      this.x.splice(at, 0, step);
      this.ys.forEach((ys) => ys.splice(at, 0, null));
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
    const filled = this.ys.map((ys) => ys.some((v) => v !== null && v !== undefined));
    const hasPoints = filled.some(Boolean);
    this.empty.hidden = hasPoints;
    this.box.hidden = !hasPoints;  // no empty 0–100 axes before the first point
    this.plot.setData([this.x, ...this.ys]);
    if (this.x.length === 1) {  // uPlot spans a lone x over 0–100 whatever the range function says
      const [min, max] = axisRange(this.x[0], this.x[0], { integer: true });
      this.plot.setScale("x", { min, max });
    }
    const rows = this.plot.root.querySelectorAll(".u-legend .u-series");
    filled.forEach((has, i) => { if (rows[i + 1]) rows[i + 1].style.display = has ? "" : "none"; });
    this.card.dataset.points = this.points;  // lets tests (and curious users) see the chart fill
  }

  get points() {
    return this.ys.reduce((n, ys) => n + ys.filter((v) => v !== null && v !== undefined).length, 0);
  }
}

// Round tick values covering lo..hi (steps of 1, 2, 2.5 or 5 times a power of ten), the span they cover, and
// the decimals that print them.
export function niceTicks(lo, hi, count = 5) {
  if (lo === hi) { lo -= 1; hi += 1; }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const m = [1, 2, 2.5, 5, 10].find((f) => f * mag >= raw * 0.999);
  const step = m * mag;
  const first = Math.floor(lo / step + 1e-9);
  const last = Math.ceil(hi / step - 1e-9);
  const decimals = Math.max(0, -Math.round(Math.log10(mag)) - (m === 10 ? 1 : 0) + (m === 2.5 ? 1 : 0));
  const ticks = [];
  for (let i = first; i <= last; i++) ticks.push(Number((i * step).toFixed(decimals)) + 0);  // + 0: no -0
  return { ticks, lo: ticks[0], hi: ticks[ticks.length - 1], decimals };
}

// The span an axis shows for `values`: theirs, widened by `margin` of it on each side (a lone value, or equal ones,
// by a tenth of itself), so the points fill the plot without sitting on its frame; null for no values.
export function dataSpan(values, margin = 0.08) {
  const finite = values.filter(Number.isFinite);
  if (!finite.length) return null;
  const lo = Math.min(...finite);
  const hi = Math.max(...finite);
  const pad = hi > lo ? (hi - lo) * margin : Math.abs(lo) * 0.1 || 0.1;
  return [lo - pad, hi + pad];
}

// An axis over `span` ([lo, hi]) exactly, with the round ticks that fall inside it and the decimals that print them.
export function fittedAxis([lo, hi]) {
  const { ticks, decimals } = niceTicks(lo, hi);
  return { lo, hi, decimals, ticks: ticks.filter((v) => v >= lo - 1e-12 && v <= hi + 1e-12) };
}

const overlaps = (a, b) => a.l < b.r && b.l < a.r && a.t < b.b && b.t < a.b;

// Where each point's label goes, in pixels: for each item {x, y, w, h} (the point, its label's size) the box
// {l, t, r, b} of the first spot around its point (right, left, above, below) that stays inside `area` and
// overlaps no label placed before it and no point's marker (of `radius`); null when no spot is free: that label
// is left out (the chart's legend or the table beside it names the point), so labels never overlap.
export function placeLabels(items, area, { gap = 6, radius = 4 } = {}) {
  const markers = items.map(({ x, y }) => ({ l: x - radius, r: x + radius, t: y - radius, b: y + radius }));
  const placed = [];
  return items.map(({ x, y, w, h }) => {
    const spots = [[gap, -h - 2], [gap, 2], [-gap - w, -h - 2], [-gap - w, 2], [-w / 2, -radius - 2 - h],
      [-w / 2, radius + 2]];
    for (const [dx, dy] of spots) {
      const box = { l: x + dx, t: y + dy, r: x + dx + w, b: y + dy + h };
      const inside = box.l >= area.l && box.r <= area.r && box.t >= area.t && box.b <= area.b;
      if (inside && !placed.some((p) => overlaps(p, box)) && !markers.some((m) => overlaps(m, box))) {
        placed.push(box);
        return box;
      }
    }
    return null;
  });
}

// A scatter of points per group ({x, y, label}), joined in order, on round axes that fit the points (the zero
// line drawn where it falls inside), each point labelled where its label overlaps nothing; it fills its card's
// width and redraws when the card is resized.
export function scatter(parent, { title, xLabel, yLabel, groups }) {
  const canvas = el("canvas", { class: "scatter", height: 380 });
  const legend = el("div", { class: "legend" }, groups.map((g) =>
    el("span", {}, el("i", { style: `background:${g.color}` }), g.label)));
  const card = el("figure", { class: "chart-card wide", "data-chart": title }, el("figcaption", {}, title),
    canvas, legend);
  parent.append(card);
  const draw = () => drawScatter(canvas, { xLabel, yLabel, groups });
  new ResizeObserver(draw).observe(card);
  draw();
}

function drawScatter(canvas, { xLabel, yLabel, groups }) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(320, canvas.clientWidth || canvas.parentElement.clientWidth);
  const height = 380;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const all = groups.flatMap((g) => g.points);
  canvas.dataset.points = all.length;
  if (!all.length) {
    ctx.fillStyle = "#777";
    ctx.font = "14px system-ui";
    ctx.fillText("No evaluations yet: points appear once the jobs have evaluated.", 40, height / 2);
    return;
  }
  const pad = { l: 80, r: 24, t: 16, b: 52 };
  const xs = fittedAxis(dataSpan(all.map((p) => p.x)));
  const ys = fittedAxis(dataSpan(all.map((p) => p.y)));
  const sx = (v) => pad.l + ((v - xs.lo) / (xs.hi - xs.lo)) * (width - pad.l - pad.r);
  const sy = (v) => height - pad.b - ((v - ys.lo) / (ys.hi - ys.lo)) * (height - pad.t - pad.b);
  canvas.dataset.xticks = xs.ticks.map((v) => v.toFixed(xs.decimals)).join(" ");
  canvas.dataset.yticks = ys.ticks.map((v) => v.toFixed(ys.decimals)).join(" ");
  ctx.font = "12px system-ui";
  ctx.lineWidth = 1;
  ctx.fillStyle = "#444";
  for (const v of xs.ticks) {
    ctx.strokeStyle = "#eee";
    ctx.beginPath(); ctx.moveTo(sx(v), pad.t); ctx.lineTo(sx(v), height - pad.b); ctx.stroke();
    ctx.textAlign = "center";
    ctx.fillText(v.toFixed(xs.decimals), sx(v), height - pad.b + 16);
  }
  for (const v of ys.ticks) {
    ctx.strokeStyle = v === 0 ? "#888" : "#eee";
    ctx.beginPath(); ctx.moveTo(pad.l, sy(v)); ctx.lineTo(width - pad.r, sy(v)); ctx.stroke();
    ctx.textAlign = "right";
    ctx.fillText(v.toFixed(ys.decimals), pad.l - 8, sy(v) + 4);
  }
  ctx.textAlign = "center";
  ctx.fillText(xLabel, (pad.l + width - pad.r) / 2, height - 12);
  ctx.save(); ctx.translate(16, (pad.t + height - pad.b) / 2); ctx.rotate(-Math.PI / 2);
  ctx.fillText(yLabel, 0, 0); ctx.restore();
  for (const g of groups) {
    ctx.strokeStyle = g.color; ctx.fillStyle = g.color; ctx.globalAlpha = 0.4; ctx.lineWidth = 2;
    ctx.beginPath();
    g.points.forEach((p, i) => (i ? ctx.lineTo(sx(p.x), sy(p.y)) : ctx.moveTo(sx(p.x), sy(p.y))));
    ctx.stroke(); ctx.globalAlpha = 1;
    for (const p of g.points) { ctx.beginPath(); ctx.arc(sx(p.x), sy(p.y), 4, 0, 2 * Math.PI); ctx.fill(); }
  }
  drawLabels(ctx, groups, sx, sy, { l: pad.l, t: pad.t, r: width - pad.r, b: height - pad.b }, canvas);
}

// The points' labels, each in its group's colour where placeLabels found it room; the canvas records the boxes
// drawn (data-labels) and how many labels found none (data-labels-left-out).
function drawLabels(ctx, groups, sx, sy, area, canvas) {
  ctx.font = "11px system-ui";
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  const items = [];
  for (const g of groups) {
    for (const p of g.points.filter((q) => q.label !== undefined)) {
      const item = { color: g.color, text: String(p.label), x: sx(p.x), y: sy(p.y) };
      // one label where several groups share a point and its label (every job's step 0, the base)
      if (items.some((o) => o.text === item.text && Math.hypot(o.x - item.x, o.y - item.y) < 1)) continue;
      items.push({ ...item, w: Math.ceil(ctx.measureText(item.text).width), h: 12 });
    }
  }
  const boxes = placeLabels(items, area);
  const drawn = [];
  items.forEach((item, i) => {
    if (!boxes[i]) return;
    ctx.fillStyle = item.color;
    ctx.fillText(item.text, boxes[i].l, boxes[i].t);
    drawn.push({ text: item.text, ...boxes[i] });
  });
  ctx.textBaseline = "alphabetic";
  canvas.dataset.labels = JSON.stringify(drawn);
  canvas.dataset.labelsLeftOut = items.length - drawn.length;
}
