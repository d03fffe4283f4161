// The subtitles card: POST /subtitle returns the file directly; for large files POST /subtitle/jobs starts a
// background job whose status (with its real `progress`) we poll before fetching the file. Either way the
// result plays in a player with the subtitles on, and the cue list seeks.

import { fillModelSelect } from "./account.js";
import { announceMinutesChanged, filenameFrom, onSubmit, request, requestJson, setStatus, statusOf, upload } from "./api.js";
import { costText, formatSeconds, parseCues, toVtt } from "./format.js";
import { registerKind, remember } from "./history.js";
import { SubtitlePlayer } from "./player.js";
import { ProgressLine } from "./progress.js";

const card = document.getElementById("card-subtitle");
const form = document.getElementById("sub-form");
const status = statusOf(form);
const progress = new ProgressLine(form);
const result = document.getElementById("sub-result");
const download = document.getElementById("sub-download");
const player = new SubtitlePlayer(document.getElementById("sub-player"), document.getElementById("sub-cues"));

const POLL_MS = 500;
let downloadUrl = null;

function formData() {
  const data = new FormData();
  const file = form.elements.audio.files[0];
  if (!file) throw new Error("Choose an audio or video file first.");
  data.append("audio", file, file.name);
  for (const name of ["model", "maxCharsPerLine", "maxLines", "format", "languageHints"]) {
    const v = form.elements[name].value.trim();
    if (v) data.append(name, v);
  }
  return data;
}

function jobError(job) {
  const e = job.error;
  if (!e) return "The subtitle job failed.";
  return typeof e === "string" ? e : e.message || e.code || JSON.stringify(e);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const JOB_WORDS = { queued: "Waiting for a worker", processing: "Transcribing" };

/** Polls the job until it completes (returns its final status) or fails (throws with the job's reason). */
async function waitForJob(job) {
  const statusUrl = job.statusUrl || `/subtitle/jobs/${encodeURIComponent(job.id)}`;
  for (;;) {
    const s = await requestJson(statusUrl);
    if (s.status === "completed") return s;
    if (s.status === "failed") throw new Error(`The subtitle job failed: ${jobError(s)}`);
    const p = typeof s.progress === "number" ? s.progress : 0;
    progress.update(p, `${JOB_WORDS[s.status] || s.status} ${Math.round(p * 100)}%`);
    await sleep(POLL_MS);
  }
}

/** entry: { name, text, filename, minutesUsed, durationMs, lang }; file: the upload, when it is at hand. */
function show(entry, file) {
  if (downloadUrl) URL.revokeObjectURL(downloadUrl);
  downloadUrl = URL.createObjectURL(new Blob([entry.text], { type: "text/plain" }));
  download.href = downloadUrl;
  download.download = entry.filename;
  download.textContent = `Download ${entry.filename}`;
  const cues = parseCues(entry.text);
  const parts = [entry.name, `${cues.length} cue${cues.length === 1 ? "" : "s"}`];
  if (typeof entry.durationMs === "number") parts.push(formatSeconds(entry.durationMs));
  document.getElementById("sub-meta").textContent = parts.join(" · ");
  document.getElementById("sub-cost").textContent = costText(entry.minutesUsed, entry.durationMs);
  player.show(file, toVtt(entry.text), cues, entry.lang);
  result.hidden = false;
  return cues.length;
}

const number = (v) => (v === null || v === undefined || v === "" ? undefined : Number(v));

async function viaJob(body, fmt) {
  const sent = await upload("/subtitle/jobs", body, {
    onUpload: (f) => progress.update(f, `Uploading ${Math.floor(f * 100)}%`),
    onSent: () => progress.update(0, "Uploaded 100%, queued"),
  });
  const job = JSON.parse(sent.text);
  setStatus(status, "busy", "The job runs on the server: it goes on if you leave this page.");
  const done = await waitForJob(job);
  const resp = await request(done.downloadUrl || `/subtitle/jobs/${encodeURIComponent(job.id)}/file`);
  const filename = filenameFrom(resp.headers.get("content-disposition"), `subtitles.${fmt}`);
  return { text: await resp.text(), filename, minutesUsed: done.minutesUsed, durationMs: done.durationMs };
}

async function direct(body, fmt) {
  const resp = await upload("/subtitle", body, {
    onUpload: (f) => progress.update(f, `Uploading ${Math.floor(f * 100)}%`),
    onSent: () => progress.update(null, "Uploaded 100%, transcribing"),
  });
  return {
    text: resp.text,
    filename: filenameFrom(resp.header("content-disposition"), `subtitles.${fmt}`),
    minutesUsed: number(resp.header("x-minutes-used")),
    durationMs: number(resp.header("x-duration-ms")),
  };
}

async function makeSubtitles() {
  const body = formData();
  const file = body.get("audio");
  const fmt = body.get("format") || "srt";
  const lang = (body.get("languageHints") || "").split(/[,;\s]+/)[0] || undefined;
  result.hidden = true;
  setStatus(status, "busy", `Making subtitles for ${file.name}…`);
  progress.start("Uploading 0%");
  try {
    const made = document.getElementById("sub-async").checked ? await viaJob(body, fmt) : await direct(body, fmt);
    progress.finish("Subtitles made");
    const entry = { name: file.name, lang, ...made };
    const cues = show(entry, file);
    remember({ kind: "subtitle", name: file.name, durationMs: made.durationMs, minutesUsed: made.minutesUsed, data: entry });
    setStatus(status, "ok", `Subtitles ready: ${cues} cue${cues === 1 ? "" : "s"}. Choose a cue to play from there.`);
  } catch (err) {
    progress.hide();
    throw err;
  } finally {
    announceMinutesChanged();
  }
}

export function setCapabilities(c) {
  const usable = Boolean(c && c.stt && c.stt.choices && c.stt.choices.length);
  card.querySelector(".notice").hidden = !c || usable;
  form.hidden = Boolean(c) && !usable;
  fillModelSelect(form.elements.model, c);
}

export function initSubtitle() {
  onSubmit(form, status, makeSubtitles);
  registerKind("subtitle", "Subtitles", (entry) => {
    show(entry.data, null);
    setStatus(status, "", `Showing your earlier subtitles for ${entry.data.name}.`);
    result.scrollIntoView({ block: "nearest" });
  });
}
