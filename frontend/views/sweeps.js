// Sweeps: the owner's sweeps (GET /v1/sweeps), each linked to its Pareto view (Compare's sweep view), and a new
// sweep made from a base spec and a grid editor: one row per field with its values, the number of jobs (the
// product of the rows' lengths) shown against the server's cap (GET /v1/sweeps/bounds: MOL_MAX_SWEEP_JOBS).
import { api, listPages } from "../api.js";
import { el, when } from "../dom.js";

const NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

// "4:1, 1:1" -> ["4:1", "1:1"]; "0.5, 1e-3" -> [0.5, 0.001]: numbers as numbers, the rest as trimmed text.
export function parseValues(text) {
  return text.split(",").map((v) => v.trim()).filter(Boolean).map((v) => (NUMBER.test(v) ? Number(v) : v));
}

// rows [{key, values}] -> {grid, count, sizes}: the grid POST /v1/sweeps takes (rows without values left out) and
// how many jobs it makes.
export function gridOf(rows) {
  const grid = {};
  for (const { key, values } of rows) if (key && values.length) grid[key] = values;
  const sizes = Object.values(grid).map((v) => v.length);
  return { grid, sizes, count: sizes.length ? sizes.reduce((a, b) => a * b, 1) : 0 };
}

// "2 × 3 = 6 jobs (at most 32 here)", and whether the grid can be submitted.
export function countLine({ sizes, count }, maxJobs) {
  if (!count) return { text: "Give at least one field some values.", ok: false };
  const product = sizes.length > 1 ? `${sizes.join(" × ")} = ` : "";
  const over = count > maxJobs;
  return { text: `${product}${count} job${count === 1 ? "" : "s"} (at most ${maxJobs} on this server`
    + `${over ? ": remove values" : ""})`, ok: !over };
}

function sweepRow(s) {
  const grid = Object.entries(s.grid).map(([k, v]) => `${k} ∈ {${v.join(", ")}}`).join(" × ");
  const statuses = Object.entries(s.statuses).map(([k, n]) => `${n} ${k}`).join(", ");
  return el("tr", { "data-sweep-row": s.id },
    el("td", {}, el("a", { href: `#/compare?sweep=${s.id}`, "data-sweep": s.id }, s.name)),
    el("td", {}, grid), el("td", { class: "num" }, s.jobs), el("td", { class: "muted" }, statuses),
    el("td", { class: "muted" }, when(s.created_at)),
    el("td", {}, el("a", { class: "button", href: `#/compare?sweep=${s.id}` }, "Pareto view")));
}

// A base spec to start from when the owner has no job to copy: the demo model on the demo corpora, if registered.
function starterSpec(datasets) {
  const demo = (purpose) => datasets.find((d) => d.filename === `demo-${purpose}.jsonl`)?.id;
  return { name: "sweep", method: "mol", base_model: "demo", domain_data: demo("domain") ? [demo("domain")] : [],
    general_data: demo("general") ? [demo("general")] : [], max_steps: 200, eval_every: 50 };
}

function gridEditor(keys, maxValues, onChange) {
  const rows = el("div", { class: "grid-rows" });
  const add = el("button", { type: "button", "data-action": "add-field" }, "Add a field");
  const used = () => [...rows.querySelectorAll("select")].map((s) => s.value);
  const sync = () => {
    add.disabled = used().length >= keys.length;
    onChange();
  };
  const addRow = (key = keys.find((k) => !used().includes(k)), values = "") => {
    const select = el("select", { "aria-label": "field", onchange: sync }, keys.map((k) => el("option",
      { value: k, selected: k === key }, k)));
    const input = el("input", { type: "text", "aria-label": "values", value: values, size: 40,
      placeholder: "values, comma separated: 4:1, 1:1", oninput: sync });
    const row = el("div", { class: "grid-row", "data-grid-row": "" }, select, " ∈ ", input, " ",
      el("button", { type: "button", onclick: () => { row.remove(); sync(); } }, "Remove"));
    rows.append(row);
    sync();
  };
  const read = () => [...rows.querySelectorAll("[data-grid-row]")].map((r) => ({ key: r.querySelector("select").value,
    values: parseValues(r.querySelector("input").value).slice(0, maxValues) }));
  add.addEventListener("click", () => addRow());
  return { node: el("div", {}, rows, add), addRow, read };
}

