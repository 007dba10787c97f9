// Job page: live charts over SSE, events, spec, checkpoints and the disk they take, cancel.
import { api } from "../api.js";
import { LineChart } from "../charts.js";
import { byteSize, el, statusBadge } from "../dom.js";

const FINAL = ["succeeded", "failed", "cancelled"];

function chartSet(parent) {
  const c = (title, y, series, log = false, range = null) => new LineChart(parent, { title, y, log, range, series });
  return {
    "train/domain_ce": [c("Training cross-entropy", "nats / token", [
      { label: "domain rows", color: "#2563eb" }, { label: "general rows (CPT)", color: "#ea580c" }]),
    ["train/domain_ce", "train/general_ce"]],
    "train/general_kl": [c("Training KL to the base (general rows, MoL)", "nats / token", [
      { label: "general KL", color: "#dc2626" }]), ["train/general_kl"]],
    "train/lr": [c("Learning rate", "lr", [{ label: "lr", color: "#9333ea" }]), ["train/lr"]],
    "train/tokens_per_s": [c("Throughput", "tokens / s", [{ label: "tokens/s", color: "#0891b2" }]),
      ["train/tokens_per_s"]],
    "eval/domain_ppl": [c("Domain perplexity (held out)", "perplexity, log scale", [
      { label: "domain ppl", color: "#2563eb" }], true), ["eval/domain_ppl"]],
    "eval/general_ppl": [c("General perplexity (held out)", "perplexity, log scale", [
      { label: "general ppl", color: "#16a34a" }], true), ["eval/general_ppl"]],
    "eval/general_kl": [c("KL to the base on held-out general text", "nats / token", [
      { label: "general KL", color: "#dc2626" }]), ["eval/general_kl"]],
    "eval/qa_exact_match": [c("QA exact match", "fraction correct", [
      { label: "exact match", color: "#ca8a04" }], false, [0, 1]), ["eval/qa_exact_match"]],
  };
}

function checkpointsTable(jobId, checkpoints) {
  if (!checkpoints.length) return el("p", { class: "muted" }, "No checkpoint yet.");
  return el("table", { class: "checkpoints" }, el("tbody", {}, checkpoints.map((c) => el("tr", {},
    el("td", {}, c.name), el("td", { class: "muted" }, `${byteSize(c.bytes)} · ${c.kind}`),
    el("td", {}, el("a", { class: "button", download: "", "data-download": c.name,
      href: `/v1/jobs/${jobId}/checkpoints/${c.name}/download?format=merged` }, "Download merged")),
    el("td", {}, c.kind === "adapter" ? el("a", { class: "button", download: "",
      href: `/v1/jobs/${jobId}/checkpoints/${c.name}/download?format=adapter` }, "Download adapter") : null)))));
}

// "1.2 GiB on disk, 3 checkpoints": the whole run directory (checkpoints, logs, samples), as the API measured it.
function diskUsed(job, checkpoints) {
  if (job.disk_bytes === null || job.disk_bytes === undefined) return null;
  const n = checkpoints.length;
  return el("p", { class: "muted", "data-disk": job.disk_bytes },
    `${byteSize(job.disk_bytes)} on disk, ${n} checkpoint${n === 1 ? "" : "s"}`);
}

// Building a token store is the long first part of a job on a big corpus: tokens done, rate, share and ETA.
function storeProgress(box, ev) {
  const d = ev.data || {};
  if (d.done || d.fraction === undefined) {
    box.replaceChildren(el("p", { class: "muted", "data-store": "ready" }, ev.message));
    return;
  }
  box.replaceChildren(el("p", { "data-store": "building" }, ev.message),
    el("progress", { max: 1, value: d.fraction, title: `${(100 * d.fraction).toFixed(1)}%` }));
}

export async function jobPage(view, jobId) {
  let job = await api(`/v1/jobs/${jobId}`);
  const header = el("div", { class: "toolbar" });
  const dataBox = el("div", { class: "store-progress" });
  const charts = el("div", { class: "charts" });
  const log = el("ul", { class: "events" });
  const ckpts = el("div");
  view.replaceChildren(el("section", { class: "card" }, header, dataBox),
    el("section", { class: "card" }, el("h2", {}, "Curves"), charts),
    el("div", { class: "two" },
      el("section", { class: "card" }, el("h2", {}, "Checkpoints"), ckpts),
      el("section", { class: "card" }, el("h2", {}, "Events"), log)),
    el("section", { class: "card" }, el("h2", {}, "Spec"), el("pre", {}, JSON.stringify(job.spec, null, 2))));
  const set = chartSet(charts);

  const drawHeader = () => {
    const cancel = el("button", { class: "danger", onclick: async () => {
      cancel.disabled = true;
      try { job = await api(`/v1/jobs/${jobId}/cancel`, { method: "POST" }); drawHeader(); }
      catch (err) { alert(err.message); cancel.disabled = false; }
    } }, job.cancel_requested ? "Cancelling…" : "Cancel");
    header.replaceChildren(el("h1", {}, job.name), statusBadge(job.status),
      el("span", { class: "muted" }, `step ${job.step} / ${job.max_steps} · ${job.spec.method} on ${job.spec.base_model}`),
      el("span", { class: "spacer" }), ...(FINAL.includes(job.status) ? [] : [cancel]));
    if (job.error) header.append(el("p", { class: "error wide" }, job.error));
  };
  const refresh = async () => {
    job = await api(`/v1/jobs/${jobId}`);
    drawHeader();
    const checkpoints = await api(`/v1/jobs/${jobId}/checkpoints`);
    ckpts.replaceChildren(diskUsed(job, checkpoints) ?? "", checkpointsTable(jobId, checkpoints));
  };
  await refresh();

  const source = new EventSource(`/v1/jobs/${jobId}/events`);
  let lastCheckpoints = 0;
  source.addEventListener("metric", (e) => {
    const point = JSON.parse(e.data);
    for (const [chart, names] of Object.values(set)) {
      if (names.some((n) => n in point)) chart.push(point.step, names.map((n) => point[n]));
    }
  });
  source.addEventListener("event", (e) => {
    const ev = JSON.parse(e.data);
    log.prepend(el("li", { "data-kind": ev.kind }, el("span", { class: "muted" }, `step ${ev.step} · ${ev.kind} · `),
      ev.message));
    if (ev.kind === "checkpoint" || FINAL.includes(ev.kind)) lastCheckpoints += 1;
    if (ev.kind === "token-store" || ev.kind === "self-sample") storeProgress(dataBox, ev);
  });
  source.addEventListener("end", () => { source.close(); refresh(); });
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) refresh(); };
  // Redraw at most twice a second, however fast points arrive; refresh status and checkpoints meanwhile.
  let seen = 0;
  const timer = setInterval(() => {
    Object.values(set).forEach(([chart]) => chart.flush());
    if (lastCheckpoints !== seen) { seen = lastCheckpoints; refresh(); }
  }, 500);
  const status = setInterval(() => { if (!FINAL.includes(job.status)) refresh(); }, 3000);
  return () => { source.close(); clearInterval(timer); clearInterval(status); };
}

