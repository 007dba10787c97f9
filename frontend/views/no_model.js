// What the New job form says in place of its base model picker when the server offers no base model: while `mol up`
// builds the demo model, that it is being built, with its progress and ETA (GET /v1/demo); otherwise, as an error,
// where base models come from.
import { api } from "../api.js";
import { el } from "../dom.js";

const POLL_MS = 3000;  // as the demo banner (app.js): the ETA moves while the page is open

// {text, error}: the message for GET /v1/demo's answer (null when it could not be read).
export function noModelMessage(demo) {
  if (demo?.state === "building") {
    return { error: false, text: `${demo.message} Its base model "demo" appears here once it is ready; `
      + "this form updates by itself." };
  }
  if (demo?.state === "ready") return { error: false, text: "The demo model is ready: open New job again to pick it." };
  const failed = demo?.state === "failed" ? `${demo.message} ` : "";
  return { error: true, text: `${failed}No base model on this server: put model directories under MOL_MODELS_DIR`
    + (demo?.state === "off" ? "." : ", or build the demo model (mol demo).") };
}

// The message as a paragraph (data-no-model: the demo's state, or "none" with the error), read again every POLL_MS while
// the demo builds and the paragraph is on the page.
export function noModelNote() {
  const note = el("p", { "data-no-model": "" });
  const show = async () => {
    const demo = await api("/v1/demo").catch(() => null);
    const { text, error } = noModelMessage(demo);
    note.className = error ? "error" : "muted";
    note.dataset.noModel = error ? "none" : demo.state;
    note.textContent = text;
    if (demo?.state === "building" && note.isConnected) setTimeout(show, POLL_MS);
  };
  show();
  return note;
}
