// A job's log, tailed live (GET /v1/jobs/{id}/log by byte offset), and its trackers' folders (TensorBoard, MLflow,
// wandb) linked from the job page as downloads with the command that shows each.
import { api } from "../api.js";
import { byteSize, el, statusBadge } from "../dom.js";

const POLL_MS = 1500;
const KEEP_CHARS = 2_000_000;  // of the log kept in the page; older lines scroll away

// The lines as a terminal would show them: a progress bar redraws its line with \r, so only its last state shows.
export function shownText(text) {
  return text.split("\n").map((line) => {
    const kept = line.replace(/\r+$/, "");
    return kept.slice(kept.lastIndexOf("\r") + 1);
  }).join("\n");
}

// ``text`` cut to its last ``keep`` characters from a line's start, and whether anything was cut.
export function keepTail(text, keep = KEEP_CHARS) {
  if (text.length <= keep) return { text, cut: false };
  const rest = text.slice(text.length - keep);
  return { text: rest.slice(rest.indexOf("\n") + 1), cut: true };
}

export async function logPage(view, jobId) {
  const job = await api(`/v1/jobs/${jobId}`);
  const pre = el("pre", { class: "log", "data-log": "" });
  const state = el("span", { class: "muted", "data-log-state": "" }, "Loading…");
  const follow = el("input", { type: "checkbox", checked: true, "aria-label": "follow the end" });
  view.replaceChildren(el("section", { class: "card" },
    el("div", { class: "toolbar" }, el("h1", {}, "Log of ", el("a", { href: `#/job/${jobId}` }, job.name)),
      statusBadge(job.status), el("span", { class: "spacer" }), el("label", { class: "inline" }, follow, " follow"),
      el("a", { class: "button", href: `#/job/${jobId}` }, "Back to the job")),
    el("p", { class: "muted" }, "The worker's lines for this job: its runner's progress and events, warnings and "
      + "tracebacks, each attempt headed by the worker that ran it."), state, pre));
  let text = "";
  let next = null;
  let quiet = 0;  // polls since the job ended that brought nothing: after two, the log is complete
  let timer = null;
  let stopped = false;
  const poll = async () => {
    try {
      const chunk = await api(`/v1/jobs/${jobId}/log${next === null ? "" : `?offset=${next}`}`);
      const earlier = next === null && chunk.offset > 0;
      next = chunk.next_offset;
      const kept = keepTail(text + chunk.text);
      text = kept.text;
      if (chunk.text || next === chunk.size) pre.textContent = shownText(text) || "(nothing logged yet)";
      quiet = chunk.ended && !chunk.text && next === chunk.size ? quiet + 1 : 0;
      state.textContent = `${byteSize(chunk.size)}${earlier || kept.cut ? ", its end shown" : ""}; `
        + (quiet >= 2 ? "the job has ended." : "following live…");
      if (follow.checked) pre.scrollTop = pre.scrollHeight;
      if (next < chunk.size) { timer = setTimeout(poll, 0); return; }  // more than one answer's worth waits
    } catch (err) {
      state.textContent = `Could not read the log: ${err.message}`;
    }
    if (quiet < 2 && !stopped) timer = setTimeout(poll, POLL_MS);
  };
  await poll();
  return () => { stopped = true; clearTimeout(timer); };
}

// The job page's card of tracker outputs; hidden while there are none (no report_to, or logged elsewhere).
export function trackersSection(jobId) {
  const list = el("ul", { class: "trackers" });
  const node = el("section", { class: "card", hidden: true, "data-trackers": "" }, el("h2", {}, "Trackers"),
    el("p", { class: "muted" }, "What the job's trackers (report_to) wrote in its run directory: download a "
      + "folder, unpack it, and run the command beside it."), list);
  const refresh = async () => {
    const trackers = await api(`/v1/jobs/${jobId}/trackers`).catch(() => []);
    node.hidden = trackers.length === 0;
    list.replaceChildren(...trackers.map((t) => el("li", { "data-tracker": t.name },
      el("a", { class: "button", download: "", href: t.download }, `Download ${t.name} (${byteSize(t.bytes)})`),
      " then ", el("code", {}, t.view))));
  };
  return { node, refresh };
}
