// New job: pick or upload datasets, choose a base model and method, set the main hyperparameters.
import { api, upload } from "../api.js";
import { byteSize, el } from "../dom.js";

const PURPOSES = [
  { purpose: "domain", field: "domain_data", label: "Domain corpus", required: true,
    help: "The text to adapt to: JSONL with a \"text\" field, .txt (documents separated by blank lines) or Parquet." },
  { purpose: "general", field: "general_data", label: "General corpus",
    help: "General text the model must not forget (KL to the base on it). Needed for MoL and CPT." },
  { purpose: "eval", field: "eval_data", label: "QA evaluation set",
    help: "Optional: JSONL with \"question\" and \"answer\", scored by exact match." },
];
const NUMBERS = [
  ["ratio", "Ratio domain:general", "text"], ["kl_weight", "KL weight λ", "number"], ["lr", "Learning rate", "number"],
  ["max_steps", "Steps", "number"], ["batch_size", "Rows per batch", "number"], ["seq_len", "Sequence length", "number"],
  ["warmup_steps", "Warm-up steps", "number"], ["eval_every", "Evaluate every", "number"],
  ["save_every", "Checkpoint every", "number"],
];

function fieldError(name) {
  return el("p", { class: "error field-error", "data-error-for": name });
}

// "3.2 MiB · 1,204 documents · sha256 ab12cd34… · 812,330 tokens (demo)": what is known of a dataset.
function datasetStats(d) {
  if (!d) return "";
  const tokens = (d.token_stores || []).map((s) => `${s.tokens.toLocaleString()} tokens (${s.tokenizer})`);
  return [byteSize(d.bytes), `${d.documents.toLocaleString()} ${d.purpose === "eval" ? "pairs" : "documents"}`,
    `sha256 ${d.sha256.slice(0, 12)}…`,
    ...(tokens.length ? tokens : d.purpose === "eval" ? [] : ["tokens counted when a job first uses it"])].join(" · ");
}

