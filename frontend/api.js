// The REST client: bearer token from this browser session, JSON in and out, errors carry the server's detail.

const KEY = "mol-token";

export function token() {
  return sessionStorage.getItem(KEY);
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
  }
}

export async function api(path, { method = "GET", json, form } = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  const response = await fetch(path, { method, headers, body, credentials: "same-origin" });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new ApiError(response.status, data.detail ?? response.statusText);
  return data;
}

// Up to `count` items of a paged list (`{data, has_more, last_id}`), newest first, walking pages of at most
// 200 with `after` (`path` may carry filters: `/v1/jobs?status=failed`); returns {items, more}, `more` telling
// whether older items were left out.
export async function listPages(path, count = Infinity) {
  const items = [];
  let after = null;
  for (;;) {
    const limit = Math.min(200, count - items.length);
    const page = await api(`${path}${path.includes("?") ? "&" : "?"}limit=${limit}`
      + `${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    items.push(...page.data);
    if (!page.has_more || items.length >= count) return { items, more: page.has_more };
    after = page.last_id;
  }
}

// Signs in with a token: checks it and sets the HttpOnly cookie that EventSource and downloads use.
export async function signIn(value) {
  sessionStorage.setItem(KEY, value);
  try {
    return await api("/v1/session", { method: "POST" });
  } catch (err) {
    sessionStorage.removeItem(KEY);
    throw err;
  }
}

export async function signOut() {
  await api("/v1/session", { method: "DELETE" }).catch(() => null);
  sessionStorage.removeItem(KEY);
}

// A large file goes up in parts (docs/api.md, "Uploads in parts"): PUT each 8 MiB slice, then complete.
const PART = 8 * 2 ** 20;
const RETRIES = 5;
const statusOf = (err) => (err instanceof ApiError ? err.status : 0);  // 0: fetch itself failed (network)
const retryable = (status) => status === 0 || status === 408 || status === 429 || (status >= 502 && status <= 504);
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

// Uploads a dataset in parts and returns the Dataset. onProgress(fraction) as bytes go out, then
// onProgress(null) while the server joins and checks the file. A part cut off by the network is retried with
// backoff; picking the same file again in this browser session resumes the same upload, sending only the parts
// the server does not hold yet.
export async function upload(file, purpose, onProgress) {
  const key = `mol-upload:${purpose}:${file.name}:${file.size}:${file.lastModified}`;
  const up = await resumeOrCreate(key, file, purpose);
  sessionStorage.setItem(key, up.id);
  const count = Math.max(1, Math.ceil(file.size / PART));
  try {
    if (up.status === "pending") await sendParts(up, file, count, onProgress);
    onProgress(null);
    const dataset = await complete(up.id, count);
    sessionStorage.removeItem(key);
    return dataset;
  } catch (err) {
    const status = statusOf(err);
    if (status >= 400 && status < 500) {  // refused: resuming cannot help, so drop what the server holds of it
      sessionStorage.removeItem(key);
      api(`/v1/uploads/${up.id}/cancel`, { method: "POST" }).catch(() => null);
    }
    throw err;
  }
}

async function resumeOrCreate(key, file, purpose) {
  const id = sessionStorage.getItem(key);
  const found = id ? await api(`/v1/uploads/${id}`).catch(() => null) : null;
  if (found && found.status !== "cancelled") return found;
  return api("/v1/uploads", { method: "POST",
    json: { filename: file.name, purpose, bytes: file.size, mime_type: file.type || null } });
}

async function sendParts(up, file, count, onProgress) {
  const have = new Map(up.parts.map((p) => [p.index, p.bytes]));
  for (let index = 0; index < count; index++) {
    const blob = file.slice(index * PART, (index + 1) * PART);
    if (have.get(index) === blob.size) continue;
    await sendPart(up.id, index, blob, (sent) => onProgress((index * PART + sent) / Math.max(file.size, 1)));
  }
}

async function sendPart(id, index, blob, onProgress) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await send("PUT", `/v1/uploads/${id}/parts/${index}`, blob, onProgress);
    } catch (err) {
      if (!retryable(statusOf(err)) || attempt >= RETRIES) throw err;
      await sleep(500 * 2 ** attempt);
      const up = await api(`/v1/uploads/${id}`).catch(() => null);  // it may have arrived, its answer lost
      if (up?.parts.some((p) => p.index === index && p.bytes === blob.size)) return null;
    }
  }
}

// Completing a multi-GB file takes a while; if the answer is lost, asking again answers 409 while the first
// request still runs, then the same dataset.
async function complete(id, count) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await api(`/v1/uploads/${id}/complete`, { method: "POST", json: { part_count: count } });
    } catch (err) {
      const status = statusOf(err);
      if ((!retryable(status) && status !== 409) || attempt >= RETRIES) throw err;
    }
    await sleep(2000 * 2 ** attempt);
  }
}

// One request with a raw body and upload progress (fetch cannot report upload progress; XHR can).
function send(method, path, body, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, path);
    xhr.setRequestHeader("Authorization", `Bearer ${token()}`);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (e) => onProgress(e.loaded);
    xhr.onload = () => {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch { data = { detail: xhr.statusText }; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new ApiError(xhr.status, data.detail ?? xhr.statusText));
    };
    xhr.onerror = () => reject(new ApiError(0, "network error: is the server still running? Pick the file again "
      + "to resume the upload."));
    xhr.send(body);
  });
}

// The service's words (GET /v1/vocabularies: job statuses, event kinds), read once after sign-in so that no view
// spells them again; views read them from here.
export const words = { job_statuses: [], active_statuses: [], final_statuses: [], event_kinds: [] };

export async function loadWords() {
  Object.assign(words, await api("/v1/vocabularies"));
}
