// The text-to-speech card: POST /tts streams MP3 sentence by sentence; we play it while it arrives through
// MediaSource where the browser can decode 'audio/mpeg' that way, and from a Blob after the end otherwise.
// Below it, the history from GET /speeches with play and download buttons.

import { el, formatDate, request, requestJson, saveBlob, setStatus, statusOf, withBusy } from "./api.js";

const card = document.getElementById("card-tts");
const form = document.getElementById("tts-form");
const audio = document.getElementById("tts-audio");
const list = document.getElementById("speeches");
const speed = document.getElementById("tts-speed");
const speedOut = document.getElementById("tts-speed-out");
const status = statusOf(card);

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

async function speak(event) {
  event.preventDefault();
  const button = form.querySelector("button[type=submit]");
  await withBusy(button, status, async () => {
    const body = { text: form.elements.text.value.trim() };
    if (!body.text) throw new Error("Type some text to speak.");
    const voice = form.elements.voice.value;
    if (voice) body.voice = voice;
    const sp = parseFloat(speed.value);
    if (sp !== 1) body.speed = sp;
    setStatus(status, "busy", "Synthesizing…");
    const resp = await request("/tts", { method: "POST", json: body });
    const id = resp.headers.get("X-Speech-Id");
    setStatus(status, "busy", "Playing as it streams…");
    const blob = await playStreaming(resp);
    setStatus(status, "ok", `Done: ${(blob.size / 1024).toFixed(0)} KB of MP3${id ? ` (speech ${id})` : ""}.`);
    document.dispatchEvent(new CustomEvent("minutes-changed"));
    await loadHistory();
  });
}

async function fetchSpeechBlob(speech) {
  const path = speech.audioPath || `/speeches/${encodeURIComponent(speech.id)}?download=1`;
  const resp = await request(path);
  return resp.blob();
}

function historyItem(speech) {
  const play = el("button", { type: "button", class: "btn small", text: "Play" });
  const save = el("button", { type: "button", class: "btn small ghost", text: "Download" });
  play.addEventListener("click", () =>
    withBusy(play, status, async () => {
      setSource(URL.createObjectURL(await fetchSpeechBlob(speech)));
      await audio.play().catch(() => {});
    }),
  );
  save.addEventListener("click", () =>
    withBusy(save, status, async () => saveBlob(await fetchSpeechBlob(speech), `${speech.id}.mp3`)),
  );
  const secs = typeof speech.durationMs === "number" ? ` · ${(speech.durationMs / 1000).toFixed(1)} s` : "";
  return el(
    "li",
    { "data-id": speech.id },
    el("span", { class: "txt", title: speech.text || "", text: speech.text || speech.id }),
    el("span", { class: "when", text: formatDate(speech.createdAt) + secs }),
    play,
    save,
  );
}

export async function loadHistory() {
  const data = await requestJson("/speeches?limit=50");
  const speeches = Array.isArray(data.speeches) ? data.speeches : [];
  list.replaceChildren(...speeches.map(historyItem));
  if (!speeches.length) list.append(el("li", { class: "empty", text: "No speeches yet." }));
}

/** Fills the voice list from the capabilities (the account default stays first). */
export function setVoices(voices, current) {
  const select = form.elements.voice;
  const keep = select.value;
  select.replaceChildren(el("option", { value: "", text: current ? `Default (${current})` : "Default" }));
  for (const v of voices || []) select.append(el("option", { value: v, text: v }));
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

export function initTts() {
  form.addEventListener("submit", speak);
  speed.addEventListener("input", () => (speedOut.textContent = `${parseFloat(speed.value).toFixed(1)}×`));
  const refresh = document.getElementById("speeches-refresh");
  refresh.addEventListener("click", () => withBusy(refresh, status, loadHistory));
  audio.addEventListener("error", () => {
    if (audio.error && audio.src) setStatus(status, "error", `The browser could not play the audio (${audio.error.message || "code " + audio.error.code}).`);
  });
}
