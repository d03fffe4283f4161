// The subtitles card: POST /subtitle returns the file directly; for large files POST /subtitle/jobs starts a
// background job whose status we poll (with a progress bar) before fetching the file.

import { filenameFrom, request, requestJson, setStatus, statusOf, withBusy } from "./api.js";

const card = document.getElementById("card-subtitle");
const form = document.getElementById("sub-form");
const status = statusOf(card);
const progress = document.getElementById("sub-progress");
const result = document.getElementById("sub-result");
const download = document.getElementById("sub-download");

const POLL_MS = 1000;
let downloadUrl = null;

function formData() {
  const data = new FormData();
  const file = form.elements.audio.files[0];
  if (!file) throw new Error("Choose an audio or video file first.");
  data.append("audio", file, file.name);
  for (const name of ["maxCharsPerLine", "maxLines", "format", "languageHints"]) {
    const v = form.elements[name].value.trim();
    if (v) data.append(name, v);
  }
  return data;
}

function jobError(job) {
  const e = job.error;
  if (!e) return "The subtitle job failed.";
  if (typeof e === "string") return e;
  return e.message || e.code || JSON.stringify(e);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls the job until it completes (returns the final status) or fails (throws with the job's error). */
async function waitForJob(job) {
  const statusUrl = job.statusUrl || `/subtitle/jobs/${encodeURIComponent(job.id)}`;
  for (;;) {
    const s = await requestJson(statusUrl);
    const p = typeof s.progress === "number" ? s.progress : 0;
    progress.value = p;
    setStatus(status, "busy", `Job ${s.id || job.id}: ${s.status}${s.status === "processing" ? ` (${Math.round(p * 100)}%)` : ""}…`);
    if (s.status === "completed") return s;
    if (s.status === "failed") throw new Error(jobError(s));
    await sleep(POLL_MS);
  }
}

function show(text, filename, meta) {
  if (downloadUrl) URL.revokeObjectURL(downloadUrl);
  downloadUrl = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
  download.href = downloadUrl;
  download.download = filename;
  document.getElementById("sub-preview").textContent = text;
  document.getElementById("sub-meta").textContent = meta;
  result.hidden = false;
}

async function makeSubtitles(event) {
  event.preventDefault();
  const button = form.querySelector("button[type=submit]");
  const fmt = form.elements.format.value || "srt";
  await withBusy(button, status, async () => {
    const body = formData();
    result.hidden = true;
    progress.value = 0;
    try {
      if (document.getElementById("sub-async").checked) {
        progress.hidden = false;
        setStatus(status, "busy", "Uploading…");
        const job = await requestJson("/subtitle/jobs", { method: "POST", form: body });
        const done = await waitForJob(job);
        const resp = await request(done.downloadUrl || `/subtitle/jobs/${encodeURIComponent(job.id)}/file`);
        const secs = typeof done.durationMs === "number" ? `${(done.durationMs / 1000).toFixed(1)} s of audio` : "";
        show(await resp.text(), filenameFrom(resp, `subtitles.${fmt}`), secs);
      } else {
        setStatus(status, "busy", "Uploading and transcribing…");
        const resp = await request("/subtitle", { method: "POST", form: body });
        show(await resp.text(), filenameFrom(resp, `subtitles.${fmt}`), "");
      }
      const cues = (document.getElementById("sub-preview").textContent.match(/-->/g) || []).length;
      setStatus(status, "ok", `Subtitles ready: ${cues} cue${cues === 1 ? "" : "s"}.`);
      document.dispatchEvent(new CustomEvent("minutes-changed"));
    } finally {
      progress.hidden = true;
    }
  });
}

export function initSubtitle() {
  form.addEventListener("submit", makeSubtitles);
}
