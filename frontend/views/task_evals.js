// Task evaluations (`task-evaluation` events, GET /v1/jobs/{id}/evaluations): a task file scored with
// lm-evaluation-harness on the base and the job's checkpoints. The job page's card, and the score Compare shows.
import { api } from "../api.js";
import { el, fmt, localTime } from "../dom.js";

// The figures a kind of task reports, the first being its score.
export const TASK_METRICS = { multiple_choice: ["acc", "acc_norm"], exact_match: ["exact_match"] };

// The latest evaluation with rows, as {task, metric, score, base, checkpoint}: the score of its last checkpoint
// (the highest step) and the base's beside it (null when either was not scored); null when there is none.
export function latestTaskScore(evaluations) {
  const latest = evaluations.filter((e) => e.rows && e.kind).at(-1);
  if (!latest) return null;
  const metric = TASK_METRICS[latest.kind][0];
  const scored = latest.rows.filter((r) => Number.isFinite(r[metric]));
  const step = (r) => Number(r.checkpoint.replace("step-", ""));
  const last = scored.filter((r) => r.checkpoint !== "base").sort((a, b) => step(a) - step(b)).at(-1);
  const base = scored.find((r) => r.checkpoint === "base");
  return { task: latest.filename ?? latest.task, metric, score: last?.[metric] ?? null,
    checkpoint: last?.checkpoint ?? null, base: base?.[metric] ?? null };
}

function evaluationTable(e) {
  const metrics = TASK_METRICS[e.kind] ?? [];
  return el("table", { class: "summary", "data-task-evaluation": e.task },
    el("caption", { class: "muted" }, `${e.filename ?? e.task} · ${e.kind ?? "?"} · `,
      el("time", { datetime: e.created_at }, localTime(e.created_at, { timeStyle: "short" }))),
    el("thead", {}, el("tr", {}, el("th", {}, "model"), metrics.map((m) => el("th", {}, m)), el("th", {}, "n"))),
    el("tbody", {}, e.rows.map((r) => el("tr", { "data-checkpoint": r.checkpoint },
      el("td", {}, r.checkpoint === "base" ? "base" : r.checkpoint),
      r.error ? el("td", { class: "error", colspan: metrics.length + 1 }, r.error)
        : [...metrics.map((m) => el("td", { class: "num" }, fmt(r[m]))), el("td", { class: "num" }, r.n)]))));
}

// ``queued(task)`` is told of each request the Run button made (the side task POST answered).
export function taskEvaluationSection(jobId, queued = () => {}) {
  const task = el("select", { name: "task", "aria-label": "task dataset", style: "width:auto" });
  const checkpoints = el("input", { name: "checkpoints", placeholder: "all, and base", size: 24, style: "width:auto",
    title: "base, best, step-N separated by commas" });
  const note = el("span", { class: "muted" });
  const pending = el("span", { class: "muted", "data-pending": "task-evaluation" });
  const tables = el("div");
  const refresh = async () => {
    const [datasets, evaluations] = await Promise.all([api("/v1/datasets"), api(`/v1/jobs/${jobId}/evaluations`)]);
    const chosen = task.value;
    task.replaceChildren(...datasets.filter((d) => d.purpose === "task").map((d) => el("option", { value: d.id,
      selected: d.id === chosen }, `${d.filename} (${d.documents} questions)`)));
    const failed = evaluations.filter((e) => e.error).at(-1);
    note.textContent = failed ? `${failed.filename ?? failed.task}: ${failed.error}` : "";
    tables.replaceChildren(...evaluations.filter((e) => e.rows).slice(-3).reverse().map(evaluationTable));
  };
  const run = el("button", { "data-action": "evaluate-task", onclick: async () => {
    run.disabled = true;
    try {
      const names = checkpoints.value.split(",").map((s) => s.trim()).filter(Boolean);
      const body = { task: task.value, ...(names.length ? { checkpoints: names } : {}) };
      const asked = await api(`/v1/jobs/${jobId}/evaluations`, { method: "POST", json: body });
      note.textContent = asked.status === "done" ? `done already: ${asked.checkpoints.join(", ")}` : "";
      queued({ ...asked, kind: "task-evaluation" });
    } catch (err) { note.textContent = err.message; }
    run.disabled = false;
  } }, "Run");
  const node = el("section", { class: "card task-evaluations" }, el("h2", {}, "Task evaluations"),
    el("p", { class: "muted" }, "A task file (upload one with purpose task: multiple-choice or exact-match JSONL) "
      + "scored with lm-evaluation-harness on a worker, offline, on the base and the checkpoints."),
    el("p", {}, "Task ", task, " checkpoints ", checkpoints, " ", run, " ", note, " ", pending), tables);
  return { node, refresh, pending, kind: "task-evaluation" };
}

// Compare's row of task scores: per job its latest task evaluation's score with the base's; nothing when no job has one.
export function taskScoreTable(jobs, scores) {
  if (!scores.some(Boolean)) return null;
  const cell = (s) => (!s ? el("td", { class: "num muted" }, "–") : el("td", { class: "num", "data-task-score": s.task },
    `${s.metric} ${fmt(s.score)}`, el("span", { class: "muted" }, ` at ${s.checkpoint ?? "–"} (base ${fmt(s.base)}) · `
      + s.task)));
  return el("table", { class: "summary", "data-task-scores": "" },
    el("thead", {}, el("tr", {}, el("th", {}, "task"), jobs.map((j) => el("th", {}, j.name)))),
    el("tbody", {}, el("tr", {}, el("th", { scope: "row" }, "latest task evaluation"), scores.map(cell))));
}
