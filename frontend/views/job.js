// Job page: live charts over SSE, events, spec, checkpoints and the disk they take, cancel.
import { api, words } from "../api.js";
import { LineChart, scatter } from "../charts.js";
import { byteSize, duration, el, jobBadge, lineageLine, localTime } from "../dom.js";
import { trackersSection } from "./job_files.js";
import { watchSideTasks } from "./side_tasks.js";
import { taskEvaluationSection } from "./task_evals.js";
import { jobUsageLine } from "./usage.js";


const AFTER_STEP = "No points yet: the curve appears after the first training step.";
const AFTER_EVAL = "No points yet: the curve appears with the first evaluation.";

// The charts a job draws, by what its method and spec record: general rows get CE under CPT and KL under MoL,
// held-out general figures need a general corpus (not domain_only), QA needs a QA set. Each entry:
// [chart options, metric names feeding its series].
// KL charts carry the forgetting budget (max_general_kl), when the spec sets one, else the KL set-point's target
// (kl_weight: auto), as a dashed line; a set-point run also charts the λ its controller chose each step.
export function chartsFor(spec) {
  const { method } = spec;
  const usesGeneral = method !== "domain_only";
  const auto = method === "mol" && spec.kl_weight === "auto";
  const limit = spec.max_general_kl
    ? { value: spec.max_general_kl, label: `budget ${spec.max_general_kl} (${spec.on_budget})`, color: "#7f1d1d" }
    : auto && spec.target_general_kl
      ? { value: spec.target_general_kl, label: `target ${spec.target_general_kl}`, color: "#15803d" } : null;
  return [
    [{ title: "Training cross-entropy", y: "nats / token", empty: AFTER_STEP, series: [
      { label: "domain rows", color: "#2563eb" }, method === "cpt" && { label: "general rows", color: "#ea580c" }] },
    ["train/domain_ce", method === "cpt" && "train/general_ce"]],
    method === "mol" && [{ title: "Training KL to the base (general rows)", y: "nats / token", empty: AFTER_STEP, limit,
      series: [{ label: "general KL", color: "#dc2626" }] }, ["train/general_kl"]],
    auto && [{ title: "KL weight λ (set-point controller)", y: "λ", empty: AFTER_STEP,
      series: [{ label: "kl_weight", color: "#7c3aed" }] }, ["train/kl_weight"]],
    [{ title: "Learning rate", y: "lr", empty: AFTER_STEP, series: [{ label: "lr", color: "#9333ea" }] }, ["train/lr"]],
    [{ title: "Throughput", y: "tokens / s", empty: AFTER_STEP, series: [{ label: "tokens/s", color: "#0891b2" }] },
      ["train/tokens_per_s"]],
    [{ title: "Domain perplexity (held out)", y: "perplexity, log scale", log: true, empty: AFTER_EVAL,
      series: [{ label: "domain ppl", color: "#2563eb" }] }, ["eval/domain_ppl"]],
    usesGeneral && [{ title: "General perplexity (held out)", y: "perplexity, log scale", log: true, empty: AFTER_EVAL,
      series: [{ label: "general ppl", color: "#16a34a" }] }, ["eval/general_ppl"]],
    usesGeneral && [{ title: "KL to the base on held-out general text", y: "nats / token", empty: AFTER_EVAL, limit,
      series: [{ label: "general KL", color: "#dc2626" }] }, ["eval/general_kl"]],
    spec.eval_data && [{ title: "QA exact match", y: "fraction correct", range: [0, 1], empty: AFTER_EVAL,
      series: [{ label: "exact match", color: "#ca8a04" }] }, ["eval/qa_exact_match"]],
    spec.eval_tasks?.length && [{ title: "Task scores (eval_tasks; step 0: the base)", y: "fraction correct",
      range: [0, 1], empty: AFTER_EVAL, series: spec.eval_tasks.map((e, i) => ({ label: taskName(e),
        color: TASK_COLORS[i % TASK_COLORS.length] })) }, spec.eval_tasks.map((e) => taskMetrics(taskName(e)))],
  ].filter(Boolean).map(([options, names]) => [{ ...options, series: options.series.filter(Boolean) },
    names.filter(Boolean)]);
}

