// The live transcription card: microphone -> AudioWorklet (16 kHz s16le, 100 ms frames) -> WS /stt/realtime.
// The key travels in the first (config) message, never in the URL. Final tokens are appended once and joined
// into sentences (live-text.js); non-final tokens replace the greyed partial text. With a two-way pair chosen
// the server adds translation panes. One button starts and stops, so keyboard focus never gets lost.

import { capabilities, fillModelSelect, isMultilingual, languageName, loadCapabilities, twoWayPairs } from "./account.js";
import { describeError, el, getKey, setStatus, statusOf } from "./api.js";
import { exportButtons } from "./exports.js";
import { formatMinutes, formatSeconds } from "./format.js";
import { LiveTranscript } from "./live-text.js";

const TARGET_RATE = 16000;
const FRAME_SAMPLES = 1600; // 100 ms: small enough for low latency, large enough to keep message rate sane
const FINISH_TIMEOUT_MS = 20000;

const card = document.getElementById("card-realtime");
const controls = card.querySelector(".rt-controls");
const status = statusOf(card);
const toggle = document.getElementById("rt-toggle");
const modelSelect = document.getElementById("rt-model");
const pairSelect = document.getElementById("rt-two-way");
const diarize = document.getElementById("rt-diarize");
const panes = document.getElementById("rt-translation");
const meter = document.querySelector("#rt-level span");
const exportRow = card.querySelector(".export");
const costLine = document.getElementById("rt-cost");
const transcript = new LiveTranscript(document.getElementById("rt-transcript"), document.getElementById("rt-announce"));

/** The first WebSocket message: the session's configuration in the server's field names, with the key. */
export function realtimeConfig({ apiKey, model, pair, diarization }) {
  const [a, b] = pair || [];
  const config = {
    apiKey,
    audio_format: "pcm_s16le",
    sample_rate: TARGET_RATE,
    num_channels: 1,
    enable_endpoint_detection: true,
    enable_speaker_diarization: diarization,
    enable_language_identification: Boolean(a && b),
  };
  if (model) config.model = model;
  if (a && b) {
    config.language_hints = [a, b];
    config.languageA = a;
    config.languageB = b;
  }
  return config;
}

let session = null;

function setRunning(state) {
  // state: "idle" | "starting" | "listening" | "finishing"
  toggle.textContent = state === "idle" ? "Start microphone" : "Stop";
  toggle.classList.toggle("primary", state === "idle");
  toggle.classList.toggle("danger", state !== "idle");
  if (state === "starting" || state === "finishing") toggle.setAttribute("aria-busy", "true");
  else toggle.removeAttribute("aria-busy");
  for (const input of [modelSelect, pairSelect, diarize]) input.disabled = state !== "idle";
}

function applyTranslation(msg) {
  for (const [side, id] of [["languageA", "rt-pane-a"], ["languageB", "rt-pane-b"]]) {
    const data = msg[side];
    if (!data || typeof data !== "object") continue;
    const pane = document.getElementById(id);
    pane.querySelector("h3").textContent = languageName(data.code);
    pane.setAttribute("aria-label", languageName(data.code));
    pane.querySelector(".final").textContent = data.finalText || "";
    pane.querySelector(".partial").textContent = data.nonFinalText ? " " + data.nonFinalText : "";
  }
}

function onMessage(event, s) {
  if (typeof event.data !== "string") return;
  let msg;
  try {
    msg = JSON.parse(event.data);
  } catch {
    return;
  }
  if (msg.error_code !== undefined || msg.error_message) {
    s.failed = true;
    setStatus(status, "error", `${msg.error_message || "The server reported an error"} (code ${msg.error_code})`);
    return;
  }
  if (Array.isArray(msg.tokens)) transcript.apply(msg.tokens, s.diarization);
  if (typeof msg.total_audio_proc_ms === "number") s.audioMs = msg.total_audio_proc_ms;
  // The translation summary may come inside a token message or on its own.
  if (msg.type === "two_way_transcription" || (msg.languageA && typeof msg.languageA === "object")) applyTranslation(msg);
  exportRow.hidden = !transcript.hasText();
  if (msg.finished) {
    s.finished = true;
    s.ws.close(1000);
  }
}

function stopAudio(s) {
  if (s.node) {
    s.node.port.onmessage = null;
    s.node.disconnect();
  }
  if (s.stream) for (const track of s.stream.getTracks()) track.stop();
  if (s.ctx && s.ctx.state !== "closed") s.ctx.close().catch(() => {});
  s.node = s.stream = s.ctx = null;
  meter.style.width = "0";
}

/** After the session: the new balance, and what this session cost by it. */
async function reportCost(s) {
  const before = s.minutesBefore;
  let after;
  try {
    after = (await loadCapabilities()).minutesRemaining; // also updates the account card
  } catch {
    return; // the account card shows why
  }
  if (typeof before !== "number" || typeof after !== "number" || !s.audioMs) return;
  const billed = Math.max(0, before - after);
  costLine.textContent = `Cost: ${formatMinutes(billed)} min for ${formatSeconds(s.audioMs)} of streamed audio (rounded up to the next 0.5 minute).`;
}

function ended(s, event) {
  stopAudio(s);
  clearTimeout(s.finishTimer);
  if (session === s) session = null;
  setRunning("idle");
  if (s.finished && !s.failed) setStatus(status, "ok", transcript.hasText() ? "Finished. Copy or download the transcript below." : "Finished: no speech was heard.");
  else if (!s.failed) {
    const why = event && event.reason ? `: ${event.reason}` : "";
    const code = event ? ` (code ${event.code})` : "";
    setStatus(status, "error", s.opened ? `The connection closed before the transcript was finished${why}${code}.` : `Could not connect to the realtime endpoint${why}${code}.`);
  }
  if (s.opened) reportCost(s);
}

