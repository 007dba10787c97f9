// New job: pick or upload datasets, choose a base model and method, set the hyperparameters people reach for, and
// every other spec field in the Advanced section; the YAML view shows the whole spec as a file, editable.
// Defaults, ranges and choices come from the server's JobSpec schema (GET /v1/jobspec); the server is the one
// judge of a spec, and each line of its 422 lands next to the field it names.
import { api, upload } from "../api.js";
import { byteSize, el } from "../dom.js";
import {
  DEMO_SPEC, FieldProblem, SELF, applySpec, controlKind, estimator, extraControl, fieldNames, readControl, specPaths,
  touch, writeControl, yamlView,
} from "./spec_fields.js";
import { noModelNote } from "./no_model.js";

const DEMO_MODEL = "demo";

const PURPOSES = [
  { purpose: "domain", field: "domain_data", label: "Domain corpus", required: true,
    help: "The text to adapt to: JSONL with a \"text\" field, .txt (documents separated by blank lines) or Parquet." },
  { purpose: "general", field: "general_data", label: "General corpus",
    help: "General text the model must not forget (KL to the base on it). MoL and CPT need one: upload it, or let "
      + "the base model write it (general_source: self)." },
  { purpose: "eval", field: "eval_data", label: "QA evaluation set",
    help: "Optional: JSONL with \"question\" and \"answer\", scored by exact match." },
];

// The inputs, by spec field (a dotted path for nested ones), in the groups the form shows. `when` names the
// choice a group depends on; `describe` shows each field's schema description under it. Fields the server's
// schema does not know are left out.
const GROUPS = [
  { legend: "Training", fields: [["name", "Name"], ["max_steps", "Steps"], ["lr", "Learning rate"],
    ["warmup_steps", "Warm-up steps"], ["batch_size", "Rows per micro-batch"], ["grad_accum", "Gradient accumulation"],
    ["seq_len", "Sequence length"]] },
  { legend: "Mixture and KL", describe: true, fields: [["ratio", "Ratio domain:general"], ["kl_weight", "KL weight λ"],
    ["target_general_kl", "Target KL (kl_weight auto)"], ["kl_direction", "KL direction"]] },
  { legend: "LoRA", when: ["finetune", "lora"], fields: [["lora.rank", "LoRA rank"], ["lora.alpha", "LoRA alpha"]] },
  { legend: "Forgetting budget", describe: true, fields: [["max_general_kl", "Max KL to the base"],
    ["on_budget", "When crossed"], ["best_metric", "Best checkpoint by"]] },
  { legend: "Evaluation, checkpoints, processes", fields: [["eval_every", "Evaluate every (steps)"],
    ["save_every", "Checkpoint every (steps)"], ["nproc", "Processes (torchrun)"]] },
];
// The words of the Model and method section's radios, by choice; the choices themselves are the schema's enums (a
// choice without words here shows as its name).
const CHOICE_TEXT = {
  method: { mol: "MoL: CE on domain, KL to the base on general", cpt: "CPT baseline: CE on everything",
    domain_only: "Domain only" },
  reference: { exact: "Exact reference: the base model runs on the general rows every step",
    cached: "Cached reference: the base's top-k, computed once per corpus and model; faster" },
  finetune: { full: "Full fine-tuning", lora: "LoRA" },
};
// spec fields whose errors belong to another input's slot
const ALIASES = { general_source: "general_data", lora: "lora.rank" };
// the spec fields the form shows outside the Advanced section
const SHOWN = new Set([...GROUPS.flatMap((g) => g.fields.map(([name]) => name)), ...PURPOSES.map((p) => p.field),
  "general_source", "base_model", "method", "reference", "finetune"]);

// The schema of one (possibly nested, "lora.rank") field, following $ref into $defs; null when unknown.
export function fieldSchema(schema, path) {
  let node = schema;
  for (const key of path.split(".")) {
    const props = resolve(schema, node)?.properties;
    if (!props || !(key in props)) return null;
    node = props[key];
  }
  return resolve(schema, node);
}

