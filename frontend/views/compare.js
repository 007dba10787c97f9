// Compare: a summary table (base, final and best figures per job, with deltas against the base), evaluation
// curves of several jobs overlaid, and the trade-off of domain gain against general drift. With ?sweep=ID, a
// sweep's jobs on that trade-off with their Pareto frontier (the API computes it: mol_engine/sweep.py), and a table
// sortable by gain or drift.
import { api, listPages } from "../api.js";
import { LineChart, scatter } from "../charts.js";
import { PALETTE, el, fmt, jobBadge, lineageLine } from "../dom.js";
import { latestTaskScore, taskScoreTable } from "./task_evals.js";

const CURVES = [
  ["eval/domain_ppl", "Domain perplexity (held out)", "perplexity, log scale", true],
  ["eval/general_ppl", "General perplexity (held out)", "perplexity, log scale", true],
  ["eval/general_kl", "KL to the base on held-out general text", "nats / token", false],
  ["eval/qa_exact_match", "QA exact match", "fraction correct", false, [0, 1]],
];

// The summary's figures: which way is better, how a change against the base reads, and whether "best" means
// anything (KL to the base is 0 at the base, so its best is always the base itself).
const SUMMARY = [
  { name: "eval/domain_ppl", label: "Domain perplexity", lower: true, best: true,
    delta: (v, base) => `${v >= base ? "+" : "−"}${fmt(Math.abs(100 * (v / base - 1)), 3)}%` },
  { name: "eval/general_ppl", label: "General perplexity", lower: true, best: true,
    delta: (v, base) => `${v >= base ? "+" : "−"}${fmt(Math.abs(100 * (v / base - 1)), 3)}%` },
  { name: "eval/general_kl", label: "KL to the base (general)", lower: true, best: false,
    delta: (v, base) => `${v >= base ? "+" : "−"}${fmt(Math.abs(v - base), 3)}` },
  { name: "eval/qa_exact_match", label: "QA exact match", lower: false, best: true, percent: true,
    delta: (v, base) => `${v >= base ? "+" : "−"}${fmt(Math.abs(100 * (v - base)), 3)} pts` },
];

// {base, final, best} of one metric over a job's evaluations (ascending steps), each {step, value}; base is the
// evaluation at step 0 (the untouched base model), best the best one after it.
export function figures(evals, { name, lower }) {
  const points = evals.filter((p) => Number.isFinite(p[name])).map((p) => ({ step: p.step, value: p[name] }));
  if (!points.length) return null;
  const base = points.find((p) => p.step === 0) ?? null;
  const trained = points.filter((p) => p.step > 0);
  const best = trained.reduce((b, p) => (!b || (lower ? p.value < b.value : p.value > b.value) ? p : b), null);
  return { base, final: trained.at(-1) ?? null, best };
}

function summaryCell(point, base, metric, withStep) {
  if (!point) return el("td", { class: "num muted" }, "–");
  const shown = metric.percent ? `${fmt(100 * point.value, 3)}%` : fmt(point.value);
  const better = base && (metric.lower ? point.value < base.value : point.value > base.value);
  const same = base && point.value === base.value;
  return el("td", { class: "num" }, shown, withStep ? el("span", { class: "muted" }, ` at step ${point.step}`) : null,
    base ? el("span", { class: `delta ${same ? "" : better ? "good" : "bad"}`, "data-delta": metric.name },
      ` ${metric.delta(point.value, base.value)}`) : null);
}

// Per metric, rows base / final / best; one column per job, side by side.
function summaryTable(jobs, evals) {
  const rows = [];
  for (const metric of SUMMARY) {
    const per = evals.map((e) => figures(e, metric));
    if (per.every((f) => f === null)) continue;
    const kinds = [["base", "base (step 0)"], ["final", "final"], ...(metric.best ? [["best", "best"]] : [])];
    kinds.forEach(([kind, label], i) => rows.push(el("tr", { "data-metric": metric.name, "data-row": kind },
      i === 0 ? el("th", { rowspan: kinds.length, scope: "rowgroup" }, metric.label) : null,
      el("td", { class: "muted" }, label),
      per.map((f) => (kind === "base" ? summaryCell(f?.base, null, metric, false)
        : summaryCell(f?.[kind], f?.base, metric, kind === "best"))))));
  }
  if (!rows.length) return el("p", { class: "muted" }, "No evaluations yet: the figures appear once the jobs have evaluated.");
  return el("table", { class: "summary", "data-summary": "" },
    el("thead", {}, el("tr", {}, el("th", {}, "metric"), el("th", {}),
      jobs.map((j, i) => el("th", { style: `color:${PALETTE[i % PALETTE.length]}` }, `${j.name} (${j.spec.method})`,
        lineageLine(j))))),
    el("tbody", {}, rows));
}

