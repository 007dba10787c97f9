// Compare: a summary table (base, final and best figures per job, with deltas against the base), evaluation
// curves of several jobs overlaid, and the trade-off of domain gain against general drift.
import { api, listPages } from "../api.js";
import { LineChart, scatter } from "../charts.js";
import { PALETTE, el, fmt, statusBadge } from "../dom.js";

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
      jobs.map((j, i) => el("th", { style: `color:${PALETTE[i % PALETTE.length]}` }, `${j.name} (${j.spec.method})`)))),
    el("tbody", {}, rows));
}

async function pickJobs(view) {
  const { items: jobs } = await listPages("/v1/jobs");  // every job, a page of 200 at a time
  const boxes = jobs.map((j) => el("label", { class: "inline" }, el("input", { type: "checkbox", value: j.id }),
    `${j.name} (${j.method}) `, statusBadge(j.status)));
  const go = el("button", { class: "primary", onclick: () => {
    const ids = boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
    location.hash = `#/compare?ids=${ids.join(",")}`;
  } }, "Compare");
  view.replaceChildren(el("section", { class: "card" }, el("h1", {}, "Compare jobs"),
    jobs.length ? el("p", {}, "Pick two or more jobs, for example a MoL job and its CPT baseline.")
      : el("p", { class: "empty" }, "No jobs yet: start a MoL job with a CPT baseline from ",
        el("a", { href: "#/new" }, "New job"), "."),
    el("div", { class: "choices column" }, boxes), jobs.length ? go : null));
}

export async function comparePage(view, ids) {
  if (ids.length < 1) return pickJobs(view);
  const jobs = await Promise.all(ids.map((id) => api(`/v1/jobs/${id}`)));
  const series = await Promise.all(ids.map((id) => api(`/v1/jobs/${id}/metrics`)));
  const evals = series.map((points) => points.filter((p) => "eval/domain_ppl" in p).sort((a, b) => a.step - b.step));
  const charts = el("div", { class: "charts" });
  const tradeoff = el("div");
  view.replaceChildren(
    el("section", { class: "card" }, el("div", { class: "toolbar" }, el("h1", {}, "Compare"),
      jobs.map((j, i) => el("span", { class: "chip", style: `border-color:${PALETTE[i % PALETTE.length]}` },
        el("a", { href: `#/job/${j.id}` }, j.name), ` ${j.spec.method} `, statusBadge(j.status))),
      el("span", { class: "spacer" }), el("a", { class: "button", href: "#/compare" }, "Change selection"))),
    el("section", { class: "card" }, el("h2", {}, "Summary"), el("p", { class: "muted" }, "Held-out figures of each "
      + "job: the base model's (its evaluation at step 0), the last and the best, each with its change against the "
      + "base (green: better)."), summaryTable(jobs, evals)),
    el("section", { class: "card" }, el("h2", {}, "Evaluation curves"), charts),
    el("section", { class: "card" }, el("h2", {}, "Trade-off"),
      el("p", { class: "muted" }, "One point per job and evaluation, labelled with its step. Up is a better fit to the domain, right is more drift"
        + " from the base model on general text: MoL should climb as high as CPT while staying to the left."), tradeoff));

  const steps = [...new Set(evals.flatMap((e) => e.map((p) => p.step)))].sort((a, b) => a - b);
  for (const [name, title, y, log, range] of CURVES) {
    if (!evals.some((e) => e.some((p) => name in p))) continue;
    const chart = new LineChart(charts, { title, y, log, range,
      series: jobs.map((j, i) => ({ label: `${j.name} (${j.spec.method})`, color: PALETTE[i % PALETTE.length] })) });
    chart.set(steps, evals.map((e) => steps.map((s) => e.find((p) => p.step === s)?.[name] ?? null)));
  }
  scatter(tradeoff, {
    title: "Domain gain against general drift",
    xLabel: "general drift: KL to the base (nats / token)",
    yLabel: "domain gain: ln(base ppl / ppl)",
    groups: jobs.map((j, i) => {
      const base = evals[i].find((p) => p.step === 0)?.["eval/domain_ppl"];
      return { label: `${j.name} (${j.spec.method})`, color: PALETTE[i % PALETTE.length],
        points: base ? evals[i].filter((p) => "eval/general_kl" in p)
          .map((p) => ({ x: p["eval/general_kl"], y: Math.log(base / p["eval/domain_ppl"]), label: p.step })) : [] };
    }),
  });
}