function resolve(schema, node) {
  const ref = node?.$ref ?? node?.allOf?.[0]?.$ref;
  return ref ? { ...schema.$defs[ref.split("/").pop()], ...node } : node;
}

// {min, max, int, choices, fallback, nullable, hint, help, words} of a field: pydantic writes ge/le as
// minimum/maximum, gt/lt as exclusive ones, an optional number as anyOf [number, null], and a number that may also
// be a word (kl_weight: a number or "auto") as anyOf [number, {const: word}]: a text input that sends numbers as
// numbers (``numeric``).
export function fieldRule(prop) {
  const typed = prop.anyOf?.find((t) => t.type && t.type !== "null") ?? prop;
  const min = typed.minimum ?? typed.exclusiveMinimum;
  const max = typed.maximum ?? typed.exclusiveMaximum;
  const words = (prop.anyOf ?? []).filter((t) => t.const !== undefined).map((t) => t.const);
  const numeric = typed.type === "integer" || typed.type === "number";
  const hint = [rangeHint(typed), ...words].filter(Boolean).join(", or ");
  return { min, max, int: typed.type === "integer", number: numeric && !words.length, numeric, words,
    choices: typed.enum ?? null, fallback: prop.default ?? typed.default,
    nullable: Boolean(prop.anyOf?.some((t) => t.type === "null")), hint, help: prop.description };
}

// "from 1 to 1,024", "above 0, at most 1", "at least 0": the range a field accepts, in words.
function rangeHint(t) {
  const n = (v) => v.toLocaleString("en-US");
  if (t.minimum !== undefined && t.maximum !== undefined) return `from ${n(t.minimum)} to ${n(t.maximum)}`;
  const lo = t.minimum !== undefined ? `at least ${n(t.minimum)}`
    : t.exclusiveMinimum !== undefined ? `above ${n(t.exclusiveMinimum)}` : null;
  const hi = t.maximum !== undefined ? `at most ${n(t.maximum)}`
    : t.exclusiveMaximum !== undefined ? `below ${n(t.exclusiveMaximum)}` : null;
  return [lo, hi].filter(Boolean).join(", ");
}

function fieldError(name) {
  return el("p", { class: "error field-error", "data-error-for": name });
}

// An optional field left empty is sent as null ("none"), so a clone can drop its source's value.
function inputFor(name, label, rule, describe = false) {
  const id = `f-${name.replace(".", "_")}`;
  const input = rule.choices
    ? el("select", { id, name }, rule.choices.map((c) => el("option", { value: c, selected: c === rule.fallback }, c)))
    : el("input", { id, name, type: rule.number ? "number" : "text", step: rule.int ? 1 : "any", min: rule.min,
      max: rule.max, value: rule.fallback ?? "", placeholder: rule.nullable ? "none" : null,
      "data-nullable": rule.nullable, "data-numeric": rule.numeric && rule.words.length > 0 });
  return el("div", { class: "field" }, el("label", { for: id }, label), input,
    rule.hint ? el("small", { class: "range muted" }, rule.hint) : null,
    describe && rule.help ? el("small", { class: "help muted", "data-help-for": name }, rule.help) : null,
    fieldError(name));
}

// Every spec field the form does not show above, generated from the schema (a new spec field appears here with no
// change to the form), each labelled with its name, its range and its description; a nested object's fields show
// when its group does (lora.* with LoRA).
function advancedSection(schema) {
  const fields = specPaths(schema).filter((path) => !SHOWN.has(path)).map((path) => {
    const prop = fieldSchema(schema, path);
    const rule = fieldRule(prop);
    const kind = controlKind(prop);
    const when = GROUPS.find((g) => g.when && g.fields.some(([n]) => n.split(".")[0] === path.split(".")[0]))?.when;
    const node = ["choice", "number", "text"].includes(kind) ? inputFor(path, path, rule, true)
      : el("div", { class: "field" }, extraControl(path, kind, prop, rule),
        rule.help ? el("small", { class: "help muted", "data-help-for": path }, rule.help) : null, fieldError(path));
    if (when) node.dataset.when = when.join("=");
    node.classList.add(`kind-${kind}`);
    return node;
  });
  return el("details", { class: "advanced", "data-advanced": "" },
    el("summary", {}, `Advanced: every other spec field (${fields.length})`),
    el("fieldset", { "data-group": "Advanced" }, el("div", { class: "grid" }, fields)));
}

