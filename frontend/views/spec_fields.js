// The New job form's generic parts: every spec field the schema (GET /v1/jobspec) has, each as a control of its type,
// the form's values as YAML (js-yaml, vendored) and back, the time estimate (GET /v1/estimate), and filling the form
// from a spec.
import { dump, load } from "../vendor/js-yaml.min.js";
import { api } from "../api.js";
import { duration, el } from "../dom.js";

// The hyperparameters of examples/demo-mol.yaml: what the form starts on for the demo model (a few minutes of CPU)
// instead of JobSpec's defaults (sized for real models: 1,000 steps of 512 tokens).
export const DEMO_SPEC = { seq_len: 128, batch_size: 16, lr: 3e-3, warmup_steps: 10, max_steps: 400, eval_every: 50,
  save_every: 200, eval_batches: 4, qa_max_new_tokens: 6 };
export const SELF = "self";  // the general picker's value for general_source: self (text sampled from the base model)
// GET /v1/estimate's query: the fields that decide a step's cost (api/estimate.py SHAPE) and the cadence
export const ESTIMATE_FIELDS = ["base_model", "method", "finetune", "reference", "seq_len", "batch_size", "grad_accum",
  "nproc", "precision", "gradient_checkpointing", "max_steps", "eval_every", "save_every"];

function deref(schema, node) {
  const ref = node?.$ref ?? node?.allOf?.[0]?.$ref;
  return ref ? { ...schema.$defs[ref.split("/").pop()], ...node } : node;
}

// Every field of a spec as a dotted path ("lora.rank"), in the schema's order: a nested object's fields one by one.
export function specPaths(schema, node = schema, prefix = "") {
  return Object.entries(deref(schema, node).properties).flatMap(([key, prop]) => {
    const inner = deref(schema, prop);
    return inner.type === "object" && inner.properties ? specPaths(schema, inner, `${prefix}${key}.`)
      : [`${prefix}${key}`];
  });
}

// The control a field gets, by its schema: "choice" (a select), "number", "text", "multiline" (a string whose
// default has a newline), "flag" (a checkbox), "choices" (a list of enum values: checkboxes) or "yaml" (anything
// else, a list or a union, typed as YAML).
export function controlKind(prop) {
  const types = (prop.anyOf ?? [prop]).filter((t) => t.type !== "null");
  if (types.length !== 1) return "yaml";
  const [t] = types;
  if (t.enum) return "choice";
  if (t.type === "integer" || t.type === "number") return "number";
  if (t.type === "boolean") return "flag";
  if (t.type === "string") return String(prop.default ?? "").includes("\n") ? "multiline" : "text";
  if (t.type === "array" && t.items?.enum) return "choices";
  return "yaml";
}

// A value as the YAML of a one-field control ("all-linear", "- a prompt"); null and undefined as "".
export function yamlValue(value) {
  return value === null || value === undefined ? "" : dump(value, { lineWidth: -1 }).trimEnd();
}

// A control for the kinds inputFor (new.js) does not draw: a checkbox, checkboxes, a textarea of text or of YAML.
export function extraControl(name, kind, prop, rule) {
  const id = `f-${name.replace(".", "_")}`;
  if (kind === "flag") {
    return el("label", { class: "inline" }, el("input", { type: "checkbox", id, name, "data-kind": kind,
      checked: Boolean(rule.fallback) }), name);
  }
  if (kind === "choices") {
    const chosen = new Set(rule.fallback ?? []);
    return el("div", {}, el("span", { class: "label" }, name), el("div", { class: "choices", id },
      prop.items.enum.map((c) => el("label", {}, el("input", { type: "checkbox", name, value: c, "data-kind": kind,
        checked: chosen.has(c) }), c))));
  }
  const text = kind === "yaml" ? yamlValue(rule.fallback) : rule.fallback ?? "";
  return [el("label", { for: id }, name), el("textarea", { id, name, "data-kind": kind, rows: 2, spellcheck: "false",
    placeholder: rule.nullable ? "none (null)" : null, "data-nullable": rule.nullable }, text)];
}

// A field problem the form shows next to its input ("sample_prompts: not valid YAML ...").
export class FieldProblem extends Error {}