// A sweep's table rows, sorted: by "gain" (highest first) or "drift" (lowest first); jobs without the figure last.
export function sortRows(rows, key) {
  const sign = key === "gain" ? -1 : 1;
  const known = (r) => r[key] !== null && r[key] !== undefined;
  return [...rows].sort((a, b) => (known(b) - known(a)) || (known(a) ? sign * (a[key] - b[key]) : 0)
    || a.name.localeCompare(b.name));
}

// Short keys for a sweep's points, by job id: A, B, … Z, AA, AB … in the API's order (best domain gain first). The
// plot labels each point with its key (full names overlap, however placed); the legend and the table say which job.
export function pointKeys(jobs) {
  const key = (i) => (i < 26 ? "" : key(Math.floor(i / 26) - 1)) + String.fromCharCode(65 + (i % 26));
  return Object.fromEntries(jobs.map((j, i) => [j.id, key(i)]));
}

// The trade-off plot's groups: one point per evaluated job off the frontier (its legend: key and grid point), then
// the frontier drawn as a line through its jobs in the API's order (lowest drift first); each point labelled with
// its key.
export function sweepGroups(sweep) {
  const keys = pointKeys(sweep.data);
  const label = (j) => Object.entries(j.values).map(([k, v]) => `${k}=${v}`).join(" ");
  const evaluated = sweep.data.filter((j) => j.gain !== null && j.drift !== null);
  const byId = Object.fromEntries(evaluated.map((j) => [j.id, j]));
  const frontier = sweep.frontier.filter((id) => byId[id]);
  return [
    ...evaluated.filter((j) => !j.on_frontier).map((j, i) => ({ label: `${keys[j.id]} · ${label(j)}`,
      color: PALETTE[(i + 1) % PALETTE.length], points: [{ x: j.drift, y: j.gain, label: keys[j.id] }] })),
    { label: `Pareto frontier: ${frontier.map((id) => keys[id]).join(", ")}`, color: "#111827",
      points: frontier.map((id) => ({ x: byId[id].drift, y: byId[id].gain, label: keys[id] })) },
  ];
}

function sweepTable(sweep) {
  const keys = pointKeys(sweep.data);
  const body = el("tbody");
  const heads = {};
  const draw = (key) => {
    for (const [k, th] of Object.entries(heads)) {
      th.dataset.sorted = k === key ? "yes" : "";
      th.firstChild.style.fontWeight = k === key ? "700" : "";
    }
    body.replaceChildren(...sortRows(sweep.data, key).map((j) => el("tr", { "data-job": j.id,
      "data-frontier": j.on_frontier ? "yes" : "no" },
      el("td", { "data-col": "point" }, el("strong", {}, keys[j.id])),
      el("td", {}, el("a", { href: `#/job/${j.id}` }, j.name)),
      el("td", {}, jobBadge(j)),
      el("td", { class: "num", "data-col": "gain" }, fmt(j.gain)),
      el("td", { class: "num", "data-col": "drift" }, fmt(j.drift)),
      el("td", {}, j.on_frontier ? el("strong", {}, "on the frontier") : el("span", { class: "muted" }, "dominated")))));
  };
  const sortable = (key, text, title) => (heads[key] = el("th", { title, class: "sortable",
    onclick: () => draw(key) }, el("button", { class: "link" }, text)));
  draw("gain");
  return el("table", { class: "summary", "data-sweep-table": "" }, el("thead", {}, el("tr", {},
    el("th", { title: "the point's label on the plot" }, "point"), el("th", {}, "job"),
    el("th", {}, "status"),
    sortable("gain", "domain gain ↓", "ln(base domain ppl / final domain ppl); click to sort, highest first"),
    sortable("drift", "drift ↑", "KL to the base on held-out general text at the final evaluation; click to sort, "
      + "lowest first"), el("th", {}, "Pareto"))), body);
}

