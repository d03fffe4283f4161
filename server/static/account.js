// What the key in use may do, from GET /account/capabilities: loaded once per key and after every billed
// call, rendered in the account card, and handed to every card so that it offers only what can work.

import { el, getKey, requestJson } from "./api.js";
import { formatMinutes } from "./format.js";

let current = null;
const listeners = [];

/** `fn(caps)` runs whenever the capabilities change; caps is null when no valid key is in use. */
export function onCapabilities(fn) {
  listeners.push(fn);
}

export function capabilities() {
  return current;
}

function publish(caps) {
  current = caps;
  render(caps);
  for (const fn of listeners) fn(caps);
}

/** Fetches and publishes the capabilities; an answer for a key that was replaced meanwhile is dropped. */
export async function loadCapabilities() {
  const key = getKey();
  const caps = await requestJson("/account/capabilities");
  if (key === getKey()) publish(caps);
  return caps;
}

export function clearCapabilities() {
  publish(null);
}

const LANGUAGE_NAMES = {
  en: "English", de: "German", sl: "Slovenian", sr: "Serbian", hr: "Croatian", fr: "French", es: "Spanish",
  it: "Italian", zh: "Chinese", ja: "Japanese", pt: "Portuguese", ru: "Russian", nl: "Dutch", pl: "Polish",
};

export function languageName(code) {
  return LANGUAGE_NAMES[code] || String(code || "").toUpperCase();
}

/** The installed models a request may choose: [{ model, multilingual }], empty when STT is off. */
export function modelChoices(caps) {
  return (caps && caps.stt && caps.stt.choices) || [];
}

/** Fills a model <select>, the account's own model first chosen; keeps the user's earlier choice if still valid. */
export function fillModelSelect(select, caps) {
  const keep = select.value;
  const own = caps && caps.stt ? caps.stt.model : null;
  select.replaceChildren(
    ...modelChoices(caps).map((c) =>
      el("option", { value: c.model, text: `${c.model} — ${c.multilingual ? "multilingual" : "English only"}${c.model === own ? " (default)" : ""}` }),
    ),
  );
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  else if (own && [...select.options].some((o) => o.value === own)) select.value = own;
}

export function isMultilingual(caps, model) {
  const choice = modelChoices(caps).find((c) => c.model === model);
  return Boolean(choice && choice.multilingual);
}

/**
 * Language pairs two-way translation can serve: both directions must be served, Whisper's translate task
 * serves anything into English (with a multilingual model), CTranslate2 models serve their listed pairs.
 */
export function twoWayPairs(ct2Pairs, multilingual) {
  if (!multilingual) return [];
  const have = new Set((ct2Pairs || []).map(([s, t]) => `${s}>${t}`));
  const served = (s, t) => t === "en" || have.has(`${s}>${t}`);
  const langs = [...new Set(["en", ...(ct2Pairs || []).flat()])];
  const out = [];
  langs.forEach((a, i) => {
    for (const b of langs.slice(i + 1)) if (served(a, b) && served(b, a)) out.push([a, b]);
  });
  return out;
}

function pill(ok, yes = "ready", no = "off for this key") {
  return el("span", { class: ok ? "pill ok" : "pill off", text: ok ? yes : no });
}

function engineLine(part) {
  if (!part) return "";
  if (part.error) return part.error;
  return [part.engine, part.model].filter(Boolean).join(" · ");
}

function render(caps) {
  document.getElementById("minutes-remaining").textContent = caps ? formatMinutes(caps.minutesRemaining) : "–";
  const dl = document.getElementById("caps");
  if (!caps) {
    dl.replaceChildren();
    document.getElementById("foot-device").textContent = "";
    return;
  }
  const rows = [];
  const add = (label, ...value) => rows.push(el("dt", { text: label }), el("dd", {}, ...value));
  add("Speech to text", pill(caps.stt?.configured), " ", engineLine(caps.stt));
  add("Text to speech", pill(caps.tts?.configured), " ", engineLine(caps.tts));
  add("Diarization", pill(caps.diarization?.configured, "ready", "unavailable"), " ", engineLine(caps.diarization));
  const pairs = (caps.translation?.pairs || []).map((p) => `${p[0]}→${p[1]}`);
  add("Translation", `any language → English (Whisper)${pairs.length ? "; " + pairs.join(", ") : ""}`);
  add("Role", caps.isAdmin ? el("span", { class: "pill accent", text: "admin" }) : "user");
  dl.replaceChildren(...rows);
  document.getElementById("foot-device").textContent = caps.stt?.device ? `Models run on ${caps.stt.device.toUpperCase()}.` : "";
}