// A control's value as the spec takes it; undefined: leave the field to the server's default.
export function readControl(form, name) {
  const nodes = [...form.querySelectorAll(`[name="${CSS.escape(name)}"]`)];
  const [first] = nodes;
  const kind = first.dataset.kind;
  if (kind === "flag") return first.checked;
  if (kind === "choices") return nodes.filter((n) => n.checked).map((n) => n.value);
  const raw = first.value.trim();
  if (raw === "") return "nullable" in first.dataset ? null : undefined;
  if (kind === "yaml") {
    try {
      return load(raw);
    } catch (err) {
      throw new FieldProblem(`${name}: not valid YAML: ${err.reason ?? err.message}`);
    }
  }
  if (kind === "multiline") return first.value;  // its newlines and spaces are the value
  const numeric = first.type === "number" || "numeric" in first.dataset;  // a number, or a word (kl_weight: auto)
  return numeric && Number.isFinite(Number(raw)) ? Number(raw) : raw;
}

// Sets a control to ``value`` (null: empty).
export function writeControl(form, name, value) {
  const nodes = [...form.querySelectorAll(`[name="${CSS.escape(name)}"]`)];
  const [first] = nodes;
  if (!first) return;
  if (first.dataset.kind === "flag") first.checked = Boolean(value);
  else if (first.dataset.kind === "choices") nodes.forEach((n) => { n.checked = (value ?? []).includes(n.value); });
  else if (first.dataset.kind === "yaml") first.value = yamlValue(value);
  else first.value = value === null || value === undefined ? "" : String(value);
}

// ``spec`` with its keys (and a nested object's) in the schema's order, the way a spec file lists them.
export function ordered(spec, schema, node = schema) {
  const props = deref(schema, node).properties;
  const keys = [...Object.keys(props).filter((k) => k in spec), ...Object.keys(spec).filter((k) => !(k in props))];
  return Object.fromEntries(keys.map((k) => {
    const inner = props[k] && deref(schema, props[k]);
    const nested = inner?.properties && spec[k] && typeof spec[k] === "object" && !Array.isArray(spec[k]);
    return [k, nested ? ordered(spec[k], schema, inner) : spec[k]];
  }));
}

// The spec as a YAML file, as `mol train` reads it (its datasets and model by their ids on this server).
export function specYaml(spec, schema) {
  return dump(ordered(spec, schema), { lineWidth: -1 });
}

// The mapping a YAML view holds; FieldProblem naming the line, or the field the schema does not know.
export function parseSpecYaml(text, schema) {
  let spec;
  try {
    spec = load(text);
  } catch (err) {
    throw new FieldProblem(`yaml: not valid YAML: ${err.reason ?? err.message}`);
  }
  if (spec === null || typeof spec !== "object" || Array.isArray(spec)) {
    throw new FieldProblem("yaml: the spec must be a mapping of field: value");
  }
  const known = new Set(specPaths(schema));
  for (const [key, value] of Object.entries(spec)) {
    const nested = value && typeof value === "object" && !Array.isArray(value);
    const paths = nested ? Object.keys(value).map((k) => `${key}.${k}`) : [key];
    const unknown = paths.find((p) => !known.has(p) && !known.has(key));
    if (unknown) throw new FieldProblem(`${unknown}: unknown field`);
  }
  return spec;
}

// The query of GET /v1/estimate for a spec (the fields it sets among ESTIMATE_FIELDS).
export function estimateQuery(spec) {
  const query = new URLSearchParams();
  for (const name of ESTIMATE_FIELDS) if (spec[name] !== undefined && spec[name] !== null) query.set(name, spec[name]);
  return query.toString();
}

// What the form says of the run time: the job's estimate and its CPT baseline's (null: none goes with it), each
// from GET /v1/estimate; "no estimate yet" where nothing like it has finished here.
export function estimateText(job, baseline = null) {
  const part = (e) => (e.seconds === null ? "no estimate yet (nothing like it has finished here)"
    : `about ${duration(e.seconds)} (measured on ${e.based_on} finished job${e.based_on === 1 ? "" : "s"} like it)`);
  return `Run time once a worker takes it: ${part(job)}${baseline ? `; its CPT baseline: ${part(baseline)}` : ""}.`;
}

