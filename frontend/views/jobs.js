// Jobs list: live (refreshed every 2 s), with a selection to compare.
import { api, listPages, words } from "../api.js";
import { duration, el, fmt, jobBadge, when } from "../dom.js";

function eta(job) {
  if (job.status !== "running" || !job.started_at || job.step < 1) return "";
  const elapsed = (Date.now() - new Date(job.started_at).getTime()) / 1000;
  return `ETA ${duration((elapsed / job.step) * (job.max_steps - job.step))}`;
}

// A queued job's place in the scheduler's order (GET /v1/jobs: queue_position), with why it waits as a second line.
function queuePlace(job) {
  if (job.status !== "queued" || !job.queue_position) return "";
  return el("span", { class: "muted queue-place", "data-queue-position": job.queue_position, title: job.wait_reason },
    el("br"), `#${job.queue_position} in line: ${job.wait_reason}`);
}

function row(job, selected, onToggle) {
  const m = job.last_metrics || {};
  return el("tr", { "data-job": job.id },
    el("td", {}, el("input", { type: "checkbox", checked: selected.has(job.id), "aria-label": `select ${job.name}`,
      onchange: (e) => onToggle(job.id, e.target.checked) })),
    el("td", {}, el("a", { href: `#/job/${job.id}` }, job.name)),
    el("td", {}, job.base_model),
    el("td", {}, job.method),
    el("td", {}, jobBadge(job)),
    el("td", { class: "progress-cell" },
      el("progress", { max: job.max_steps, value: job.step }),
      el("span", { class: "muted" }, ` ${job.step} / ${job.max_steps} ${eta(job)}`), queuePlace(job)),
    // the latest evaluation, which every method records alike (training losses differ between methods)
    el("td", { class: "num", "data-metric": "eval/domain_ppl" }, fmt(m["eval/domain_ppl"])),
    el("td", { class: "num", "data-metric": "eval/general_kl" }, fmt(m["eval/general_kl"])),
    el("td", { class: "muted" }, when(job.created_at)));
}

const PAGE = 50;
// how the filter names each method; the methods themselves are the JobSpec schema's (GET /v1/jobspec)
const METHOD_NAMES = { mol: "MoL", cpt: "CPT", domain_only: "Domain only" };

// The filter controls (status, method, name contains) and the list's query string they make; onChange on edits.
function filterBar(onChange) {
  const choice = (name, label, options) => el("select", { name, "aria-label": label, onchange: onChange },
    el("option", { value: "" }, `Any ${label.toLowerCase()}`), options.map(([v, t]) => el("option", { value: v }, t)));
  const status = choice("status", "Status", words.job_statuses.map((s) => [s, s]));
  const method = choice("method", "Method", []);
  api("/v1/jobspec").then((schema) => method.append(...(schema.properties.method?.enum ?? [])
    .map((v) => el("option", { value: v }, METHOD_NAMES[v] ?? v)))).catch(() => {});  // no schema: any method
  let typing;
  const name = el("input", { type: "search", name: "q", placeholder: "Name contains…", "aria-label": "Name contains",
    oninput: () => { clearTimeout(typing); typing = setTimeout(onChange, 250); } });
  const node = el("div", { class: "filters", role: "search" }, status, method, name);
  node.query = () => {
    const params = new URLSearchParams();
    for (const input of [status, method, name]) if (input.value.trim()) params.set(input.name, input.value.trim());
    return params.toString();
  };
  return node;
}

// The newest sweeps (POST /v1/sweeps), each a link to its Pareto view in Compare.
async function showSweeps(line) {
  const { data, has_more: more } = await api("/v1/sweeps?limit=5").catch(() => ({ data: [] }));
  line.hidden = data.length === 0;
  line.replaceChildren("Sweeps: ", ...data.flatMap((s, i) => [i ? ", " : "",
    el("a", { href: `#/compare?sweep=${s.id}`, "data-sweep": s.id }, `${s.name} (${s.jobs} jobs)`)]),
  more ? el("span", { class: "muted" }, ", … (older ones in Compare)") : "");
}

export async function jobsPage(view) {
  const selected = new Set();
  const compare = el("a", { class: "button", href: "#/compare" }, "Compare selected");
  const body = el("tbody");
  const table = el("table", { class: "jobs" },
    el("thead", {}, el("tr", {}, ["", "Name", "Base model", "Method", "Status", "Progress",
      ["Domain ppl", "perplexity on held-out domain text at the latest evaluation"],
      ["KL to base", "KL to the base model on held-out general text at the latest evaluation (nats / token)"],
      "Created"].map((h) => (Array.isArray(h) ? el("th", { title: h[1] }, h[0]) : el("th", {}, h))))), body);
  const empty = el("div", { class: "empty" }, el("p", {}, "No jobs yet."),
    el("p", {}, "Start one from ", el("a", { href: "#/new" }, "New job"),
      ": the demo model and corpora are ready to pick."));
  const noMatch = el("p", { class: "empty muted", hidden: true }, "No jobs match these filters.");
  const error = el("p", { class: "error" });
  let shown = PAGE;  // the newest jobs listed; "Show older jobs" adds a page, with the same filters
  const filters = filterBar(() => { shown = PAGE; refresh(); });
  const older = el("button", { class: "more", hidden: true, onclick: () => { shown += PAGE; refresh(); } },
    "Show older jobs");
  const sweeps = el("p", { class: "sweeps", hidden: true });
  view.replaceChildren(el("section", { class: "card" },
    el("div", { class: "toolbar" }, el("h1", {}, "Jobs"), el("span", { class: "spacer" }), compare,
      el("a", { class: "button primary", href: "#/new" }, "New job")), error, sweeps, filters, table, empty, noMatch,
    older));
  showSweeps(sweeps);

  const onToggle = (id, on) => {
    if (on) selected.add(id); else selected.delete(id);
    compare.href = `#/compare?ids=${[...selected].join(",")}`;
    compare.textContent = `Compare selected (${selected.size})`;
  };
  onToggle(null, false);

  async function refresh() {
    try {
      const query = filters.query();
      const { items: jobs, more } = await listPages(`/v1/jobs${query ? `?${query}` : ""}`, shown);
      if (query !== filters.query()) return;  // the filters changed meanwhile: a newer refresh draws
      body.replaceChildren(...jobs.map((job) => row(job, selected, onToggle)));
      older.hidden = !more;
      empty.hidden = jobs.length > 0 || query !== "";
      noMatch.hidden = jobs.length > 0 || query === "";
      filters.hidden = jobs.length === 0 && query === "";  // nothing to filter yet
      table.hidden = jobs.length === 0;
      error.textContent = "";
    } catch (err) {
      error.textContent = `Could not load the jobs: ${err.message}`;
    }
  }
  await refresh();
  const timer = setInterval(refresh, 2000);
  return () => clearInterval(timer);
}
