// The text-to-speech card: POST /tts streams MP3 sentence by sentence; we play it while it arrives through
// MediaSource where the browser can decode 'audio/mpeg' that way, and from a Blob after the end otherwise.
// Below it, the history from GET /speeches with play and download buttons.

import { announceMinutesChanged, el, onSubmit, request, requestJson, saveBlob, setStatus, statusOf, withBusy } from "./api.js";
import { costText, formatDate, formatSeconds } from "./format.js";

const card = document.getElementById("card-tts");
const form = document.getElementById("tts-form");
const audio = document.getElementById("tts-audio");
const list = document.getElementById("speeches");
const speed = document.getElementById("tts-speed");
const speedOut = document.getElementById("tts-speed-out");
const status = statusOf(form);

let currentUrl = null;

function setSource(url) {
  if (currentUrl) URL.revokeObjectURL(currentUrl);
  currentUrl = url;
  audio.src = url;
}

function once(target, event) {
  return new Promise((resolve) => target.addEventListener(event, resolve, { once: true }));
}

async function appendChunk(buffer, chunk) {
  if (buffer.updating) await once(buffer, "updateend");
  buffer.appendBuffer(chunk);
  await once(buffer, "updateend");
}

/** Plays a streamed MP3 response as it arrives; resolves when all bytes are in, with them as a Blob. */
export async function playStreaming(response) {
  const canStream = "MediaSource" in window && MediaSource.isTypeSupported("audio/mpeg") && response.body;
  if (!canStream) {
    const blob = await response.blob();
    setSource(URL.createObjectURL(blob));
    await audio.play().catch(() => {}); // autoplay refusals leave the controls for the user
    return blob;
  }
  const source = new MediaSource();
  setSource(URL.createObjectURL(source));
  await once(source, "sourceopen");
  const buffer = source.addSourceBuffer("audio/mpeg");
  const reader = response.body.getReader();
  const chunks = [];
  let started = false;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    await appendChunk(buffer, value);
    if (!started) {
      started = true;
      audio.play().catch(() => {});
    }
  }
  if (buffer.updating) await once(buffer, "updateend");
  if (source.readyState === "open") source.endOfStream();
  return new Blob(chunks, { type: "audio/mpeg" });
}

async function speak() {
  const body = { text: form.elements.text.value.trim() };
  if (!body.text) throw new Error("Type some text to speak.");
  const voice = form.elements.voice.value;
  if (voice) body.voice = voice;
  const sp = parseFloat(speed.value);
  if (sp !== 1) body.speed = sp;
  setStatus(status, "busy", "Synthesizing…");
  try {
    const resp = await request("/tts", { method: "POST", json: body });
    const id = resp.headers.get("X-Speech-Id");
    setStatus(status, "busy", "Playing while the rest is synthesized…");
    await playStreaming(resp);
    const speeches = await loadHistory();
    const made = speeches.find((s) => s.id === id);
    setStatus(status, "ok", made ? `Spoken. ${costText(made.minutesUsed, made.durationMs, "speech")}` : "Spoken.");
  } finally {
    announceMinutesChanged();
  }
}

async function fetchSpeechBlob(speech) {
  const path = speech.audioPath || `/speeches/${encodeURIComponent(speech.id)}?download=1`;
  const resp = await request(path);
  return resp.blob();
}

function shortText(speech) {
  const t = (speech.text || speech.id).trim();
  return t.length > 40 ? t.slice(0, 40) + "…" : t;
}

function historyItem(speech) {
  const what = `“${shortText(speech)}”`;
  const play = el("button", { type: "button", class: "btn small", text: "Play", "aria-label": `Play ${what}` });
  const save = el("button", { type: "button", class: "btn small ghost", text: "Download", "aria-label": `Download ${what} as MP3` });
  play.addEventListener("click", () =>
    withBusy(play, status, async () => {
      setSource(URL.createObjectURL(await fetchSpeechBlob(speech)));
      await audio.play().catch(() => {});
    }),
  );
  save.addEventListener("click", () =>
    withBusy(save, status, async () => saveBlob(await fetchSpeechBlob(speech), `${speech.id}.mp3`)),
  );
  const details = [formatDate(speech.createdAt)];
  if (typeof speech.durationMs === "number") details.push(formatSeconds(speech.durationMs));
  if (typeof speech.minutesUsed === "number") details.push(`${speech.minutesUsed} min`);
  return el(
    "li",
    { "data-id": speech.id },
    el("span", { class: "txt", title: speech.text || "", text: speech.text || speech.id }),
    el("span", { class: "when", text: details.join(" · ") }),
    el("span", { class: "buttons" }, play, save),
  );
}

/** Reloads the list; resolves to the speeches shown (newest first). */
export async function loadHistory() {
  const data = await requestJson("/speeches?limit=50");
  const speeches = Array.isArray(data.speeches) ? data.speeches : [];
  list.replaceChildren(...speeches.map(historyItem));
  if (!speeches.length) list.append(el("li", { class: "empty", text: "No speeches yet." }));
  return speeches;
}

export function clearHistory() {
  list.replaceChildren();
}

/** Offers the installed voices when the key may use text-to-speech (the account's voice first). */
export function setCapabilities(caps) {
  const usable = Boolean(caps && caps.tts && caps.tts.configured);
  card.querySelector(".notice").hidden = !caps || usable;
  form.hidden = Boolean(caps) && !usable;
  const select = form.elements.voice;
  const keep = select.value;
  const current = caps && caps.tts ? caps.tts.model : null;
  select.replaceChildren(el("option", { value: "", text: current ? `${current} (default)` : "Default" }));
  for (const v of (caps && caps.tts && caps.tts.voices) || []) if (v !== current) select.append(el("option", { value: v, text: v }));
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

export function initTts() {
  onSubmit(form, status, speak);
  speed.addEventListener("input", () => (speedOut.textContent = `${parseFloat(speed.value).toFixed(1)}×`));
  const refresh = document.getElementById("speeches-refresh");
  refresh.addEventListener("click", () => withBusy(refresh, status, loadHistory));
  audio.addEventListener("error", () => {
    if (audio.error && audio.src) setStatus(status, "error", `The browser could not play the audio (${audio.error.message || "code " + audio.error.code}).`);
  });
}
