// Datasets: the owner's uploads (GET /v1/datasets), each with its token stores, a preview of its first documents
// and delete (refused with the server's reason while a job uses it). Uploads happen in New job, where they are used.
import { api } from "../api.js";
import { byteSize, el, when } from "../dom.js";

const PURPOSES = { domain: "domain corpus", general: "general corpus", eval: "QA eval set", prompts: "sample prompts",
  task: "task (lm-eval)" };
const CORPORA = ["domain", "general"];  // what jobs tokenize into token stores

// "1,204,330 tokens · 2.3 MiB (demo)" per token store: one per tokenizer a job tokenized the file with.
export function storeLines(dataset) {
  return (dataset.token_stores || []).map((s) => `${s.tokens.toLocaleString("en-US")} tokens · `
    + `${s.documents.toLocaleString("en-US")} docs · ${byteSize(s.bytes)} (${s.tokenizer})`);
}

function previewRow(dataset, columns) {
  const box = el("td", { colspan: columns, class: "dataset-preview" }, el("p", { class: "muted" }, "Loading…"));
  api(`/v1/datasets/${encodeURIComponent(dataset.id)}/preview?n=5`).then(({ documents }) => {
    box.replaceChildren(el("p", { class: "muted" }, `The first ${documents.length} of `
      + `${dataset.documents.toLocaleString("en-US")} ${dataset.purpose === "eval" ? "pairs" : "documents"}:`),
    ...documents.map((d) => el("pre", { class: "document" }, d.text,
      d.chars > d.text.length ? el("span", { class: "muted" }, ` … (${d.chars.toLocaleString("en-US")} characters)`)
        : "")));
  }, (err) => box.replaceChildren(el("p", { class: "error" }, `No preview: ${err.message}`)));
  return el("tr", { "data-preview-of": dataset.id }, box);
}

function row(dataset, onDelete) {
  const stores = storeLines(dataset);
  const tr = el("tr", { "data-dataset": dataset.id });
  const preview = el("button", { "data-action": "preview", onclick: () => {
    const open = tr.nextElementSibling?.dataset.previewOf === dataset.id;
    if (open) tr.nextElementSibling.remove();
    else tr.after(previewRow(dataset, tr.children.length));
    preview.textContent = open ? "Preview" : "Hide";
  } }, "Preview");
  const remove = el("button", { class: "danger", "data-action": "delete", onclick: () => onDelete(dataset, remove) },
    "Delete");
  tr.append(el("td", {}, el("strong", {}, dataset.filename), el("br"), el("span", { class: "muted" }, dataset.id)),
    el("td", {}, PURPOSES[dataset.purpose] ?? dataset.purpose),
    el("td", { class: "num" }, byteSize(dataset.bytes)),
    el("td", { class: "num" }, dataset.documents.toLocaleString("en-US")),
    el("td", { "data-stores": stores.length }, stores.length ? stores.map((s) => el("div", {}, s))
      : el("span", { class: "muted" }, CORPORA.includes(dataset.purpose)
        ? `≈ ${dataset.approx_tokens.toLocaleString("en-US")} tokens; counted when a job first uses it` : "–")),
    el("td", { class: "muted" }, when(dataset.created_at)),
    el("td", {}, preview, " ", remove));
  return tr;
}

export async function datasetsPage(view) {
  const body = el("tbody");
  const note = el("p", { class: "error", role: "alert" });
  const empty = el("p", { class: "empty", hidden: true }, "No datasets yet: upload one in ",
    el("a", { href: "#/new" }, "New job"), ".");
  const table = el("table", { class: "datasets" }, el("thead", {}, el("tr", {}, ["File", "Purpose", "Size", "Documents",
    "Token stores", "Uploaded", ""].map((h) => el("th", {}, h)))), body);
  const refresh = async () => {
    const datasets = await api("/v1/datasets");
    body.replaceChildren(...datasets.map((d) => row(d, onDelete)));
    empty.hidden = datasets.length > 0;
    table.hidden = datasets.length === 0;
  };
  const onDelete = async (dataset, button) => {
    if (!window.confirm(`Delete ${dataset.filename} (${dataset.id}) and its token stores? This cannot be undone.`)) {
      return;
    }
    button.disabled = true;
    try {
      await api(`/v1/datasets/${encodeURIComponent(dataset.id)}`, { method: "DELETE" });
      note.textContent = "";
      await refresh();
    } catch (err) {
      note.textContent = `Could not delete ${dataset.filename}: ${err.message}`;
      button.disabled = false;
    }
  };
  view.replaceChildren(el("section", { class: "card" }, el("div", { class: "toolbar" }, el("h1", {}, "Datasets"),
    el("span", { class: "spacer" }), el("a", { class: "button", href: "#/new" }, "Upload in New job")),
  el("p", { class: "muted" }, "Your uploaded corpora, eval sets and prompt files. A token store is the file "
    + "tokenized for one model's tokenizer, made by the first job that used it and reused after; deleting a dataset "
    + "deletes its stores."), note, table, empty));
  await refresh();
}