const TASK_COLORS = ["#0d9488", "#db2777", "#65a30d", "#7c3aed", "#b45309", "#0284c7", "#be123c", "#4b5563"];

// An eval_tasks entry's name, as the engine names its metrics (mol_engine/spec.py task_entry): NAME=REF's NAME,
// else the file name without its extensions (a dataset id as it is).
export function taskName(entry) {
  const eq = entry.indexOf("=");
  if (eq > 0 && /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(entry.slice(0, eq))) return entry.slice(0, eq);
  const stem = entry.replace(/\/+$/, "").split("/").pop().split(".")[0].replace(/[^A-Za-z0-9_.-]/g, "_") || "task";
  return (/^[A-Za-z0-9]/.test(stem) ? stem : `t${stem}`).slice(0, 64);
}

// The metrics a task's score may come as: acc (multiple choice) or exact_match; a series reads whichever is there.
export function taskMetrics(name) {
  return [`task/${name}/acc`, `task/${name}/exact_match`];
}

// A series' value in a metrics point: one metric name, or the first present of several.
export function seriesValue(point, name) {
  return Array.isArray(name) ? name.map((n) => point[n]).find((v) => v !== undefined) : point[name];
}

function chartSet(parent, spec) {
  return chartsFor(spec).map(([options, names]) => [new LineChart(parent, options), names]);
}

// The downloads a checkpoint offers, [format, label]: full weights are one plain "Download"; a LoRA checkpoint
// offers its adapter merged into the base and the adapter alone (the server names each one's folder apart).
export function downloadChoices(kind) {
  return kind === "adapter" ? [["merged", "Download merged"], ["adapter", "Download adapter"]]
    : [["merged", "Download"]];
}

// Why a job stopped before max_steps, in words (null when it did not): its forgetting budget, and the best
// checkpoint within it among ``checkpoints`` (GET …/checkpoints), or that none is.
export function stopReason(job, checkpoints) {
  if (job.stop_reason !== "budget") return null;
  const patience = job.spec.budget_patience ?? 1;
  const best = checkpoints.find((c) => c.best);
  return `Stopped at step ${job.step} of ${job.max_steps}: the KL to the base stayed over the forgetting budget `
    + `(max_general_kl ${job.spec.max_general_kl})${patience > 1 ? ` for ${patience} evaluations in a row` : ""}. `
    + (best ? `The best checkpoint within the budget is ${best.name} (marked best below).`
      : "No checkpoint is within the budget: every one kept is over it (a higher kl_weight, or a lower learning "
        + "rate, keeps the KL lower).");
}

function checkpointsTable(jobId, checkpoints) {
  if (!checkpoints.length) return el("p", { class: "muted" }, "No checkpoint yet.");
  // the best checkpoint within the budget is marked (and downloadable as `best` too)
  return el("table", { class: "checkpoints" }, el("tbody", {}, checkpoints.map((c) => el("tr", c.best
    ? { "data-best": "", title: "best domain figure among evaluated checkpoints within the forgetting budget" } : {},
    el("td", {}, c.name, c.best ? [" ", el("mark", { class: "best" }, "best")] : ""),
    el("td", { class: "muted" }, `${byteSize(c.bytes)} · ${c.kind}`),
    ...downloadLinks(jobId, c).map((link) => el("td", {}, link))))));
}

// One link per download choice, then an empty cell's null, so every row has two cells of links.
function downloadLinks(jobId, c) {
  const links = downloadChoices(c.kind).map(([format, label], i) => el("a", { class: "button", download: "",
    "data-format": format, ...(i === 0 ? { "data-download": c.name } : {}),
    href: `/v1/jobs/${jobId}/checkpoints/${c.name}/download?format=${format}` }, label));
  return [links[0], links[1] || null];
}

// "1.2 GiB on disk, 3 checkpoints": the whole run directory (checkpoints, logs, samples), as the API measured it.
function diskUsed(job, checkpoints) {
  if (job.disk_bytes === null || job.disk_bytes === undefined) return null;
  const n = checkpoints.length;
  return el("p", { class: "muted", "data-disk": job.disk_bytes },
    `${byteSize(job.disk_bytes)} on disk, ${n} checkpoint${n === 1 ? "" : "s"}`);
}