// "3.2 MiB · 1,204 documents · sha256 ab12cd34… · 812,330 tokens (demo)": what is known of a dataset.
function datasetStats(d) {
  if (!d) return "";
  const tokens = (d.token_stores || []).map((s) => `${s.tokens.toLocaleString()} tokens (${s.tokenizer})`);
  return [byteSize(d.bytes), `${d.documents.toLocaleString()} ${d.purpose === "eval" ? "pairs" : "documents"}`,
    `sha256 ${d.sha256.slice(0, 12)}…`,
    ...(tokens.length ? tokens : d.purpose === "eval" ? [] : ["tokens counted when a job first uses it"])].join(" · ");
}

// The dataset a picker starts on for a model: the demo's own corpus for the demo model, else the newest upload of
// that purpose; a general corpus falls back to sampling from the base (self), an eval set to none.
export function defaultDataset(purpose, datasets, model) {
  const mine = datasets.filter((d) => d.purpose === purpose);  // newest first, as GET /v1/datasets lists them
  const demo = mine.find((d) => d.filename === `demo-${purpose}.jsonl`);
  const uploaded = mine.find((d) => !d.filename.startsWith("demo-"));
  const pick = model === DEMO_MODEL ? demo ?? uploaded : uploaded ?? (purpose === "domain" ? demo : null);
  if (pick) return pick.id;
  return purpose === "general" ? SELF : "";
}

const optionFor = (d) => el("option", { value: d.id }, `${d.filename} · ${d.documents} docs · ${d.id}`);

function datasetPicker(spec, datasets) {
  const select = el("select", { name: spec.field, id: `pick-${spec.purpose}` },
    spec.required ? null : el("option", { value: "" }, "— none —"),
    spec.purpose === "general" ? el("option", { value: SELF }, "— sample it from the base model (general_source: self) —")
      : null,
    datasets.filter((d) => d.purpose === spec.purpose).map(optionFor));
  const bar = el("progress", { max: 1, value: 0, hidden: true });
  const error = fieldError(spec.field);
  const known = new Map(datasets.map((d) => [d.id, d]));
  const stats = el("p", { class: "muted dataset-stats", "data-stats-for": spec.field });
  const preview = el("div", { class: "dataset-preview", "data-preview-for": spec.field, hidden: true });
  const previewLink = el("a", { href: "#", class: "preview-link", "data-preview-link": spec.field,
    onclick: (e) => { e.preventDefault(); togglePreview(preview, select.value); } }, "preview");
  const showStats = () => {
    const d = known.get(select.value);
    stats.replaceChildren(datasetStats(d), d ? " · " : "", d ? previewLink : "");
    preview.hidden = true;
  };
  select.addEventListener("change", () => { select.dataset.touched = "1"; showStats(); });
  const input = el("input", { type: "file", id: `file-${spec.purpose}`, accept: ".jsonl,.json,.ndjson,.txt,.md,.parquet" });
  // null: every byte sent, the server joins and checks the file (an indeterminate bar meanwhile)
  const progress = (f) => { if (f === null) bar.removeAttribute("value"); else bar.value = f; };
  const send = async (file) => {
    error.textContent = "";
    bar.hidden = false;
    bar.value = 0;
    try {
      const d = await upload(file, spec.purpose, progress);
      if (!known.has(d.id)) select.append(optionFor(d));
      known.set(d.id, d);
      select.value = d.id;
      select.dataset.touched = "1";
      showStats();
    } catch (err) {
      error.textContent = `${file.name} was refused: ${err.message}`;
    } finally {
      bar.hidden = true;
      input.value = "";
    }
  };
  input.addEventListener("change", () => input.files[0] && send(input.files[0]));
  const drop = el("label", { class: "drop", for: input.id }, "Drop a file here or click to upload", input);
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]);
  });
  const node = el("div", { class: "picker", "data-purpose": spec.purpose },
    el("label", { for: select.id }, spec.label, spec.required ? " *" : ""), el("p", { class: "muted" }, spec.help),
    el("div", { class: "row" }, select, drop), stats, preview, bar, error);
  // picks the model's default unless the user chose or uploaded one
  node.pickFor = (model) => {
    if (select.dataset.touched) return;
    select.value = defaultDataset(spec.purpose, [...known.values()], model);
    showStats();
  };
  // picks the dataset a cloned job used (when it is still there); whether it is
  node.pick = (id) => {
    if (![...select.options].some((o) => o.value === id)) return false;
    select.value = id;
    select.dataset.touched = "1";
    showStats();
    return true;
  };
  return node;
}

