// Workers: who trains here (GET /v1/workers), refreshed every 3 s: alive or not, device, capacity, the job each
// runs (named when it is yours) and its last heartbeat; and how many jobs wait (GET /healthz).
import { api } from "../api.js";
import { el, when } from "../dom.js";

function current(worker) {
  if (worker.job_id) return el("a", { href: `#/job/${worker.job_id}` }, worker.job_name ?? worker.job_id);
  return el("span", { class: "muted" }, worker.busy ? "another user's job" : "idle");
}

function row(worker) {
  return el("tr", { "data-worker": worker.name, "data-alive": worker.alive ? "yes" : "no" },
    el("td", {}, worker.name),
    el("td", {}, el("span", { class: `badge ${worker.alive ? "succeeded" : "failed"}` }, worker.alive ? "alive" : "gone")),
    el("td", { "data-col": "device" }, worker.device ?? el("span", { class: "muted" }, "not reported yet")),
    el("td", { class: "num", title: "processes (GPUs) it gives one job: the largest nproc it runs" }, worker.capacity),
    el("td", { "data-col": "job" }, current(worker)),
    el("td", { "data-col": "heartbeat" }, when(worker.last_seen)));
}

export async function workersPage(view) {
  const body = el("tbody");
  const summary = el("p", { class: "muted", "data-summary": "" });
  const error = el("p", { class: "error" });
  const empty = el("p", { class: "empty", hidden: true }, "No worker has been seen lately. Start one with ",
    el("code", {}, "mol worker"), " (", el("code", {}, "mol up"), " starts one for you).");
  const table = el("table", { class: "workers" }, el("thead", {}, el("tr", {}, ["Worker", "State", "Device",
    "Capacity", "Current job", "Last heartbeat"].map((h) => el("th", {}, h)))), body);
  view.replaceChildren(el("section", { class: "card" }, el("h1", {}, "Workers"), summary, error, table, empty));
  const refresh = async () => {
    try {
      const [{ data, alive_within_s: within }, health] = await Promise.all([api("/v1/workers"), api("/healthz")]);
      body.replaceChildren(...data.map(row));
      const alive = data.filter((w) => w.alive).length;
      summary.textContent = `${alive} alive (a heartbeat in the last ${within} s), ${data.length - alive} gone; `
        + `${health.jobs_waiting ?? 0} job(s) waiting for a worker.`;
      table.hidden = data.length === 0;
      empty.hidden = data.length > 0;
      error.textContent = "";
    } catch (err) {
      error.textContent = `Could not load the workers: ${err.message}`;
    }
  };
  await refresh();
  const timer = setInterval(refresh, 3000);
  return () => clearInterval(timer);
}