// The events that say what a job is doing before its first step: preparing its data (token stores, self-sampled
// general text), the base's cached top-k, then the model and data ready (config), or a resume.
const PHASE_KINDS = ["token-store", "self-sample", "reference-cache", "config", "resumed"];

// The line under a job's title, {phase, text, fraction?}: the latest preparation event while there is no step yet
// (a token store being built with its share done), the training step once steps run, a pause asked or made; null
// once the job has ended (its badge and step say it). `ev` is the latest event of PHASE_KINDS, if any.
export function phaseLine(job, ev) {
  if (words.final_statuses.includes(job.status)) return null;
  if (job.status === "paused") {
    return { phase: "paused", text: `Paused at step ${job.step} of ${job.max_steps}: no worker holds it. Resume it `
      + "to continue from its checkpoint." };
  }
  if (job.pause_requested) {
    return { phase: "pausing", text: `Pausing: a checkpoint is saved after the step in progress (step ${job.step}), `
      + "then the worker is free." };
  }
  if (job.status === "queued" && job.queue_position) {  // its place in the scheduler's order, and why it waits
    return { phase: "queued", text: `Queued, #${job.queue_position} in line: ${job.wait_reason}.` };
  }
  if (job.status === "queued") return { phase: "queued", text: "Waiting for a worker to take the job." };
  if (job.step > 0) {
    return { phase: "training", text: `Training: step ${job.step} of ${job.max_steps} `
      + `(${Math.floor((100 * job.step) / job.max_steps)}%).` };
  }
  if (!ev) return { phase: "starting", text: "Starting: loading the model and reading the data." };
  const d = ev.data || {};
  if ((ev.kind === "token-store" || ev.kind === "self-sample") && !d.done && d.fraction !== undefined) {
    return { phase: "building", text: ev.message, fraction: d.fraction };
  }
  if (ev.kind === "config" || ev.kind === "resumed") {
    return { phase: "starting", text: "Starting: the model and data are ready, the first training step comes next." };
  }
  return { phase: "preparing", text: ev.message };
}

// Which of a job's buttons its header shows, by its status: an ended job can only be deleted; a paused one resumed,
// cancelled or deleted (no worker writes to it); a queued or running one paused or cancelled (one pausing resumed).
export function jobActions(job, buttons) {
  const { pause, resume, cancel, remove } = buttons;
  if (words.final_statuses.includes(job.status)) return [remove];
  if (job.status === "paused") return [resume, cancel, remove];
  return job.pause_requested ? [pause, resume, cancel] : [pause, cancel];  // resume: withdraw the pause
}

// Shows phaseLine's line in `box`, with a progress bar while a store is built.
function showPhase(box, line) {
  if (!line) {
    box.replaceChildren();
    return;
  }
  box.replaceChildren(el("p", { class: "muted", "data-phase": line.phase }, line.text), line.fraction === undefined
    ? "" : el("progress", { max: 1, value: line.fraction, title: `${(100 * line.fraction).toFixed(1)}%` }));
}

// A select over the steps that brought one kind of event (`data-steps` names it), the newest followed until the
// user picks another step; ``draw(step)`` shows the chosen one.
function stepPicker(name, draw) {
  const byStep = new Map();
  const pick = el("select", { "aria-label": "step", "data-steps": name });
  pick.addEventListener("change", () => draw(Number(pick.value)));
  const add = (step, value) => {
    const chosen = pick.value;
    const following = !chosen || Number(chosen) === Math.max(...byStep.keys());
    byStep.set(step, value);
    pick.replaceChildren(...[...byStep.keys()].sort((a, b) => a - b).map((s) => el("option", { value: s },
      s === 0 ? "0 (base)" : String(s))));
    pick.value = following ? String(Math.max(...byStep.keys())) : chosen;
    draw(Number(pick.value));
  };
  return { pick, byStep, add };
}

