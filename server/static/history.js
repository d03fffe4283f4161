// "Your results": the transcripts and subtitles made with the key in use, kept in this browser's localStorage
// (the server keeps no STT history to list). Per key, so two keys in one browser do not see each other's
// results; the last MAX_ENTRIES, each at most MAX_BYTES, so storage stays small.

import { el, getKey } from "./api.js";
import { formatDate, formatMinutes, formatSeconds } from "./format.js";

const MAX_ENTRIES = 20;
const MAX_BYTES = 400_000;
const list = document.getElementById("results-history");
list.tabIndex = -1;
const kinds = {}; // kind -> { label, show(entry) }

/** FNV-1a: a namespace for the storage key, not a secret (the key itself sits in the same storage). */
function fingerprint(key) {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193) >>> 0;
  return h.toString(16);
}

function storageKey() {
  const key = getKey();
  return key ? `speech7.results.${fingerprint(key)}` : null;
}

function load() {
  const k = storageKey();
  if (!k) return [];
  try {
    const entries = JSON.parse(localStorage.getItem(k) || "[]");
    return Array.isArray(entries) ? entries : [];
  } catch {
    return [];
  }
}

function save(entries) {
  const k = storageKey();
  if (!k) return;
  try {
    localStorage.setItem(k, JSON.stringify(entries));
  } catch {
    /* storage full or disabled: the history is a convenience, the result is still on screen */
  }
}

/** `show(entry)` re-displays a stored result in its card. */
export function registerKind(kind, label, show) {
  kinds[kind] = { label, show };
}

/** Stores a result: { kind, name, durationMs, minutesUsed, data } (data as the card needs it to re-show). */
export function remember(entry) {
  const item = { id: `${Date.now()}-${Math.random().toString(16).slice(2, 8)}`, createdAt: new Date().toISOString(), ...entry };
  if (JSON.stringify(item).length > MAX_BYTES) return; // too big to keep: shown now, not remembered
  save([item, ...load()].slice(0, MAX_ENTRIES));
  renderHistory();
}

export function forgetAll() {
  const k = storageKey();
  if (k) localStorage.removeItem(k);
}

function item(entry) {
  const kind = kinds[entry.kind] || { label: entry.kind, show: () => {} };
  const details = [formatDate(entry.createdAt)];
  if (typeof entry.durationMs === "number") details.push(formatSeconds(entry.durationMs));
  if (typeof entry.minutesUsed === "number") details.push(`${formatMinutes(entry.minutesUsed)} min`);
  const show = el("button", { type: "button", class: "btn small", text: "Show", "aria-label": `Show ${kind.label.toLowerCase()} of ${entry.name}` });
  show.addEventListener("click", () => kind.show(entry));
  const remove = el("button", { type: "button", class: "btn small ghost", text: "Remove", "aria-label": `Remove ${entry.name} from your results` });
  remove.addEventListener("click", () => {
    save(load().filter((e) => e.id !== entry.id));
    renderHistory();
    list.focus(); // the pressed button is gone: keep focus in the list rather than losing it to the page

  });
  return el(
    "li", {},
    el("span", { class: "txt" }, el("span", { class: "pill", text: kind.label }), " ", el("span", { text: entry.name })),
    el("span", { class: "when", text: details.join(" · ") }),
    el("span", { class: "buttons" }, show, remove),
  );
}

export function renderHistory() {
  const entries = load();
  list.replaceChildren(...entries.map(item));
  if (!entries.length) list.append(el("li", { class: "empty", text: getKey() ? "Nothing yet: transcripts and subtitles you make appear here." : "Enter an API key to see your results." }));
}
