// Playground: one prompt, completed by two models side by side (by default the base and the newest checkpoint),
// each streamed token by token from POST /v1/completions (OpenAI's SSE chunks).
import { api, token } from "../api.js";
import { el } from "../dom.js";

// Reads an SSE response of OpenAI chunks: onChunk(parsed chunk) for each `data:` line until `data: [DONE]`.
async function readChunks(response, onChunk) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const events = buffer.split("\n\n");
    buffer = events.pop();
    for (const event of events) {
      const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data === "[DONE]") return;
      if (data) onChunk(JSON.parse(data));
    }
  }
}

// Streams one completion into `pane`; resolves when it ends (or is aborted through `signal`).
async function stream(pane, body, signal) {
  pane.text.textContent = "";
  pane.error.textContent = "";
  pane.status.textContent = "generating…";
  pane.box.dataset.state = "running";
  const started = performance.now();
  let pieces = 0;
  let finish = null;
  try {
    const response = await fetch("/v1/completions", { method: "POST", signal, credentials: "same-origin",
      headers: { Authorization: `Bearer ${token()}`, "Content-Type": "application/json" },
      body: JSON.stringify({ ...body, stream: true }) });
    if (!response.ok) {
      const detail = await response.json().then((d) => d.detail).catch(() => response.statusText);
      throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    await readChunks(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);  // the generation failed after the 200
      const choice = chunk.choices[0];
      if (choice.text) { pane.text.append(choice.text); pieces += 1; }
      finish = choice.finish_reason ?? finish;
    });
    const seconds = (performance.now() - started) / 1000;
    pane.status.textContent = `${finish === "length" ? "max tokens reached" : "end of text"} · ${pieces} pieces in `
      + `${seconds.toFixed(1)} s`;
    pane.box.dataset.state = "done";
  } catch (err) {
    pane.box.dataset.state = signal.aborted ? "stopped" : "error";
    pane.status.textContent = signal.aborted ? "stopped" : "";
    if (!signal.aborted) pane.error.textContent = err.message;
  }
}

function modelPicker(models, chosen) {
  return el("select", {}, models.map((m) => el("option", { value: m.id, selected: m.id === chosen },
    m.kind === "checkpoint" ? `checkpoint ${m.id}` : `base ${m.id}`)));
}

function pane(side, models, chosen) {
  const text = el("pre", { class: "completion", "data-completion": side,
    style: "white-space: pre-wrap; min-height: 160px" });
  const status = el("p", { class: "muted", "data-status-for": side });
  const error = el("p", { class: "error" });
  const picker = modelPicker(models, chosen);
  picker.setAttribute("aria-label", `${side} model`);
  picker.id = `model-${side}`;
  const box = el("section", { class: "card", "data-pane": side }, el("div", { class: "toolbar" },
    el("h2", {}, side === "left" ? "Model A" : "Model B"), picker), text, status, error);
  return { box, text, status, error, picker };
}

const field = (label, input) => el("label", { class: "inline", style: "white-space: nowrap" }, label, input);

export async function playgroundPage(view, wanted) {
  const models = (await api("/v1/models?include=checkpoints")).data;  // OpenAI's list: {object, data}
  const bases = models.filter((m) => m.kind !== "checkpoint");
  const checkpoints = models.filter((m) => m.kind === "checkpoint");
  const right = wanted ?? checkpoints[0]?.id ?? bases[1]?.id ?? bases[0]?.id;
  const panes = [pane("left", models, bases[0]?.id), pane("right", models, right)];
  const prompt = el("textarea", { id: "prompt", rows: 4, style: "width: 100%; font: inherit; box-sizing: border-box",
    placeholder: "Type a prompt; both models complete it." }, "Question: What is two plus three?\nAnswer:");
  const maxTokens = el("input", { id: "max-tokens", type: "number", min: 1, max: 512, value: 48 });
  const temperature = el("input", { id: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0 });
  const stop = el("button", { disabled: true }, "Stop");
  const go = el("button", { class: "primary" }, "Generate");
  let controller = null;
  go.addEventListener("click", async () => {
    controller?.abort();
    controller = new AbortController();
    const body = { prompt: prompt.value, max_tokens: Number(maxTokens.value), temperature: Number(temperature.value) };
    go.disabled = true;
    stop.disabled = false;
    await Promise.all(panes.map((p) => stream(p, { ...body, model: p.picker.value }, controller.signal)));
    go.disabled = false;
    stop.disabled = true;
  });
  stop.addEventListener("click", () => controller?.abort());
  const hint = checkpoints.length ? null : el("p", { class: "muted" },
    "No checkpoints yet: a job's checkpoints appear here as they are saved. ", el("a", { href: "#/new" }, "New job"));
  view.replaceChildren(
    el("section", { class: "card" }, el("h1", {}, "Playground"),
      el("p", { class: "muted" }, "Greedy at temperature 0. The same route serves OpenAI's client: ",
        el("code", {}, "POST /v1/completions"), " with model = a base id or ", el("code", {}, "<job_id>:step-N"), "."),
      hint, prompt,
      el("div", { class: "toolbar" }, field("Max tokens", maxTokens), field("Temperature", temperature),
        el("span", { class: "spacer" }), stop, go)),
    el("div", { class: "two" }, panes.map((p) => p.box)));
  return () => controller?.abort();  // leaving the page stops both generations (the server sees the disconnect)
}
