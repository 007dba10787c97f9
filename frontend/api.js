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

// Uploads a dataset with a progress callback (fetch cannot report upload progress; XHR can).
export function upload(file, purpose, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/datasets");
    xhr.setRequestHeader("Authorization", `Bearer ${token()}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch { data = { detail: xhr.statusText }; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new ApiError(xhr.status, data.detail ?? xhr.statusText));
    };
    xhr.onerror = () => reject(new ApiError(0, "network error: is the server still running?"));
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file);
    xhr.send(form);
  });
}