export async function sweepPage(view, id) {
  const sweep = await api(`/v1/sweeps/${id}`);
  const grid = Object.entries(sweep.grid).map(([k, v]) => `${k} ∈ {${v.join(", ")}}`).join(" × ");
  const statuses = Object.entries(sweep.statuses).map(([s, n]) => `${n} ${s}`).join(", ");
  const plot = el("div");
  view.replaceChildren(
    el("section", { class: "card" }, el("div", { class: "toolbar" }, el("h1", {}, `Sweep ${sweep.name}`),
      el("span", { class: "spacer" }),
      el("a", { class: "button", href: `#/compare?ids=${sweep.data.map((j) => j.id).join(",")}` }, "Compare curves"),
      el("a", { class: "button", href: "#/compare" }, "Change selection")),
      el("p", { class: "muted" }, `${grid}: ${sweep.jobs} jobs (${statuses}) on the same data and seed.`)),
    el("section", { class: "card" }, el("h2", {}, "Pareto frontier"),
      el("p", { class: "muted" }, "One point per job at its final evaluation. Up is more domain gain, right is more "
        + "drift from the base on general text. The line joins the jobs no other job beats on both: pick among "
        + "them by the drift you accept. Each point is labelled with its letter in the table below."), plot),
    el("section", { class: "card" }, el("h2", {}, "Jobs"), sweepTable(sweep)));
  scatter(plot, { title: "Domain gain against general drift (sweep)", groups: sweepGroups(sweep),
    xLabel: "general drift: KL to the base (nats / token)", yLabel: "domain gain: ln(base ppl / ppl)" });
  plot.querySelector("figure").dataset.frontier = sweep.frontier.join(",");
}

async function pickJobs(view) {
  const [{ items: jobs }, sweeps] = await Promise.all([listPages("/v1/jobs"), api("/v1/sweeps")]);  // jobs: 200 a page
  const boxes = jobs.map((j) => el("label", { class: "inline" }, el("input", { type: "checkbox", value: j.id }),
    `${j.name} (${j.method}) `, jobBadge(j)));
  const go = el("button", { class: "primary", onclick: () => {
    const ids = boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
    location.hash = `#/compare?ids=${ids.join(",")}`;
  } }, "Compare");
  view.replaceChildren(el("section", { class: "card" }, el("h1", {}, "Compare jobs"),
    jobs.length ? el("p", {}, "Pick two or more jobs, for example a MoL job and its CPT baseline.")
      : el("p", { class: "empty" }, "No jobs yet: start a MoL job with a CPT baseline from ",
        el("a", { href: "#/new" }, "New job"), "."),
    el("div", { class: "choices column" }, boxes), jobs.length ? go : null,
    sweeps.data.length ? el("p", {}, "Or a sweep's jobs and their Pareto frontier: ", el("select", { "aria-label": "sweep",
      onchange: (e) => { if (e.target.value) location.hash = `#/compare?sweep=${e.target.value}`; } },
    el("option", { value: "" }, "pick a sweep"), sweeps.data.map((s) => el("option", { value: s.id },
      `${s.name} (${s.jobs} jobs)`)))) : null));
}