// A completion as text; one of only spaces and newlines (an early model's) says so instead of an empty box.
function completion(text) {
  return text.trim() ? el("pre", { class: "sample" }, text)
    : el("pre", { class: "sample muted" }, `(whitespace only: ${JSON.stringify(text).slice(0, 40)})`);
}

// Sample generations: each evaluation's completions of the job's prompts (`samples` events), one step at a time,
// each beside the base model's completion (step 0's event).
export function samplesSection() {
  const rows = el("tbody");
  const head = el("th", {}, "at step");
  const steps = stepPicker("samples", (step) => {
    const base = steps.byStep.get(0) || [];
    head.textContent = `at step ${step}`;
    rows.replaceChildren(...(steps.byStep.get(step) || []).map((s, i) => el("tr", { "data-sample": i },
      el("td", {}, el("pre", { class: "sample" }, s.prompt)),
      el("td", {}, completion(base[i] ? base[i].completion : "–")), el("td", {}, completion(s.completion)))));
  });
  const node = el("section", { class: "card samples", hidden: true }, el("h2", {}, "Sample generations"),
    el("p", { class: "muted" }, "Greedy completions at each evaluation, beside the base model's (step 0). Step ",
      steps.pick),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "prompt"), el("th", {}, "base"), head)), rows));
  const add = (ev) => { node.hidden = false; steps.add(ev.step, (ev.data && ev.data.samples) || []); };
  return { node, add };
}

// Token colour of the heat strip: clear at 0, full red at the strip's highest KL; the square root keeps the
// many small values visible next to one large one.
export function heat(kl, highest) {
  if (kl === null || kl === undefined || !(highest > 0)) return "transparent";
  return `rgba(220, 38, 38, ${Math.sqrt(Math.min(1, Math.max(0, kl / highest))).toFixed(3)})`;
}

// Forgetting drill-down (`drift` events): the held-out general passages whose KL to the base is highest at a
// step, and the first one's text as a heat strip, each token coloured by its KL (the value on hover).
export function driftSection() {
  const rows = el("tbody");
  const strip = el("p", { class: "strip", "data-strip": "" });
  const steps = stepPicker("drift", (step) => {
    const d = steps.byStep.get(step) || {};
    rows.replaceChildren(...(d.passages || []).map((p) => el("tr", { "data-passage": p.index },
      el("td", { class: "num" }, p.kl.toPrecision(3)), el("td", {}, p.text))));
    const s = d.strip || { pieces: [], kl: [] };
    const highest = Math.max(0, ...s.kl.filter((v) => v !== null));
    strip.replaceChildren(...s.pieces.map((piece, i) => el("span", { style: `background:${heat(s.kl[i], highest)}`,
      title: s.kl[i] === null ? "not predicted" : `KL ${s.kl[i].toPrecision(3)} nats` }, piece)));
  });
  const node = el("section", { class: "card drift", hidden: true }, el("h2", {}, "Forgetting drill-down"),
    el("p", { class: "muted" },
      "Held-out general passages that drifted most from the base (mean KL, nats/token) at step ", steps.pick),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "KL"), el("th", {}, "passage"))), rows),
    el("p", { class: "muted" }, "The first passage, each token coloured by its KL to the base:"), strip);
  const add = (ev) => { node.hidden = false; steps.add(ev.step, ev.data || {}); };
  return { node, add };
}

// Weight interpolation (WiSE-FT, `interpolation` events): the models (1-α)·base + α·checkpoint evaluated on a
// worker, drawn as domain gain against drift along α beside the run's own trade-off (one point per evaluation).
export function interpolationGroups(evals, interpolations) {
  const base = evals.find((p) => p.step === 0)?.["eval/domain_ppl"];
  const gain = (ppl) => Math.log(base / ppl);
  const training = { label: "training (by step)", color: "#2563eb", points: base ? evals
    .filter((p) => "eval/general_kl" in p).map((p) => ({ x: p["eval/general_kl"], y: gain(p["eval/domain_ppl"]),
      label: p.step })) : [] };
  const colors = ["#ea580c", "#16a34a", "#9333ea", "#ca8a04"];
  const alongAlpha = interpolations.filter((i) => i.rows && base).map((i, n) => ({
    label: `${i.checkpoint} interpolated (by α)`, color: colors[n % colors.length],
    points: i.rows.filter((r) => r.general_kl !== undefined)
      .map((r) => ({ x: r.general_kl, y: gain(r.domain_ppl), label: `α=${r.alpha}` })) }));
  return [training, ...alongAlpha];
}

