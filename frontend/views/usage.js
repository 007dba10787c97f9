// Usage: the owner's tokens and accelerator-hours by UTC day (GET /v1/usage), their storage, and today's use against
// their limits (past one, a submit or upload is refused with 429). And a job's usage line, for the job page.
import { api } from "../api.js";
import { byteSize, el } from "../dom.js";

const GB = 1e9;  // the storage quota's unit (api/services/quotas.py)

const count = (n) => Math.round(n).toLocaleString("en-US");
const hours = (h) => (h < 0.01 && h > 0 ? h.toExponential(1) : h.toFixed(2));

// "12,345 tokens · 0.02 accelerator-hours · 1.2 MiB stored": what one job used (GET /v1/jobs/{id}'s `usage`).
export function jobUsageLine(job) {
  const usage = job.usage;
  if (!usage) return null;
  return el("p", { class: "muted wide", "data-usage": "",
    title: "tokens of the steps it completed (each once); processes × seconds its runners held the job; its run "
      + "directory as its runner last measured it" },
  `Used: ${count(usage.tokens)} tokens · ${hours(usage.accelerator_seconds / 3600)} accelerator-hours · `
    + `${byteSize(usage.storage_bytes)} stored`);
}

// One limit: "3.20 of 24 accelerator-hours today" with a meter that turns red once it is reached.
function gauge(label, used, allowed, text, key) {
  return el("div", { class: "gauge", "data-limit": key, "data-over": used >= allowed ? "yes" : "no" },
    el("label", {}, label),
    el("meter", { min: 0, max: allowed, value: Math.min(used, allowed), high: allowed * 0.8, optimum: 0 }),
    el("span", { class: used >= allowed ? "error" : "muted" }, text));
}

function limitsCard(usage) {
  const { limits, storage } = usage;
  return el("section", { class: "card", "data-today": limits.today },
    el("h2", {}, `Today (${limits.today}, UTC) against your limits`),
    gauge("Accelerator-hours", limits.accelerator_hours_today, limits.gpu_hours_per_day,
      `${hours(limits.accelerator_hours_today)} of ${limits.gpu_hours_per_day} accelerator-hours per day`
        + (limits.accelerator_hours_today >= limits.gpu_hours_per_day ? ": new jobs wait for 00:00 UTC" : ""),
      "gpu_hours_per_day"),
    gauge("Storage", storage.total_bytes, limits.storage_gb * GB,
      `${byteSize(storage.total_bytes)} of ${limits.storage_gb} GB (datasets ${byteSize(storage.datasets_bytes)}, `
        + `runs ${byteSize(storage.runs_bytes)})`, "storage_gb"),
    el("p", { class: "muted" }, "Accelerator-hours are processes × hours a job held a worker (a CPU job counts one "
      + "process). Past a limit a new job (or, for storage, an upload) is refused; running jobs go on."));
}

function daysTable(usage) {
  if (!usage.days.length) return el("p", { class: "empty" }, `No usage from ${usage.from_day} to ${usage.to_day}.`);
  return el("table", { class: "usage" },
    el("thead", {}, el("tr", {}, ["Day (UTC)", "Tokens", "Accelerator-hours", "Jobs"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...usage.days.slice().reverse().map((d) => el("tr", { "data-day": d.day },
      el("td", {}, d.day), el("td", { class: "num" }, count(d.tokens)),
      el("td", { class: "num" }, hours(d.accelerator_hours)), el("td", { class: "num" }, d.jobs)))),
    el("tfoot", {}, el("tr", {}, el("th", {}, "Total"), el("td", { class: "num" }, count(usage.tokens)),
      el("td", { class: "num" }, hours(usage.accelerator_hours)), el("td", {}, ""))));
}

export async function usagePage(view) {
  const from = el("input", { type: "date", name: "from" });
  const to = el("input", { type: "date", name: "to" });
  const error = el("p", { class: "error" });
  const today = el("div");
  const days = el("div");
  const load = async () => {
    const query = new URLSearchParams();
    if (from.value) query.set("from", from.value);
    if (to.value) query.set("to", to.value);
    try {
      const usage = await api(`/v1/usage${query.toString() ? `?${query}` : ""}`);
      from.value = usage.from_day;
      to.value = usage.to_day;
      today.replaceChildren(limitsCard(usage));
      days.replaceChildren(daysTable(usage));
      error.textContent = "";
    } catch (err) {
      error.textContent = `Could not load your usage: ${err.message}`;
    }
  };
  from.addEventListener("change", load);
  to.addEventListener("change", load);
  view.replaceChildren(today, el("section", { class: "card" }, el("h1", {}, "Usage by day"),
    el("div", { class: "toolbar" }, el("label", { class: "inline" }, "From ", from),
      el("label", { class: "inline" }, "to ", to)), error, days));
  await load();
  const timer = setInterval(load, 30000);
  return () => clearInterval(timer);
}
