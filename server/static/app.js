// Entry point: the API key bar, the Demo/Admin tabs (from the URL hash) and the account card; each other card
// lives in its own module.

import { checkSession, initAdmin } from "./admin.js";
import { el, formatMinutes, getKey, requestJson, setKey, setStatus, statusOf, withBusy } from "./api.js";
import { initRealtime } from "./realtime.js";
import { initStt } from "./stt.js";
import { initSubtitle } from "./subtitle.js";
import { initTts, loadHistory, setVoices } from "./tts.js";

const accountCard = document.getElementById("card-account");
const keyInput = document.getElementById("api-key");
const keyHint = document.getElementById("key-hint");

function pill(ok, yes = "ready", no = "not configured") {
  return el("span", { class: ok ? "pill ok" : "pill off", text: ok ? yes : no });
}

function engineLine(part) {
  if (!part) return "";
  if (part.error) return part.error;
  return [part.engine, part.model].filter(Boolean).join(" · ") + (part.device ? ` on ${part.device}` : "");
}

function renderCapabilities(caps) {
  document.getElementById("minutes-remaining").textContent = formatMinutes(caps.minutesRemaining);
  const dl = document.getElementById("caps");
  const rows = [];
  const add = (label, ...value) => rows.push(el("dt", { text: label }), el("dd", {}, ...value));
  add("Speech to text", pill(caps.stt?.configured), " ", engineLine(caps.stt));
  add("Text to speech", pill(caps.tts?.configured), " ", engineLine(caps.tts));
  add("Diarization", pill(caps.diarization?.configured, "ready", "unavailable"), " ", engineLine(caps.diarization));
  const pairs = (caps.translation?.pairs || []).map((p) => `${p[0]}→${p[1]}`);
  add("Translation", pairs.length ? pairs.join(", ") : "any language → English (Whisper)");
  if (caps.stt?.models?.length) add("Whisper models", caps.stt.models.join(", "));
  add("Role", caps.isAdmin ? el("span", { class: "pill accent", text: "admin" }) : "user");
  dl.replaceChildren(...rows);
  setVoices(caps.tts?.voices, caps.tts?.model);
  document.getElementById("foot-device").textContent = caps.stt?.device ? `Running on ${caps.stt.device}.` : "";
}

async function loadCapabilities() {
  renderCapabilities(await requestJson("/account/capabilities"));
}

/** Refreshes what depends on the key; errors land in the account card (bad key) or the TTS card. */
async function refreshAll() {
  const status = statusOf(accountCard);
  if (!getKey()) {
    keyHint.hidden = false;
    document.getElementById("minutes-remaining").textContent = "–";
    document.getElementById("caps").replaceChildren();
    setStatus(status, "", "No API key yet.");
    return;
  }
  keyHint.hidden = true;
  const ok = await withBusy(document.getElementById("caps-refresh"), status, async () => {
    await loadCapabilities();
    setStatus(status, "", "");
    return true;
  });
  if (ok) await withBusy(document.getElementById("speeches-refresh"), statusOf(document.getElementById("card-tts")), loadHistory);
}

function initKeyBar() {
  keyInput.value = getKey();
  document.getElementById("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setKey(keyInput.value.trim());
    refreshAll();
  });
  document.getElementById("key-clear").addEventListener("click", () => {
    keyInput.value = "";
    setKey("");
    document.getElementById("speeches").replaceChildren();
    refreshAll();
  });
}

function showView() {
  const view = location.hash === "#admin" ? "admin" : "demo";
  for (const v of ["demo", "admin"]) {
    document.getElementById(`view-${v}`).hidden = v !== view;
    const tab = document.getElementById(`tab-${v}`);
    tab.classList.toggle("active", v === view);
    if (v === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  if (view === "admin") checkSession();
}

initKeyBar();
initTts();
initStt();
initSubtitle();
initRealtime();
initAdmin();
document.getElementById("caps-refresh").addEventListener("click", refreshAll);
// Minutes change after every billed call: keep the account card current without a manual refresh.
document.addEventListener("minutes-changed", () => getKey() && loadCapabilities().catch(() => {}));
window.addEventListener("hashchange", showView);
showView();
refreshAll();