// ``queued(task)`` is told of each request the Evaluate button made (the side task POST answered).
export function interpolationSection(jobId, queued = () => {}) {
  const checkpoint = el("input", { name: "checkpoint", value: "best", size: 8, style: "width:auto" });
  const alphas = el("input", { name: "alphas", value: "0,0.25,0.5,0.75,1", size: 20, style: "width:auto" });
  const note = el("span", { class: "muted" });
  const pending = el("span", { class: "muted", "data-pending": "interpolation" });
  const plot = el("div", { class: "charts" });
  const refresh = async () => {
    const [evals, interpolations] = await Promise.all([api(`/v1/jobs/${jobId}/metrics`),
      api(`/v1/jobs/${jobId}/interpolations`)]);
    const failed = interpolations.filter((i) => i.error);
    note.textContent = failed.length ? `${failed[failed.length - 1].checkpoint}: ${failed[failed.length - 1].error}` : "";
    plot.replaceChildren();
    if (interpolations.some((i) => i.rows)) {
      scatter(plot, { title: "Interpolation: domain gain against drift along α",
        xLabel: "general drift: KL to the base (nats / token)", yLabel: "domain gain: ln(base ppl / ppl)",
        groups: interpolationGroups(evals.filter((p) => "eval/domain_ppl" in p), interpolations) });
    }
  };
  const run = el("button", { "data-action": "interpolate", onclick: async () => {
    run.disabled = true;
    try {
      const body = { checkpoint: checkpoint.value.trim(), alphas: alphas.value.split(",").map(Number) };
      const asked = await api(`/v1/jobs/${jobId}/interpolations`, { method: "POST", json: body });
      note.textContent = asked.status === "done" ? `done already: ${asked.checkpoint} at α = ${asked.alphas.join(", ")}`
        : "";
      queued({ ...asked, kind: "interpolation" });
    } catch (err) { note.textContent = err.message; }
    run.disabled = false;
  } }, "Evaluate");
  const node = el("section", { class: "card interpolation" }, el("h2", {}, "Weight interpolation"),
    el("p", { class: "muted" }, "The models (1−α)·base + α·checkpoint (LoRA: the adapter scaled by α), evaluated on a "
      + "worker: a point left of the training curve at the same height forgets less for the same gain."),
    el("p", {}, "Checkpoint ", checkpoint, " α ", alphas, " ", run, " ", note, " ", pending), plot);
  return { node, refresh, pending, kind: "interpolation" };
}

// A job's own timings so far, from its events: where this run began training (its config or resumed event: the
// step, the time in ms), the seconds of each evaluation and save (their events carry them) and those spent since.
export function trackPace(pace, ev) {
  if (ev.kind === "config" || ev.kind === "resumed") {
    const { evals = [], saves = [] } = pace ?? {};
    return { step: ev.step, at: Date.parse(ev.created_at), spent: 0, evals, saves };
  }
  const seconds = ev.data?.seconds;
  if (!pace || typeof seconds !== "number" || (ev.kind !== "eval" && ev.kind !== "checkpoint")) return pace;
  const key = ev.kind === "eval" ? "evals" : "saves";
  return { ...pace, spent: pace.spent + seconds, [key]: [...pace[key], seconds] };
}

// How many of the steps after ``step`` up to ``last`` evaluate (or save) at ``every``: each multiple, and the last.
function comingAt(step, last, every) {
  return Math.floor(last / every) - Math.floor(step / every) + (last % every && step < last ? 1 : 0);
}