// What the form says of memory and modelled time: POST /v1/estimates' answer (api/preflight.py) for the spec on the
// live worker with the most memory (a CPU when none is live): the peak per process against that worker's memory.
export function preflightText(answer) {
  const gib = (n) => (n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : `${Math.round(n / 2 ** 20)} MiB`);
  const where = answer.worker ? `worker ${answer.worker} (${answer.device})` : answer.device;
  const memory = answer.device_memory_bytes ? ` of its ${gib(answer.device_memory_bytes)}` : "";
  const verdict = answer.fits === null ? "" : answer.fits ? ", fits" : ": does not fit";
  const live = answer.workers.length ? ` It fits ${answer.workers.filter((w) => w.fits).length} of `
    + `${answer.workers.length} live worker${answer.workers.length === 1 ? "" : "s"}.` : "";
  return `Memory: about ${gib(answer.peak_bytes)} per process on ${where}${memory}${verdict}; modelled time `
    + `${answer.step_s < 1 ? answer.step_s.toFixed(2) : answer.step_s.toFixed(1)} s per step, about `
    + `${duration(answer.job_s)} for the job (setup aside).${live}`;
}

// The parts of the estimated peak, largest first, for the line's tooltip.
export function preflightParts(answer) {
  const parts = Object.entries(answer.parts).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
  return [answer.message, `at the end of the ${answer.phase} pass`, ...parts.map(([name, n]) => `${name}: `
    + `${(n / 2 ** 20).toFixed(0)} MiB`), `rate: ${answer.rate_source}`].join("\n");
}

// The YAML view: the spec the form describes as a file, following the form while it is not being edited; Apply puts
// an edited one into the form (``apply(spec)``), Revert drops the edits. A submit with edits not applied is refused:
// neither the form nor the file silently wins.
export function yamlView(form, schema, current, apply) {
  const text = el("textarea", { id: "spec-yaml", rows: 22, spellcheck: "false", "aria-label": "the spec as YAML" });
  const note = el("span", { class: "muted", "data-yaml-note": "" });
  const error = el("p", { class: "error", "data-error-for": "yaml" });
  const node = el("details", { class: "yaml-view", "data-yaml": "" },
    el("summary", {}, "YAML: the whole spec as a file"),
    el("p", { class: "muted" }, "The spec this form submits, as a spec file for `mol train` lists it (here the model "
      + "and datasets go by their ids on this server). Edit it and apply it, or change the form: it follows."),
    text, el("div", { class: "toolbar" }, el("button", { type: "button", "data-action": "apply-yaml",
      onclick: () => node.apply() }, "Apply to the form"), el("button", { type: "button", "data-action": "revert-yaml",
      onclick: () => { node.edited = false; note.textContent = ""; error.textContent = ""; node.refresh(); } },
    "Revert to the form"), note), error);
  node.text = text;
  node.edited = false;
  text.addEventListener("input", () => { node.edited = true; note.textContent = "edited: not in the form yet"; });
  node.refresh = () => {
    if (node.edited) return;
    try {
      text.value = specYaml(current(), schema);
    } catch (err) {
      note.textContent = err.message;  // a field that does not parse: the form shows it at submit
    }
  };
  node.apply = () => {
    error.textContent = "";
    try {
      apply(parseSpecYaml(text.value, schema));
    } catch (err) {
      if (!(err instanceof FieldProblem)) throw err;
      error.textContent = err.message;
      node.open = true;
      return false;
    }
    node.edited = false;
    note.textContent = "applied";
    node.refresh();
    return true;
  };
  return node;
}