export async function comparePage(view, ids) {
  const sweep = new URLSearchParams(location.hash.split("?")[1] ?? "").get("sweep");
  if (sweep) return sweepPage(view, sweep);
  if (ids.length < 1) return pickJobs(view);
  const jobs = await Promise.all(ids.map((id) => api(`/v1/jobs/${id}`)));
  const series = await Promise.all(ids.map((id) => api(`/v1/jobs/${id}/metrics`)));
  const scores = await Promise.all(ids.map((id) => api(`/v1/jobs/${id}/evaluations`).then(latestTaskScore,
    () => null)));
  const evals = series.map((points) => points.filter((p) => "eval/domain_ppl" in p).sort((a, b) => a.step - b.step));
  const charts = el("div", { class: "charts" });
  const tradeoff = el("div");
  view.replaceChildren(
    el("section", { class: "card" }, el("div", { class: "toolbar" }, el("h1", {}, "Compare"),
      jobs.map((j, i) => el("span", { class: "chip", style: `border-color:${PALETTE[i % PALETTE.length]}` },
        el("a", { href: `#/job/${j.id}` }, j.name), ` ${j.spec.method} `, jobBadge(j))),
      el("span", { class: "spacer" }), el("a", { class: "button", href: "#/compare" }, "Change selection"))),
    el("section", { class: "card" }, el("h2", {}, "Summary"), el("p", { class: "muted" }, "Held-out figures of each "
      + "job: the base model's (its evaluation at step 0), the last and the best, each with its change against the "
      + "base (green: better)."), summaryTable(jobs, evals), taskScoreTable(jobs, scores)),
    el("section", { class: "card" }, el("h2", {}, "Evaluation curves"), charts),
    el("section", { class: "card" }, el("h2", {}, "Trade-off"),
      el("p", { class: "muted" }, "One point per job and evaluation, labelled with its step. Up is a better fit to the domain, right is more drift"
        + " from the base model on general text: MoL should climb as high as CPT while staying to the left. With "
        + "eval_tasks, either axis may be a task's score instead (its drop below the base, or its gain)."), tradeoff));

  const steps = [...new Set(evals.flatMap((e) => e.map((p) => p.step)))].sort((a, b) => a - b);
  const taskCurves = taskMetricNames(evals).map((m) => [m, `Task score ${m} (eval_tasks)`, "fraction correct", false,
    [0, 1]]);
  for (const [name, title, y, log, range] of [...CURVES, ...taskCurves]) {
    if (!evals.some((e) => e.some((p) => name in p))) continue;
    const chart = new LineChart(charts, { title, y, log, range,
      series: jobs.map((j, i) => ({ label: `${j.name} (${j.spec.method})`, color: PALETTE[i % PALETTE.length] })) });
    chart.set(steps, evals.map((e) => steps.map((s) => e.find((p) => p.step === s)?.[name] ?? null)));
  }
  const axes = tradeoffAxes(evals);
  const pick = (which) => el("select", { "aria-label": `${which} axis`, "data-axis": which },
    axes[which].map((a, i) => el("option", { value: i }, a.label)));
  const [xPick, yPick] = [pick("x"), pick("y")];
  const plot = el("div");
  const draw = () => {
    const [x, y] = [axes.x[xPick.value], axes.y[yPick.value]];
    plot.replaceChildren();
    scatter(plot, { title: `${y.title} against ${x.title}`, xLabel: x.label, yLabel: y.label,
      groups: jobs.map((j, i) => ({ label: `${j.name} (${j.spec.method})`, color: PALETTE[i % PALETTE.length],
        points: tradeoffPoints(evals[i], x, y) })) });
  };
  xPick.onchange = draw;
  yPick.onchange = draw;
  tradeoff.replaceChildren(el("div", { class: "toolbar" }, "right: ", xPick, " up: ", yPick), plot);
  draw();
}

// The task scores (eval_tasks: task/<name>/acc or task/<name>/exact_match) some evaluation of ``evals`` holds.
export function taskMetricNames(evals) {
  return [...new Set(evals.flat().flatMap((p) => Object.keys(p).filter((k) => k.startsWith("task/"))))].sort();
}

// The trade-off plot's axis choices, {x: [...], y: [...]}, each {title, label, value(point, base)}: drift (right)
// is the KL to the base or a task's drop below the base's score; gain (up) the domain gain or a task's gain.
export function tradeoffAxes(evals) {
  const tasks = taskMetricNames(evals);
  const points = (m, sign) => (p, base) => sign * 100 * (p[m] - base[m]);
  return {
    x: [{ title: "general drift", label: "general drift: KL to the base (nats / token)",
      value: (p) => p["eval/general_kl"] },
    ...tasks.map((m) => ({ title: `${m} drop`, label: `${m}: points below the base`, value: points(m, -1) }))],
    y: [{ title: "Domain gain", label: "domain gain: ln(base ppl / ppl)",
      value: (p, base) => Math.log(base["eval/domain_ppl"] / p["eval/domain_ppl"]) },
    ...tasks.map((m) => ({ title: `${m} gain`, label: `${m}: points over the base`, value: points(m, 1) }))],
  };
}

// One job's trade-off points on axes ``x`` and ``y``: each evaluation where both are finite, against its step 0.
export function tradeoffPoints(jobEvals, x, y) {
  const base = jobEvals.find((p) => p.step === 0);
  if (!base) return [];
  return jobEvals.map((p) => ({ x: x.value(p, base), y: y.value(p, base), label: p.step }))
    .filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
}
