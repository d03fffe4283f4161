// Talking to the server: the stored API key, fetch wrappers that turn every failure into an ApiError with a
// readable message, and the small DOM helpers the cards share for showing status and errors.

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

/** Builds an ApiError from a failed response: the server's `{"error": {code, message}}` when it sent one. */
export async function errorFromResponse(resp) {
  let code = "http_" + resp.status;
  let message = "";
  const text = await resp.text().catch(() => "");
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
    message = text.replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 200);
  }
  return new ApiError(resp.status, code, message || STATUS_WORDS[resp.status] || `HTTP ${resp.status}`);
}

/**
 * fetch() with the API key header (unless `auth: false`), JSON or FormData bodies and the admin CSRF header.
 * Resolves to the Response when it is 2xx, otherwise throws an ApiError.
 */
export async function request(path, { method = "GET", json, form, auth = true, csrf, signal, headers = {} } = {}) {
  const h = new Headers(headers);
  if (auth) {
    const key = getKey();
    if (!key) throw new ApiError(0, "no_key", "Enter your API key at the top of the page first.");
    h.set("x-api-key", key);
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
  if (!resp.ok) throw await errorFromResponse(resp);
  return resp;
}

export async function requestJson(path, options) {
  const resp = await request(path, options);
  return resp.json();
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
export function setStatus(el, kind, text) {
  el.className = "status" + (kind && kind !== "busy" ? " " + kind : "");
  el.textContent = "";
  if (kind === "error") {
    const strong = document.createElement("strong");
    strong.textContent = "Error: ";
    el.append(strong, text);
  } else {
    el.textContent = text || "";
  }
}

export function statusOf(card) {
  return card.querySelector(".status");
}

/** Runs `work` with the button marked busy and any error shown in the card's status line. */
export async function withBusy(button, statusEl, work) {
  button.disabled = true;
  button.classList.add("busy");
  try {
    return await work();
  } catch (err) {
    if (!(err && err.name === "AbortError")) setStatus(statusEl, "error", describeError(err));
    return undefined;
  } finally {
    button.disabled = false;
    button.classList.remove("busy");
  }
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

export function formatMs(ms) {
  if (ms === undefined || ms === null || Number.isNaN(ms)) return "";
  const total = Math.max(0, Math.round(ms / 100)) / 10;
  const m = Math.floor(total / 60);
  const s = (total - m * 60).toFixed(1).padStart(4, "0");
  return `${m}:${s}`;
}

export function formatMinutes(n) {
  if (typeof n !== "number") return "–";
  return n.toLocaleString(undefined, { maximumFractionDigits: 2 });
}

export function formatDate(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
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

export function filenameFrom(resp, fallback) {
  const cd = resp.headers.get("content-disposition") || "";
  const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(cd);
  return m ? decodeURIComponent(m[1]) : fallback;
}
