// The speech-to-text card: POST /stt with a file and the spec's optional fields, then the text and the
// timed (optionally diarized) segments.

import { el, formatMinutes, formatMs, requestJson, setStatus, statusOf, withBusy } from "./api.js";

const card = document.getElementById("card-stt");
const form = document.getElementById("stt-form");
const status = statusOf(card);
const result = document.getElementById("stt-result");

/** The multipart body: only fields the user filled in, named as the spec names them. */
export function sttFormData(f) {
  const data = new FormData();
  const file = f.elements.audio.files[0];
  if (!file) throw new Error("Choose an audio or video file first.");
  data.append("audio", file, file.name);
  const hints = f.elements.languageHints.value.trim();
  if (hints) data.append("languageHints", hints);
  for (const name of ["transcriptionTerms", "translationTerms"]) {
    const v = f.elements[name].value.trim();
    if (v) data.append(name, v); // the server parses JSON or the `a, b; c` / `a=b` shorthand
  }
  if (f.elements.enableSpeakerDiarization.checked) {
    data.append("enableSpeakerDiarization", "true");
    for (const name of ["speaker1Label", "speaker2Label"]) {
      const v = f.elements[name].value.trim();
      if (v) data.append(name, v);
    }
  }
  if (f.elements.translate.checked) data.append("task", "translate");
  return data;
}

function render(data, diarizeRequested) {
  const labels = new Map((data.speakers || []).map((s) => [String(s.id), s.label]));
  const parts = [];
  if (data.language) parts.push(`Language: ${data.language}`);
  if (typeof data.durationMs === "number") parts.push(`Audio: ${(data.durationMs / 1000).toFixed(1)} s`);
  if (typeof data.minutesUsed === "number") parts.push(`Billed: ${formatMinutes(data.minutesUsed)} min`);
  document.getElementById("stt-meta").textContent = parts.join(" · ");
  document.getElementById("stt-text").textContent = data.text || "(no speech found)";
  const segments = Array.isArray(data.transcript) ? data.transcript : [];
  // Without diarization every segment belongs to one speaker: naming it on each line is only noise.
  const diarized = diarizeRequested || labels.size > 1;
  document.getElementById("stt-segments").replaceChildren(
    ...segments.map((s) => {
      const words = s.text ?? s.transcript ?? ""; // `transcript` repeats the speaker label
      const speaker = diarized && s.speaker !== undefined && s.speaker !== null && s.speaker !== ""
        ? el("span", { class: "speaker", text: (labels.get(String(s.speaker)) || (typeof s.speaker === "number" ? `Speaker ${s.speaker}` : s.speaker)) + ":" })
        : null;
      return el(
        "li",
        {},
        el("span", { class: "time", text: `${formatMs(s.startMs)}–${formatMs(s.endMs)}` }),
        el("span", {}, speaker, words),
      );
    }),
  );
  result.hidden = false;
}

async function transcribe(event) {
  event.preventDefault();
  const button = form.querySelector("button[type=submit]");
  await withBusy(button, status, async () => {
    const body = sttFormData(form);
    result.hidden = true;
    setStatus(status, "busy", "Uploading and transcribing…");
    const data = await requestJson("/stt", { method: "POST", form: body });
    render(data, body.has("enableSpeakerDiarization"));
    setStatus(status, "ok", "Transcribed.");
    document.dispatchEvent(new CustomEvent("minutes-changed"));
  });
}

export function initStt() {
  form.addEventListener("submit", transcribe);
  const diarize = document.getElementById("stt-diarize");
  const labels = form.querySelector(".diarize-only");
  diarize.addEventListener("change", () => (labels.hidden = !diarize.checked));
}
