// The speech-to-text card: POST /stt with a file and the spec's optional fields (uploaded with progress),
// then the timed (optionally diarized) segments, what it cost, and copy/download of the transcript.

import { fillModelSelect, isMultilingual } from "./account.js";
import { announceMinutesChanged, el, onSubmit, setStatus, statusOf, upload } from "./api.js";
import { exportButtons } from "./exports.js";
import { costText, formatClock, formatSeconds } from "./format.js";
import { registerKind, remember } from "./history.js";
import { ProgressLine } from "./progress.js";

const card = document.getElementById("card-stt");
const form = document.getElementById("stt-form");
const status = statusOf(form);
const result = document.getElementById("stt-result");
const progress = new ProgressLine(form);
let caps = null;
let shown = null; // { name, data } of the transcript on screen

/** The multipart body: only fields the user filled in, named as the spec names them. */
export function sttFormData(f) {
  const data = new FormData();
  const file = f.elements.audio.files[0];
  if (!file) throw new Error("Choose an audio or video file first.");
  data.append("audio", file, file.name);
  if (f.elements.model.value) data.append("model", f.elements.model.value);
  const hints = f.elements.languageHints.value.trim();
  if (hints) data.append("languageHints", hints);
  for (const name of ["transcriptionTerms", "translationTerms"]) {
    const v = f.elements[name].value.trim();
    if (v) data.append(name, v); // the server parses JSON or the `a, b; c` / `a=b` shorthand
  }
  const diarize = f.elements.enableSpeakerDiarization;
  if (diarize.checked && !diarize.closest("label").hidden) {
    data.append("enableSpeakerDiarization", "true");
    for (const name of ["speaker1Label", "speaker2Label"]) {
      const v = f.elements[name].value.trim();
      if (v) data.append(name, v);
    }
  }
  const translate = f.elements.translate;
  if (translate.checked && !translate.closest("label").hidden) data.append("task", "translate");
  return data;
}

/** The response's entries as segments; the speaker only where diarization named one. */
export function segmentsOf(data) {
  return (Array.isArray(data.transcript) ? data.transcript : []).map((s) => ({
    speaker: s.speaker || null,
    text: s.text ?? "",
    startMs: s.startMs,
    endMs: s.endMs,
  }));
}

function render({ name, data, model }) {
  shown = { name, data };
  const segments = segmentsOf(data);
  const parts = [name];
  if (data.language) parts.push(`language ${data.language}`);
  if (typeof data.durationMs === "number") parts.push(formatSeconds(data.durationMs));
  if (model) parts.push(`model ${model}`);
  if (data.task === "translate") parts.push("translated to English");
  document.getElementById("stt-meta").textContent = parts.join(" · ");
  document.getElementById("stt-cost").textContent = costText(data.minutesUsed, data.durationMs);
  const items = segments.map((s) =>
    el("li", {},
      el("span", { class: "time", text: formatClock(s.startMs) }),
      el("span", { class: "words" }, s.speaker ? el("span", { class: "speaker", text: `${s.speaker}: ` }) : null, s.text.trim())),
  );
  if (!items.length) items.push(el("li", { class: "empty", text: "No speech found in this file." }));
  document.getElementById("stt-segments").replaceChildren(...items);
  result.hidden = false;
}

async function transcribe() {
  const body = sttFormData(form);
  const name = body.get("audio").name;
  const model = body.get("model");
  result.hidden = true;
  setStatus(status, "busy", `Transcribing ${name}…`);
  progress.start("Uploading 0%");
  try {
    const resp = await upload("/stt", body, {
      onUpload: (f) => progress.update(f, `Uploading ${Math.floor(f * 100)}%`),
      onSent: () => progress.update(null, "Uploaded 100%, transcribing"),
    });
    const data = JSON.parse(resp.text);
    progress.finish("Uploaded and transcribed");
    render({ name, data, model });
    remember({ kind: "stt", name, durationMs: data.durationMs, minutesUsed: data.minutesUsed, data: { name, data, model } });
    const n = segmentsOf(data).length;
    setStatus(status, "ok", `Transcribed ${name}: ${n} segment${n === 1 ? "" : "s"}.`);
  } catch (err) {
    progress.hide();
    throw err;
  } finally {
    announceMinutesChanged(); // a refusal may have changed nothing, a success always did: refresh either way
  }
}

function syncOptions() {
  const model = form.elements.model.value;
  const multilingual = isMultilingual(caps, model);
  form.querySelector(".translate-option").hidden = !multilingual;
  const diarizable = Boolean(caps && caps.diarization && caps.diarization.configured);
  form.querySelector(".diarize-option").hidden = !diarizable;
  form.querySelector(".diarize-only").hidden = !(diarizable && form.elements.enableSpeakerDiarization.checked);
  form.querySelector(".model-note").textContent = model && !multilingual
    ? `${model} is English-only: it transcribes English speech and cannot translate. Choose a multilingual model for other languages.`
    : "";
}

export function setCapabilities(c) {
  caps = c;
  const usable = Boolean(c && c.stt && c.stt.choices && c.stt.choices.length);
  card.querySelector(".notice").hidden = !c || usable;
  form.hidden = Boolean(c) && !usable;
  fillModelSelect(form.elements.model, c);
  syncOptions();
}

export function initStt() {
  onSubmit(form, status, transcribe);
  form.elements.model.addEventListener("change", syncOptions);
  form.elements.enableSpeakerDiarization.addEventListener("change", syncOptions);
  exportButtons(result.querySelector(".export"), () => ({
    name: shown.name,
    text: shown.data.text || "",
    segments: segmentsOf(shown.data),
    json: shown.data,
  }));
  registerKind("stt", "Transcript", (entry) => {
    render(entry.data);
    setStatus(status, "", `Showing your earlier transcript of ${entry.data.name}.`);
    result.scrollIntoView({ block: "nearest" });
  });
}