// Shows (or hides again) the first documents of a dataset and its stats, as GET /v1/datasets/{id}/preview gives them.
async function togglePreview(box, id) {
  if (!box.hidden) { box.hidden = true; return; }
  box.hidden = false;
  box.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  try {
    const { documents } = await api(`/v1/datasets/${encodeURIComponent(id)}/preview?n=3`);
    box.replaceChildren(...documents.map((d) => el("pre", { class: "document" }, d.text,
      d.chars > d.text.length ? el("span", { class: "muted" }, ` … (${d.chars.toLocaleString()} characters)`) : "")),
    el("p", { class: "muted" }, `The first ${documents.length} documents.`));
  } catch (err) {
    box.replaceChildren(el("p", { class: "error" }, `No preview: ${err.message}`));
  }
}

// Fills the form with a job's spec (cloning it): its model, choices, datasets and fields, named "<name> (copy)".
function fillFrom(form, pickers, spec) {
  const set = (name, value) => {
    const field = form.elements[name];
    if (field === undefined || value === undefined || value === null) return;
    if (field instanceof RadioNodeList || field.type === "radio") {
      for (const radio of form.querySelectorAll(`[name="${name}"]`)) radio.checked = radio.value === String(value);
    } else {
      field.value = String(value);
    }
  };
  for (const name of ["base_model", "method", "reference", "finetune"]) set(name, spec[name]);
  for (const name of fieldNames(form)) {
    const [head, sub] = name.split(".");
    const value = sub ? spec[head]?.[sub] : spec[head];
    if (value !== undefined) writeControl(form, name, value);
    touch(form, name);
  }
  set("name", `${spec.name} (copy)`);
  form.elements.with_cpt.checked = false;  // a clone is one job
  const picks = { domain: spec.domain_data?.[0], eval: spec.eval_data,
    general: spec.general_source === "self" ? SELF : spec.general_data?.[0] };
  for (const picker of pickers) if (picks[picker.dataset.purpose]) picker.pick(picks[picker.dataset.purpose]);
}

// A radio per choice of the schema's enum for spec field ``name``, worded by CHOICE_TEXT, its default checked.
function radios(schema, name) {
  const { choices, fallback } = fieldRule(fieldSchema(schema, name));
  return el("div", { class: "choices" }, (choices ?? []).map((value) => el("label", {},
    el("input", { type: "radio", name, value, checked: value === fallback }), CHOICE_TEXT[name]?.[value] ?? value)));
}