async function newSweepCard(bounds) {
  const [{ items: jobs }, datasets] = await Promise.all([listPages("/v1/jobs", 200), api("/v1/datasets")]);
  const name = el("input", { type: "text", id: "sweep-name", placeholder: "default: the base spec's name", size: 30 });
  const base = el("textarea", { id: "sweep-base", rows: 12, cols: 80, spellcheck: false, class: "spec" },
    JSON.stringify(starterSpec(datasets), null, 2));
  const from = el("select", { id: "sweep-from", "aria-label": "base spec from a job", onchange: () => {
    const job = jobs.find((j) => j.id === from.value);
    if (job) api(`/v1/jobs/${job.id}`).then((full) => { base.value = JSON.stringify(full.spec, null, 2); });
  } }, el("option", { value: "" }, jobs.length ? "copy a job's spec…" : "no job to copy yet"),
  jobs.map((j) => el("option", { value: j.id }, `${j.name} (${j.method})`)));
  const count = el("p", { "data-job-count": "" });
  const error = el("pre", { class: "error", role: "alert", hidden: true });
  const create = el("button", { class: "primary", type: "submit" }, "Create sweep");
  const editor = gridEditor(bounds.keys, bounds.max_values, () => {
    const line = countLine(gridOf(editor.read()), bounds.max_jobs);
    count.textContent = line.text;
    count.className = line.ok ? "muted" : "error";
    create.disabled = !line.ok;
  });
  editor.addRow("kl_weight", "0.5, 1, 2");
  const submit = async (e) => {
    e.preventDefault();
    error.hidden = true;
    let spec;
    try { spec = JSON.parse(base.value); } catch (err) {
      error.textContent = `base: not valid JSON (${err.message})`;
      error.hidden = false;
      return;
    }
    create.disabled = true;
    try {
      const made = await api("/v1/sweeps", { method: "POST", json: { base: spec, grid: gridOf(editor.read()).grid,
        ...(name.value.trim() ? { name: name.value.trim() } : {}) } });
      location.hash = `#/compare?sweep=${made.id}`;
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
      create.disabled = false;
    }
  };
  return el("section", { class: "card" }, el("h2", {}, "New sweep"),
    el("p", { class: "muted" }, "One job per point of the grid, each the base spec with that point's values, on the "
      + `same data and seed. A grid may vary ${bounds.keys.join(", ")}.`),
    el("form", { onsubmit: submit, "data-new-sweep": "" },
      el("p", {}, el("label", { for: "sweep-name" }, "Name "), name),
      el("p", {}, el("label", { for: "sweep-base" }, "Base spec (JSON, as POST /v1/jobs takes it) "), from),
      base, el("h3", {}, "Grid"), editor.node, count, error, create));
}

export async function sweepsPage(view) {
  const [{ data, has_more: more }, bounds] = await Promise.all([api("/v1/sweeps?limit=200"), api("/v1/sweeps/bounds")]);
  const list = data.length
    ? el("table", { class: "sweeps" }, el("thead", {}, el("tr", {}, ["Sweep", "Grid", "Jobs", "States", "Created", ""]
      .map((h) => el("th", {}, h)))), el("tbody", {}, data.map(sweepRow)))
    : el("p", { class: "empty" }, "No sweeps yet: make one below.");
  view.replaceChildren(el("section", { class: "card" }, el("h1", {}, "Sweeps"), list,
    more ? el("p", { class: "muted" }, "The 200 newest are listed.") : null), await newSweepCard(bounds));
}
