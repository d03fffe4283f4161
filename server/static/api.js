// Talking to the server: the stored API key, fetch and upload wrappers that turn every failure into an ApiError
// with a readable message, and the small DOM helpers the cards share for status lines and busy buttons.

const KEY_STORAGE = "speech7.apiKey";

export function getKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return ""; // storage disabled (privacy mode): the key then lives only in the input box
  }
}

export function setKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    /* see getKey */
  }
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const STATUS_WORDS = {
  400: "Bad request", 401: "Not signed in or invalid API key", 402: "Not enough minutes", 403: "Not allowed",
  404: "Not found", 413: "File too large", 415: "Unsupported file type", 422: "Could not process the input",
  429: "Too many requests", 500: "Server error", 502: "Bad gateway", 503: "Service unavailable",
};

/** An ApiError from a failed response's status and body: the server's `{"error": {code, message}}` if sent. */
export function errorFromText(status, text) {
  let code = "http_" + status;
  let message = "";
  try {
    const body = JSON.parse(text);
    const err = body && body.error;
    if (err && typeof err === "object") {
      code = err.code || code;
      message = err.message || "";
    } else if (typeof err === "string") {
      message = err;
    } else if (body && body.error_message) {
      code = String(body.error_code ?? code);
      message = body.error_message;
    }
  } catch {
    // Not JSON (a proxy's HTML page, say): show a short plain-text excerpt rather than nothing.
    message = String(text || "").replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 200);
  }
  return new ApiError(status, code, message || STATUS_WORDS[status] || `HTTP ${status}`);
}

function noKey() {
  return new ApiError(0, "no_key", "Enter your API key at the top of the page first.");
}

/**
 * fetch() with the API key header (unless `auth: false`), JSON or FormData bodies and the admin CSRF header.
 * Resolves to the Response when it is 2xx, otherwise throws an ApiError.
 */
export async function request(path, { method = "GET", json, form, auth = true, csrf, signal } = {}) {
  const h = new Headers();
  if (auth) {
    if (!getKey()) throw noKey();
    h.set("x-api-key", getKey());
  }
  if (csrf && method !== "GET") h.set("X-CSRF-Token", csrf);
  let body;
  if (json !== undefined) {
    h.set("Content-Type", "application/json");
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser sets the multipart boundary
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers: h, body, signal, credentials: "same-origin", cache: "no-store" });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError(0, "network", "Could not reach the server: " + (err && err.message ? err.message : err));
  }
  if (!resp.ok) throw errorFromText(resp.status, await resp.text().catch(() => ""));
  return resp;
}

export async function requestJson(path, options) {
  const resp = await request(path, options);
  return resp.json();
}

/**
 * POSTs a FormData with XMLHttpRequest, the one browser API that reports upload progress:
 * `onUpload(fraction)` while the file goes up, `onSent()` once it is all sent (the server is then working).
 * Resolves to `{ text, header(name) }` for a 2xx answer, otherwise throws an ApiError.
 */
export function upload(path, form, { onUpload, onSent } = {}) {
  return new Promise((resolve, reject) => {
    if (!getKey()) return reject(noKey());
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("x-api-key", getKey());
    xhr.upload.addEventListener("progress", (e) => e.lengthComputable && onUpload && onUpload(e.loaded / e.total));
    xhr.upload.addEventListener("load", () => onSent && onSent());
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve({ text: xhr.responseText, header: (n) => xhr.getResponseHeader(n) });
      else reject(errorFromText(xhr.status, xhr.responseText));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "network", "Could not reach the server (the upload failed).")));
    xhr.send(form);
  });
}

/** One sentence a user can act on, for any error thrown by the helpers above (or by the browser). */
export function describeError(err) {
  if (err instanceof ApiError) {
    if (err.status === 0) return err.message;
    return `${err.message} (HTTP ${err.status}${err.code && !err.code.startsWith("http_") ? ", " + err.code : ""})`;
  }
  if (err && err.name === "NotAllowedError") return "Microphone access was denied by the browser.";
  if (err && err.name === "NotFoundError") return "No microphone was found.";
  return (err && err.message) || String(err);
}

/** Shows a message in an element with class `status`: kind is "", "ok", "error" or "busy". */
export function setStatus(node, kind, text) {
  node.className = "status" + (kind ? " " + kind : "");
  node.textContent = "";
  if (kind === "error") node.append(el("strong", { text: "Error: " }), text);
  else node.textContent = text || "";
}

export function statusOf(card) {
  return card.querySelector(".status");
}

/**
 * Runs `work` with the button marked busy (aria-busy, a spinner) and any error shown in the status line.
 * The button stays enabled so keyboard focus stays on it; a second press while busy is ignored.
 */
export async function withBusy(button, statusEl, work) {
  if (button.getAttribute("aria-busy") === "true") return undefined;
  button.setAttribute("aria-busy", "true");
  try {
    return await work();
  } catch (err) {
    if (!(err && err.name === "AbortError")) setStatus(statusEl, "error", describeError(err));
    return undefined;
  } finally {
    button.removeAttribute("aria-busy");
  }
}

/** Submit handler for a form whose submit button shows the busy state while `work` runs. */
export function onSubmit(form, statusEl, work) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    withBusy(form.querySelector("button[type=submit]"), statusEl, work);
  });
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children.filter((c) => c !== undefined && c !== null));
  return node;
}

/** Saves a Blob as a file through a temporary link (the key never goes into a URL). */
export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30_000);
}

export function filenameFrom(header, fallback) {
  const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(header || "");
  return m ? decodeURIComponent(m[1]) : fallback;
}

export function announceMinutesChanged() {
  document.dispatchEvent(new CustomEvent("minutes-changed"));
}