// ``from``: a job id whose spec fills the form (the job page's Clone button: #/new?from=<job_id>)
export async function newJobPage(view, from = null) {
  const [datasets, models, schema, source] = await Promise.all([api("/v1/datasets"),
    api("/v1/models").then((list) => list.data), api("/v1/jobspec"),
    from ? api(`/v1/jobs/${encodeURIComponent(from)}`) : null]);
  const defaults = Object.fromEntries(Object.entries(schema.properties).map(([k, v]) => [k, v.default]));
  const pickers = PURPOSES.map((p) => datasetPicker(p, datasets));
  const general = el("p", { class: "error", "data-error-for": "spec" });
  const modelSelect = models.length ? el("select", { name: "base_model", id: "base_model" },
    models.map((m) => el("option", { value: m.id }, `${m.id}${m.model_type ? ` (${m.model_type})` : ""}`))) : null;
  const groups = GROUPS.map((g) => {
    const inputs = g.fields.map(([name, label]) => {
      const prop = fieldSchema(schema, name);
      return prop ? inputFor(name, label, fieldRule(prop), g.describe) : null;
    }).filter(Boolean);
    return inputs.length ? el("fieldset", { "data-group": g.legend, "data-when": g.when?.join("=") },
      el("legend", {}, g.legend), el("div", { class: "grid" }, inputs)) : null;
  });
  const form = el("form", { class: "card", id: "new-job", novalidate: true },
    el("h1", {}, "New job"),
    el("fieldset", {}, el("legend", {}, "Model and method"),
      el("label", { for: "base_model" }, "Base model"),
      modelSelect ?? noModelNote(),
      fieldError("base_model"),
      radios(schema, "method"),
      fieldError("method"),
      el("div", { "data-when": "method=mol" },  // only MoL compares with the base while training
        radios(schema, "reference"),
        fieldError("reference")),
      el("label", { class: "inline", "data-when": "method!=cpt" },
        el("input", { type: "checkbox", name: "with_cpt", checked: true }), "Also run a CPT baseline on the same data"),
      radios(schema, "finetune"),
      fieldError("finetune")),
    el("fieldset", {}, el("legend", {}, "Data"), pickers),
    groups,
    advancedSection(schema),
    general,
    el("p", { class: "estimate muted", "data-preflight": "" }),
    el("p", { class: "estimate muted", "data-estimate": "" }),
    el("button", { type: "submit", class: "primary" }, "Start training"));
  const yaml = yamlView(form, schema, () => specFrom(form, source?.spec),
    (spec) => {
      applySpec(form, pickers, spec, schema, (name) => fieldRule(fieldSchema(schema, name)).fallback);
      changed();
    });
  form.insertBefore(yaml, general);
  view.replaceChildren(form);

  // the demo model starts on examples/demo-mol.yaml's hyperparameters, another model on the schema's defaults; a
  // field set by hand (or by a clone, or the YAML view) keeps its value
  const presetFor = (model) => {
    for (const name of Object.keys(DEMO_SPEC)) {
      if (form.elements[name]?.dataset.touched) continue;
      writeControl(form, name, model === DEMO_MODEL ? DEMO_SPEC[name] : defaults[name]);
    }
  };
  const pickDefaults = () => { pickers.forEach((p) => p.pickFor(modelSelect?.value)); presetFor(modelSelect?.value); };
  modelSelect?.addEventListener("change", pickDefaults);
  pickDefaults();
  if (source) fillFrom(form, pickers, source.spec);
  // data-when="method=mol" shows a part for one choice, "method!=cpt" for all but one
  const showGroups = () => form.querySelectorAll("[data-when]").forEach((g) => {
    const [, name, not, value] = g.dataset.when.match(/^(\w+)(!?)=(\w+)$/);
    const chosen = form.querySelector(`[name="${name}"]:checked`)?.value;
    g.hidden = not ? chosen === value : chosen !== value;
  });
  const estimate = estimator(form, () => specFrom(form, source?.spec));
  let pending = null;
  // after any change: the parts shown, the YAML view, and (once typing pauses) the estimate
  const changed = () => {
    showGroups();
    yaml.refresh();
    clearTimeout(pending);
    pending = setTimeout(estimate, 300);
    form.querySelector("[data-estimate]").textContent = "Run time: estimating…";  // never the last shape's
    form.querySelector("[data-preflight]").textContent = "Memory: estimating…";
  };
  form.addEventListener("input", (e) => {
    if (e.target.name && e.target.closest(".field")) touch(form, e.target.name);
  });
  form.addEventListener("input", (e) => { if (e.target !== yaml.text) changed(); });
  form.addEventListener("change", (e) => { if (e.target !== yaml.text) changed(); });
  changed();

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form);
    try {
      if (yaml.edited) {
        yaml.open = true;
        throw new FieldProblem("yaml: the YAML view has edits not in the form: apply them, or revert them");
      }
      const spec = specFrom(form, source?.spec);
      const job = await api("/v1/jobs", { method: "POST", json: spec });
      if (form.elements.with_cpt.checked && spec.method !== "cpt") {
        // the baseline runs its whole budget of steps (a budget only warns there), so the two compare step for step
        await api("/v1/jobs", { method: "POST", json: { ...spec, method: "cpt", reference: "exact",
          on_budget: "warn", name: `${spec.name}-cpt` } });
        location.hash = "#/jobs";
      } else {
        location.hash = `#/job/${job.id}`;
      }
    } catch (err) {
      showErrors(form, err.message);
    }
  });
}