function datasetPicker(spec, datasets) {
  const select = el("select", { name: spec.field, id: `pick-${spec.purpose}` },
    spec.required ? null : el("option", { value: "" }, "— none —"),
    datasets.filter((d) => d.purpose === spec.purpose).map((d) =>
      el("option", { value: d.id }, `${d.filename} · ${d.documents} docs · ${d.id}`)));
  const bar = el("progress", { max: 1, value: 0, hidden: true });
  const error = fieldError(spec.field);
  const known = new Map(datasets.map((d) => [d.id, d]));
  const stats = el("p", { class: "muted dataset-stats", "data-stats-for": spec.field });
  const showStats = () => { stats.textContent = datasetStats(known.get(select.value)); };
  select.addEventListener("change", showStats);
  const input = el("input", { type: "file", id: `file-${spec.purpose}`, accept: ".jsonl,.json,.ndjson,.txt,.md,.parquet" });
  // null: every byte sent, the server joins and checks the file (an indeterminate bar meanwhile)
  const progress = (f) => { if (f === null) bar.removeAttribute("value"); else bar.value = f; };
  const send = async (file) => {
    error.textContent = "";
    bar.hidden = false;
    bar.value = 0;
    try {
      const d = await upload(file, spec.purpose, progress);
      select.append(el("option", { value: d.id }, `${d.filename} · ${d.documents} docs · ${d.id}`));
      known.set(d.id, d);
      select.value = d.id;
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
  showStats();
  return el("div", { class: "picker", "data-purpose": spec.purpose },
    el("label", { for: select.id }, spec.label, spec.required ? " *" : ""), el("p", { class: "muted" }, spec.help),
    el("div", { class: "row" }, select, drop), stats, bar, error);
}

export async function newJobPage(view) {
  const [datasets, models, schema] = await Promise.all([api("/v1/datasets"), api("/v1/models"), api("/v1/jobspec")]);
  const defaults = Object.fromEntries(Object.entries(schema.properties).map(([k, v]) => [k, v.default]));
  const general = el("p", { class: "error" });
  const form = el("form", { class: "card", id: "new-job" },
    el("h1", {}, "New job"),
    el("fieldset", {}, el("legend", {}, "Data"), PURPOSES.map((p) => datasetPicker(p, datasets))),
    el("fieldset", {}, el("legend", {}, "Model and method"),
      el("label", { for: "base_model" }, "Base model"),
      models.length ? el("select", { name: "base_model", id: "base_model" },
        models.map((m) => el("option", { value: m.id }, `${m.id}${m.model_type ? ` (${m.model_type})` : ""}`)))
        : el("p", { class: "error" }, "No base model on this server: put model directories under MOL_MODELS_DIR."),
      fieldError("base_model"),
      el("div", { class: "choices" }, [["mol", "MoL: CE on domain, KL to the base on general"],
        ["cpt", "CPT baseline: CE on everything"], ["domain_only", "Domain only"]].map(([value, text]) =>
        el("label", {}, el("input", { type: "radio", name: "method", value, checked: value === defaults.method }), text))),
      el("div", { class: "choices" }, [["exact", "Exact reference: the base model runs on the general rows every step"],
        ["cached", "Cached reference (MoL only): the base's top-k, computed once per corpus and model; faster"]]
        .map(([value, text]) => el("label", {},
          el("input", { type: "radio", name: "reference", value, checked: value === defaults.reference }), text))),
      el("label", { class: "inline" }, el("input", { type: "checkbox", name: "with_cpt", checked: true }),
        "Also run a CPT baseline on the same data"),
      el("div", { class: "choices" }, ["full", "lora"].map((value) => el("label", {},
        el("input", { type: "radio", name: "finetune", value, checked: value === defaults.finetune }),
        value === "full" ? "Full fine-tuning" : "LoRA")))),
    el("fieldset", {}, el("legend", {}, "Hyperparameters (defaults shown)"),
      el("div", { class: "grid" },
        el("div", {}, el("label", { for: "f-name" }, "Name"), el("input", { id: "f-name", name: "name", value: "my-job" }),
          fieldError("name")),
        NUMBERS.map(([name, label, type]) => el("div", {}, el("label", { for: `f-${name}` }, label),
          el("input", { id: `f-${name}`, name, type, step: "any", value: defaults[name] }), fieldError(name))))),
    general,
    el("button", { type: "submit", class: "primary" }, "Start training"));
  view.replaceChildren(form);

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    form.querySelectorAll(".field-error").forEach((p) => { p.textContent = ""; });
    general.textContent = "";
    const data = new FormData(form);
    const spec = { name: data.get("name"), base_model: data.get("base_model"), method: data.get("method"),
      finetune: data.get("finetune"), domain_data: [data.get("domain_data")].filter(Boolean),
      general_data: [data.get("general_data")].filter(Boolean), eval_data: data.get("eval_data") || null,
      reference: data.get("method") === "mol" ? data.get("reference") : "exact" };
    for (const [name, , type] of NUMBERS) spec[name] = type === "number" ? Number(data.get(name)) : data.get(name);
    try {
      const job = await api("/v1/jobs", { method: "POST", json: spec });
      if (data.get("with_cpt") && spec.method !== "cpt") {
        await api("/v1/jobs", { method: "POST",
          json: { ...spec, method: "cpt", reference: "exact", name: `${spec.name}-cpt` } });
        location.hash = "#/jobs";
      } else {
        location.hash = `#/job/${job.id}`;
      }
    } catch (err) {
      showErrors(form, general, err.message);
    }
  });
}

// Puts each "field: message" line of a 422 next to the field it names; the rest above the button.
function showErrors(form, general, detail) {
  const rest = [];
  for (const line of detail.split("\n")) {
    const field = line.split(":")[0].replace(/\[\d+\]$/, "").split(".")[0];
    const slot = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`);
    if (slot) slot.textContent = line; else rest.push(line);
  }
  general.textContent = rest.join("\n");
}