// Shows GET /v1/estimate's answer for the spec (and its CPT baseline's, when one goes with it) above the button,
// and above it POST /v1/estimates' modelled peak memory and time (a spec the server refuses says why there).
export function estimator(form, current) {
  const box = form.querySelector("[data-estimate]");
  const memoryBox = form.querySelector("[data-preflight]");
  let asked = 0;
  const preflight = async (spec, mine) => {
    if (!memoryBox) return;
    try {
      const answer = await api("/v1/estimates", { method: "POST", json: { spec } });
      if (mine !== asked) return;
      memoryBox.textContent = preflightText(answer);
      memoryBox.title = preflightParts(answer);
      memoryBox.dataset.fits = answer.fits === null ? "" : String(answer.fits);
    } catch (err) {
      if (mine === asked) memoryBox.textContent = `Memory: no estimate yet (${err.message})`;
    }
  };
  return async () => {
    const mine = ++asked;
    let spec;
    try {
      spec = current();
    } catch {
      return;  // a field that does not parse: its error shows at submit
    }
    if (!spec.base_model) { box.textContent = ""; if (memoryBox) memoryBox.textContent = ""; return; }
    preflight(spec, mine);
    const baseline = form.elements.with_cpt.checked && spec.method !== "cpt";
    try {
      const [job, cpt] = await Promise.all([api(`/v1/estimate?${estimateQuery(spec)}`),
        baseline ? api(`/v1/estimate?${estimateQuery({ ...spec, method: "cpt", reference: "exact" })}`) : null]);
      if (mine !== asked) return;
      box.textContent = estimateText(job, cpt);
      box.title = [job.message, cpt?.message].filter(Boolean).join("\n");
      box.dataset.seconds = job.seconds ?? "";
    } catch (err) {
      if (mine === asked) box.textContent = `No estimate: ${err.message}`;
    }
  };
}

// The names of the form's field controls (a dotted path for nested ones), in the form's order.
export function fieldNames(form) {
  return [...new Set([...form.querySelectorAll(".field [name]")].map((input) => input.name))];
}

// Marks a field as set by hand (or from a spec): a change of base model leaves its value alone.
export function touch(form, name) {
  form.querySelectorAll(`[name="${CSS.escape(name)}"]`).forEach((input) => { input.dataset.touched = "1"; });
}

// Fills the form with a spec from the YAML view: every field it names, and each one it leaves out back to its
// default (``fallback(name)``), so the form holds that spec and nothing else. FieldProblem, before anything
// changes, for a model or dataset this server does not have, or several datasets for one corpus (the form holds
// one each).
export function applySpec(form, pickers, spec, schema, fallback) {
  const defaults = Object.fromEntries(Object.entries(schema.properties).map(([k, v]) => [k, v.default]));
  const model = spec.base_model ?? null;
  const models = form.elements.base_model?.tagName === "SELECT" ? [...form.elements.base_model.options] : [];
  if (!models.some((o) => o.value === model)) {
    throw new FieldProblem(`base_model: no base model '${model}' on this server`);
  }
  const one = (field) => {
    const value = spec[field] ?? [];
    if (!Array.isArray(value)) throw new FieldProblem(`${field}: a list of dataset ids, e.g. [ds_…]`);
    if (value.length > 1) {
      throw new FieldProblem(`${field}: the form holds one dataset per corpus (the API and mol client take several)`);
    }
    return value[0] ?? "";
  };
  const picks = { domain: one("domain_data"), eval: spec.eval_data ?? "",
    general: spec.general_source === "self" ? SELF : one("general_data") };
  for (const picker of pickers) {
    const id = picks[picker.dataset.purpose];
    const select = picker.querySelector("select");
    if (![...select.options].some((o) => o.value === id)) {
      throw new FieldProblem(`${select.name}: ${id ? `no dataset '${id}' among yours` : "required"}`);
    }
  }
  for (const picker of pickers) picker.pick(picks[picker.dataset.purpose]);
  for (const name of ["base_model", "method", "reference", "finetune"]) {
    const value = String(spec[name] ?? defaults[name]);
    for (const input of form.querySelectorAll(`[name="${name}"]`)) {
      if (input.type === "radio") input.checked = input.value === value;
      else input.value = value;
    }
  }
  for (const name of fieldNames(form)) {
    const [head, sub] = name.split(".");
    const value = sub ? spec[head]?.[sub] : spec[head];
    writeControl(form, name, value !== undefined ? value : fallback(name) ?? null);
    touch(form, name);
  }
}
