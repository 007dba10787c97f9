// Small DOM helpers. Text from the server only ever goes through textContent, never innerHTML.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function fmt(value, digits = 4) {
  if (value === undefined || value === null || Number.isNaN(value)) return "–";
  if (Math.abs(value) >= 1e4 || (Math.abs(value) < 1e-3 && value !== 0)) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toString();
}

// The API's timestamps are UTC ISO 8601 ending in Z; people read them in their own time zone.
export function localTime(iso, options = { dateStyle: "medium", timeStyle: "medium" }) {
  if (!iso) return "–";
  return new Date(iso).toLocaleString(undefined, options);
}

// "3 min ago", with the local date and time on hover and the UTC instant in datetime=
export function when(iso) {
  return el("time", { datetime: iso, title: localTime(iso) }, age(iso));
}

export function age(iso) {
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

export function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

export function byteSize(bytes) {
  if (!Number.isFinite(bytes) || bytes < 0) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

export function statusBadge(status) {
  return el("span", { class: `badge ${status}`, "data-status": status }, status);
}

// A job's badge: its status, except that a job its forgetting budget stopped (stop_reason "budget") has one of its
// own, never the plain green "succeeded" of a run that went to max_steps.
export function jobBadge(job) {
  if (job.stop_reason !== "budget") return statusBadge(job.status);
  return el("span", { class: "badge over-budget", "data-status": job.status, "data-stop-reason": "budget",
    title: "stopped early: its KL to the base stayed over the forgetting budget (max_general_kl)" },
  "stopped: over budget");
}

// Where a job continued from (GET /v1/jobs/{id}'s lineage fields): a link to its parent's page, the parent's
// checkpoint, the original base model of the chain and what the KL is anchored to; null for a job trained from a
// model. The job page and the compare view both show it.
export function lineageLine(job) {
  if (!job.parent_job_id) return null;
  const anchor = job.spec?.reference_model ?? job.original_base_model;
  return el("p", { class: "muted wide lineage", "data-lineage": job.parent_job_id },
    "Continued from ", el("a", { href: `#/job/${encodeURIComponent(job.parent_job_id)}`, "data-parent": "" },
      job.parent_job_id),
    " at ", el("code", { "data-parent-checkpoint": "" }, job.parent_checkpoint),
    " · original base ", el("code", { "data-original-base": "" }, job.original_base_model),
    " · KL anchored to ", el("code", {}, anchor));
}

export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