// The spec the form describes: the datasets picked, the choices, and each shown input (an empty one is left to the
// server's default, or to ``base``'s value when cloning, except an optional one, which goes as null; a number that
// does not parse goes as typed, so the server names it).
function specFrom(form, base = {}) {
  const data = new FormData(form);
  const method = data.get("method");
  const generalPick = data.get("general_data");
  const spec = { ...base, base_model: data.get("base_model"), method, finetune: data.get("finetune"),
    domain_data: [data.get("domain_data")].filter(Boolean),
    general_data: generalPick && generalPick !== SELF ? [generalPick] : [],
    general_source: generalPick === SELF && method !== "domain_only" ? "self" : "corpus",  // domain_only samples none
    eval_data: data.get("eval_data") || null,
    reference: method === "mol" ? data.get("reference") : "exact" };
  for (const name of fieldNames(form)) {
    if (form.querySelector(`[name="${CSS.escape(name)}"]`).closest("[hidden]")) continue;
    const value = readControl(form, name);
    if (value === undefined) continue;
    const [head, sub] = name.split(".");
    if (sub) spec[head] = { ...spec[head], [sub]: value };
    else spec[head] = value;
  }
  return spec;
}

function clearErrors(form) {
  form.querySelectorAll("[data-error-for]").forEach((p) => { p.textContent = ""; });
  form.querySelectorAll("[aria-invalid]").forEach((i) => i.removeAttribute("aria-invalid"));
}

// The error slot a 422 line belongs to: the field it starts with ("lora.rank: ...", "domain_data.0: ..."), or, for
// a whole-spec line ("spec: general_data is required ..."), the first field its message names.
export function slotFor(line, slots) {
  const [where, ...rest] = line.split(":");
  const path = where.trim().replace(/\[\d+\]/g, "").split(".").filter((p) => !/^\d+$/.test(p));
  for (let n = path.length; n > 0; n--) {
    const name = path.slice(0, n).join(".");
    const slot = ALIASES[name] ?? name;
    if (slots.includes(slot)) return slot;
  }
  const message = rest.join(":");
  const named = [...slots, ...Object.keys(ALIASES)]
    .map((name) => ({ name, at: message.search(new RegExp(`(^|[^\\w.])${name.replace(".", "\\.")}(?![\\w])`)) }))
    .filter((m) => m.at >= 0).sort((a, b) => a.at - b.at)[0];
  return named ? ALIASES[named.name] ?? named.name : null;
}

// Puts each line of a 422 next to the field it names (the rest above the button) and scrolls to the first.
function showErrors(form, detail) {
  const slots = [...form.querySelectorAll("[data-error-for]")].map((p) => p.dataset.errorFor).filter((n) => n !== "spec");
  const lines = new Map();
  for (const line of detail.split("\n")) {
    const slot = slotFor(line, slots) ?? "spec";
    lines.set(slot, [...(lines.get(slot) ?? []), line]);
  }
  let first = null;
  for (const [slot, text] of lines) {
    const p = form.querySelector(`[data-error-for="${CSS.escape(slot)}"]`);
    p.textContent = text.join("\n");
    const input = form.querySelector(`[name="${CSS.escape(slot)}"]`);
    input?.setAttribute("aria-invalid", "true");
    first ??= p;
  }
  first?.closest(".field, .picker, fieldset, p")?.scrollIntoView({ block: "center" });
}