// Seconds a running job has left at its own pace (``pace``: trackPace's): the steps to go at its seconds per step
// since it began training (its evaluations and saves taken out), plus the evaluations and saves to come at their
// mean seconds so far, as GET /v1/estimate reckons; null before its first step.
export function etaSeconds(job, pace, now) {
  if (!pace || job.step <= pace.step) return null;
  const mean = (xs) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);
  const stepS = Math.max(0, (now - pace.at) / 1000 - pace.spent) / (job.step - pace.step);
  const { eval_every: evalEvery = 100, save_every: saveEvery = 200 } = job.spec;
  const last = job.max_steps;
  return (last - job.step) * stepS + comingAt(job.step, last, evalEvery) * mean(pace.evals)
    + comingAt(job.step, last, saveEvery) * mean(pace.saves);
}

// "about 3 min left" under a running job's name (empty for a job that is not running).
export function etaText(job, pace, now) {
  if (job.status !== "running") return "";
  const eta = etaSeconds(job, pace, now);
  return eta === null ? "ETA after its first steps" : `about ${duration(eta)} left`;
}

export async function jobPage(view, jobId) {
  let job = await api(`/v1/jobs/${jobId}`);
  const header = el("div", { class: "toolbar" });
  const dataBox = el("div", { class: "store-progress" });
  const charts = el("div", { class: "charts" });
  const log = el("ul", { class: "events" });
  const ckpts = el("div");
  const samples = samplesSection();
  const drift = driftSection();
  let sideTasks = null;  // watches the side tasks asked for below (made once the sections are)
  const interpolation = interpolationSection(jobId, (task) => sideTasks?.expect(task));
  const taskEvals = taskEvaluationSection(jobId, (task) => sideTasks?.expect(task));
  const trackers = trackersSection(jobId);
  view.replaceChildren(el("section", { class: "card" }, header, dataBox),
    el("section", { class: "card" }, el("h2", {}, "Curves"), charts), samples.node, drift.node,
    interpolation.node, taskEvals.node, el("div", { class: "two" },
      el("section", { class: "card" }, el("h2", {}, "Checkpoints"), ckpts),
      el("section", { class: "card" }, el("h2", {}, "Events"), log)),
    el("section", { class: "card" }, el("h2", {}, "Spec"), el("pre", {}, JSON.stringify(job.spec, null, 2))),
    trackers.node);
  const set = chartSet(charts, job.spec);
  let pace = null;  // the run's own timings so far (trackPace): its ETA's

  let checkpoints = [];  // the latest list: the header names the best one when the budget stopped the job
  const drawHeader = () => {
    const cancel = el("button", { class: "danger", onclick: async () => {
      if (!window.confirm(`Cancel the job ${job.name} (step ${job.step} of ${job.max_steps})?`)) return;
      cancel.disabled = true;
      try { job = await api(`/v1/jobs/${jobId}/cancel`, { method: "POST" }); drawHeader(); }
      catch (err) { alert(err.message); cancel.disabled = false; }
    } }, job.cancel_requested ? "Cancelling…" : "Cancel");
    // pause (a queued or running job: reversible, so no confirmation) and resume (a paused one, or one pausing)
    const post = (action) => async (e) => {
      const button = e.currentTarget;
      button.disabled = true;
      try { job = await api(`/v1/jobs/${jobId}/${action}`, { method: "POST" }); drawHeader(); drawPhase(); }
      catch (err) { alert(err.message); button.disabled = false; }
    };
    const pause = el("button", { "data-action": "pause", disabled: job.pause_requested || job.cancel_requested,
      onclick: post("pause") }, job.pause_requested ? "Pausing…" : "Pause");
    const resume = el("button", { "data-action": "resume", onclick: post("resume") }, "Resume");
    // an ended job only: the server refuses (409) to delete one a worker may still write to
    const remove = el("button", { class: "danger", "data-action": "delete", onclick: async () => {
      if (!window.confirm(`Delete the job ${job.name} with its checkpoints, metrics and logs? This cannot be undone.`)) {
        return;
      }
      remove.disabled = true;
      try { await api(`/v1/jobs/${jobId}`, { method: "DELETE" }); location.hash = "#/jobs"; }
      catch (err) { alert(err.message); remove.disabled = false; }
    } }, "Delete");
    const clone = el("a", { class: "button", href: `#/new?from=${encodeURIComponent(jobId)}`, "data-action": "clone" },
      "Clone");
    header.replaceChildren(el("h1", {}, job.name), jobBadge(job),
      el("span", { class: "muted" }, `step ${job.step} / ${job.max_steps} · ${job.spec.method} on ${job.spec.base_model}`),
      el("span", { class: "muted", "data-eta": "" }, etaText(job, pace, Date.now())),
      el("span", { class: "spacer" }), el("a", { class: "button", href: `#/log/${jobId}`, "data-action": "log" }, "Log"),
      clone, ...jobActions(job, { pause, resume, cancel, remove }));
    const lineage = lineageLine(job);
    if (lineage) header.append(lineage);
    if (job.error) header.append(el("p", { class: "error wide" }, job.error));
    const reason = stopReason(job, checkpoints);
    if (reason) header.append(el("p", { class: "wide", "data-stop-reason": job.stop_reason }, reason));
    header.append(jobUsageLine(job) ?? "");
  };
  let phaseEvent = null;  // the latest of PHASE_KINDS
  let trained = 0;  // the latest training step the metric stream brought: ahead of `job`, read every 3 s
  const drawPhase = () => showPhase(dataBox, phaseLine({ ...job, step: Math.max(job.step, trained) }, phaseEvent));
  const refresh = async () => {
    job = await api(`/v1/jobs/${jobId}`);
    checkpoints = await api(`/v1/jobs/${jobId}/checkpoints`);
    drawHeader();
    drawPhase();
    ckpts.replaceChildren(diskUsed(job, checkpoints) ?? "", checkpointsTable(jobId, checkpoints),
      checkpoints.length ? el("p", {}, el("a", { class: "button", href: `#/playground?job=${encodeURIComponent(jobId)}`,
        "data-action": "playground" }, "Try in playground")) : "");
  };
  await refresh();
  trackers.refresh();  // again when the job ends: a tracker writes its files as the run goes
  taskEvals.refresh().catch(() => {});  // its task datasets and earlier results; events refresh it after
  sideTasks = watchSideTasks(jobId, [interpolation, taskEvals]);  // results that land after the stream has closed

  const source = new EventSource(`/v1/jobs/${jobId}/events`);
  let lastCheckpoints = 0;
  source.addEventListener("metric", (e) => {
    const point = JSON.parse(e.data);
    if (point.step > trained && "train/lr" in point) { trained = point.step; drawPhase(); }
    for (const [chart, names] of set) {
      const values = names.map((n) => seriesValue(point, n));
      if (values.some((v) => v !== undefined)) chart.push(point.step, values);
    }
  });
  source.addEventListener("event", (e) => {
    const ev = JSON.parse(e.data);
    const stamp = el("time", { datetime: ev.created_at }, localTime(ev.created_at, { timeStyle: "medium" }));
    log.prepend(el("li", { "data-kind": ev.kind },
      el("span", { class: "muted" }, stamp, ` · step ${ev.step} · ${ev.kind} · `), ev.message));
    if (ev.kind === "checkpoint" || ev.kind === "interrupted" || ev.kind === "paused" || ev.kind === "resumed"
      || words.final_statuses.includes(ev.kind)) lastCheckpoints += 1;
    if (PHASE_KINDS.includes(ev.kind)) { phaseEvent = ev; drawPhase(); }
    pace = trackPace(pace, ev);
    if (ev.kind === "samples") samples.add(ev);
    if (ev.kind === "drift") drift.add(ev);
    if (ev.kind === "interpolation") interpolation.refresh();
    if (ev.kind === "task-evaluation") taskEvals.refresh();
  });
  source.addEventListener("end", () => { source.close(); refresh(); trackers.refresh(); });
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) refresh(); };
  // Redraw at most twice a second, however fast points arrive; refresh status and checkpoints meanwhile.
  let seen = 0;
  const timer = setInterval(() => {
    set.forEach(([chart]) => chart.flush());
    if (lastCheckpoints !== seen) { seen = lastCheckpoints; refresh(); }
  }, 500);
  const status = setInterval(() => { if (!words.final_statuses.includes(job.status)) refresh(); }, 3000);
  return () => { source.close(); clearInterval(timer); clearInterval(status); sideTasks.stop(); };
}