function openSocket(s) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return new Promise((resolve) => {
    const ws = new WebSocket(`${scheme}://${location.host}/stt/realtime`);
    ws.binaryType = "arraybuffer";
    s.ws = ws;
    ws.addEventListener("open", () => {
      s.opened = true;
      resolve(true);
    }, { once: true });
    ws.addEventListener("message", (e) => onMessage(e, s));
    ws.addEventListener("close", (e) => {
      resolve(false);
      ended(s, e);
    });
  });
}

async function start() {
  if (!getKey()) {
    setStatus(status, "error", "Enter your API key at the top of the page first.");
    return;
  }
  const pair = pairSelect.value ? pairSelect.value.split("|") : null;
  const s = { diarization: diarize.checked && !diarize.closest("label").hidden, finished: false, failed: false, opened: false, audioMs: 0 };
  s.minutesBefore = capabilities()?.minutesRemaining;
  session = s;
  transcript.reset();
  costLine.textContent = "";
  exportRow.hidden = true;
  panes.hidden = !pair;
  setRunning("starting");
  try {
    setStatus(status, "busy", "Starting the microphone…");
    // The microphone first: a refused permission should not cost a server session.
    s.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: true },
    });
    s.ctx = new AudioContext();
    await s.ctx.audioWorklet.addModule("/static/pcm-worklet.js");
    setStatus(status, "busy", "Connecting…");
    if (!(await openSocket(s))) return; // `ended` has reported why
    s.ws.send(JSON.stringify(realtimeConfig({ apiKey: getKey(), model: modelSelect.value, pair, diarization: s.diarization })));
    s.node = new AudioWorkletNode(s.ctx, "pcm-s16le", {
      processorOptions: { targetRate: TARGET_RATE, frameSamples: FRAME_SAMPLES },
    });
    s.node.port.onmessage = ({ data }) => {
      if (s.ws.readyState === WebSocket.OPEN) s.ws.send(data.pcm);
      meter.style.width = `${Math.min(100, Math.round(data.level * 400))}%`;
    };
    s.ctx.createMediaStreamSource(s.stream).connect(s.node);
    s.node.connect(s.ctx.destination); // outputs silence; keeps the node in the rendering graph
    if (session === s) {
      setRunning("listening");
      setStatus(status, "busy", "Listening: speak now, press Stop when you are done.");
    }
  } catch (err) {
    s.failed = true;
    setStatus(status, "error", describeError(err));
    if (s.ws && s.ws.readyState <= WebSocket.OPEN) s.ws.close();
    else ended(s);
  }
}

function stop() {
  const s = session;
  if (!s || !s.ws || s.ws.readyState !== WebSocket.OPEN) return;
  setRunning("finishing");
  stopAudio(s);
  setStatus(status, "busy", "Finishing the transcript…");
  s.ws.send(new ArrayBuffer(0)); // an empty frame asks the server to finalize and close
  s.finishTimer = setTimeout(() => {
    if (!s.finished) {
      s.failed = true;
      setStatus(status, "error", "The server did not finish the transcript in time.");
    }
    s.ws.close();
  }, FINISH_TIMEOUT_MS);
}

function syncTwoWay() {
  const caps = capabilities();
  const ct2 = (caps && caps.translation && caps.translation.pairs) || [];
  const multilingual = isMultilingual(caps, modelSelect.value);
  const pairs = twoWayPairs(ct2, multilingual);
  const keep = pairSelect.value;
  pairSelect.replaceChildren(
    el("option", { value: "", text: "Off: transcription only" }),
    ...pairs.map(([a, b]) => el("option", { value: `${a}|${b}`, text: `${languageName(a)} ↔ ${languageName(b)}` })),
  );
  if ([...pairSelect.options].some((o) => o.value === keep)) pairSelect.value = keep;
  pairSelect.closest(".field").hidden = !pairs.length;
  const installed = ct2.length ? ct2.map(([x, y]) => `${x}→${y}`).join(", ") : "none";
  document.getElementById("rt-two-way-note").textContent = !multilingual && modelSelect.value
    ? `Two-way translation needs a multilingual model; ${modelSelect.value} is English-only.`
    : pairs.length ? "" : `Two-way translation is not available here: it needs a translation model for each direction that is not into English (Whisper translates into English itself). Installed: ${installed}.`;
}

export function setCapabilities(caps) {
  const usable = Boolean(caps && caps.stt && caps.stt.choices && caps.stt.choices.length);
  card.querySelector(".notice").hidden = !caps || usable;
  controls.hidden = Boolean(caps) && !usable;
  fillModelSelect(modelSelect, caps);
  diarize.closest("label").hidden = !(caps && caps.diarization && caps.diarization.configured);
  syncTwoWay();
}

export function initRealtime() {
  toggle.addEventListener("click", () => (session ? stop() : start()));
  modelSelect.addEventListener("change", syncTwoWay);
  exportButtons(exportRow, () => ({
    name: "live-transcript",
    text: transcript.text(),
    segments: transcript.segments,
    json: { segments: transcript.segments.map(({ speaker, text, startMs, endMs }) => ({ speaker, text: text.trim(), startMs, endMs })) },
  }));
  window.addEventListener("pagehide", () => session && stop());
}
