// The live transcription card: microphone -> AudioWorklet (16 kHz s16le, 100 ms frames) -> WS /stt/realtime.
// Final tokens are appended once; non-final tokens are re-sent with every update, so they replace the greyed
// partial text. With language A and B both set the server adds two-way translation panes.

import { describeError, getKey, setStatus, statusOf } from "./api.js";

export const LANGUAGES = [
  ["", "None"], ["en", "English"], ["de", "German"], ["sl", "Slovenian"], ["sr", "Serbian"], ["hr", "Croatian"],
  ["fr", "French"], ["es", "Spanish"], ["it", "Italian"], ["zh", "Chinese"],
];
const LANGUAGE_NAMES = Object.fromEntries(LANGUAGES);
const TARGET_RATE = 16000;
const FRAME_SAMPLES = 1600; // 100 ms: small enough for low latency, large enough to keep message rate sane
const FINISH_TIMEOUT_MS = 20000;

const card = document.getElementById("card-realtime");
const status = statusOf(card);
const startBtn = document.getElementById("rt-start");
const stopBtn = document.getElementById("rt-stop");
const langA = document.getElementById("rt-lang-a");
const langB = document.getElementById("rt-lang-b");
const diarize = document.getElementById("rt-diarize");
const live = document.getElementById("rt-transcript");
const finalEl = live.querySelector(".final");
const partialEl = live.querySelector(".partial");
const panes = document.getElementById("rt-translation");
const meter = document.querySelector("#rt-level span");

/** The first WebSocket message: the session's configuration, in the server's field names. */
export function realtimeConfig(a, b, diarization) {
  const config = {
    audio_format: "pcm_s16le",
    sample_rate: TARGET_RATE,
    num_channels: 1,
    language_hints: [...new Set([a, b].filter(Boolean))],
    enable_endpoint_detection: true,
    enable_speaker_diarization: diarization,
    enable_language_identification: Boolean(a && b),
  };
  if (a && b) {
    config.languageA = a;
    config.languageB = b;
  }
  return config;
}

let session = null;

function resetOutput() {
  finalEl.replaceChildren();
  partialEl.textContent = "";
  for (const id of ["rt-pane-a", "rt-pane-b"]) {
    const pane = document.getElementById(id);
    pane.querySelector(".final").textContent = "";
    pane.querySelector(".partial").textContent = "";
  }
}

function atLineStart() {
  const text = finalEl.textContent;
  return text === "" || text.endsWith("\n");
}

function appendFinal(token, s) {
  if (s.diarization && token.speaker !== undefined && token.speaker !== null && token.speaker !== s.lastSpeaker) {
    if (!atLineStart()) finalEl.append("\n");
    const span = document.createElement("span");
    span.className = "spk";
    span.textContent = `Speaker ${token.speaker}: `;
    finalEl.append(span);
    s.lastSpeaker = token.speaker;
  }
  const text = atLineStart() || finalEl.lastChild?.className === "spk" ? token.text.trimStart() : token.text;
  if (text) finalEl.append(text);
}

function applyTokens(tokens, s) {
  let partial = "";
  for (const t of tokens) {
    if (typeof t.text !== "string") continue;
    if (t.text === "<end>") {
      // An endpoint: the speaker paused, so the next final words start a new line.
      if (t.is_final && !atLineStart()) finalEl.append("\n");
      continue;
    }
    if (/^<[a-z_]+>$/.test(t.text)) continue; // other control markers are not words
    if (t.is_final) appendFinal(t, s);
    else partial += t.text;
  }
  partialEl.textContent = atLineStart() ? partial.trimStart() : partial;
  live.scrollTop = live.scrollHeight;
}

function applyTranslation(msg) {
  for (const [side, id] of [["languageA", "rt-pane-a"], ["languageB", "rt-pane-b"]]) {
    const data = msg[side];
    if (!data || typeof data !== "object") continue;
    const pane = document.getElementById(id);
    pane.querySelector("h3").textContent = LANGUAGE_NAMES[data.code] || data.code || side;
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
  if (Array.isArray(msg.tokens)) applyTokens(msg.tokens, s);
  // The translation summary may come inside a token message or on its own.
  if (msg.type === "two_way_transcription" || (msg.languageA && typeof msg.languageA === "object")) applyTranslation(msg);
  if (msg.finished) {
    s.finished = true;
    if (!s.failed) setStatus(status, "ok", "Finished.");
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

function ended(s, event) {
  stopAudio(s);
  clearTimeout(s.finishTimer);
  if (session === s) session = null;
  startBtn.disabled = false;
  stopBtn.disabled = true;
  langA.disabled = langB.disabled = diarize.disabled = false;
  if (!s.finished && !s.failed) {
    const why = event && event.reason ? `: ${event.reason}` : "";
    const code = event ? ` (code ${event.code})` : "";
    setStatus(status, "error", s.opened ? `The connection closed before the transcript was finished${why}${code}.` : `Could not connect to the realtime endpoint${why}${code}.`);
  }
}

function openSocket(s) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/stt/realtime?apiKey=${encodeURIComponent(getKey())}`;
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
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
  if (session) return;
  if (!getKey()) {
    setStatus(status, "error", "Enter your API key at the top of the page first.");
    return;
  }
  const a = langA.value;
  const b = langB.value;
  const s = { diarization: diarize.checked, lastSpeaker: undefined, finished: false, failed: false, opened: false };
  session = s;
  resetOutput();
  panes.hidden = !(a && b);
  startBtn.disabled = true;
  langA.disabled = langB.disabled = diarize.disabled = true;
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
    s.ws.send(JSON.stringify(realtimeConfig(a, b, s.diarization)));
    s.node = new AudioWorkletNode(s.ctx, "pcm-s16le", {
      processorOptions: { targetRate: TARGET_RATE, frameSamples: FRAME_SAMPLES },
    });
    s.node.port.onmessage = ({ data }) => {
      if (s.ws.readyState === WebSocket.OPEN) s.ws.send(data.pcm);
      meter.style.width = `${Math.min(100, Math.round(data.level * 400))}%`;
    };
    s.ctx.createMediaStreamSource(s.stream).connect(s.node);
    s.node.connect(s.ctx.destination); // outputs silence; keeps the node in the rendering graph
    stopBtn.disabled = false;
    setStatus(status, "busy", "Listening… speak now.");
  } catch (err) {
    s.failed = true;
    setStatus(status, "error", describeError(err));
    if (s.ws && s.ws.readyState <= WebSocket.OPEN) s.ws.close();
    else ended(s);
  }
}

function stop() {
  const s = session;
  if (!s) return;
  stopBtn.disabled = true;
  stopAudio(s);
  if (s.ws && s.ws.readyState === WebSocket.OPEN) {
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
}

export function initRealtime() {
  for (const select of [langA, langB]) {
    for (const [code, name] of LANGUAGES) {
      const option = document.createElement("option");
      option.value = code;
      option.textContent = name;
      select.append(option);
    }
  }
  startBtn.addEventListener("click", start);
  stopBtn.addEventListener("click", stop);
  window.addEventListener("pagehide", () => session && stop());
}
