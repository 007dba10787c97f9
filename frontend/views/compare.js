// Compare: evaluation curves of several jobs overlaid, and the trade-off of domain gain against general drift.
import { api, listPages } from "../api.js";
import { LineChart, scatter } from "../charts.js";
import { PALETTE, el, statusBadge } from "../dom.js";

const CURVES = [
  ["eval/domain_ppl", "Domain perplexity (held out)", "perplexity, log scale", true],
  ["eval/general_ppl", "General perplexity (held out)", "perplexity, log scale", true],
  ["eval/general_kl", "KL to the base on held-out general text", "nats / token", false],
  ["eval/qa_exact_match", "QA exact match", "fraction correct", false, [0, 1]],
];

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
  const evals = series.map((points) => points.filter((p) => "eval/domain_ppl" in p));
  const charts = el("div", { class: "charts" });
  const tradeoff = el("div");
  view.replaceChildren(
    el("section", { class: "card" }, el("div", { class: "toolbar" }, el("h1", {}, "Compare"),
      jobs.map((j, i) => el("span", { class: "chip", style: `border-color:${PALETTE[i % PALETTE.length]}` },
        el("a", { href: `#/job/${j.id}` }, j.name), ` ${j.spec.method} `, statusBadge(j.status))),
      el("span", { class: "spacer" }), el("a", { class: "button", href: "#/compare" }, "Change selection"))),
    el("section", { class: "card" }, el("h2", {}, "Evaluation curves"), charts),
    el("section", { class: "card" }, el("h2", {}, "Trade-off"),
      el("p", { class: "muted" }, "One point per job and evaluation. Up is a better fit to the domain, right is more drift"
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
          .map((p) => [p["eval/general_kl"], Math.log(base / p["eval/domain_ppl"])]) : [] };
    }),
  });
}
