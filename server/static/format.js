// Pure formatting: numbers and times as people read them, what a result cost, and transcripts as SRT,
// WebVTT and cue lists. A "segment" is { speaker, text, startMs, endMs } (speaker null without diarization).

export function formatMinutes(n) {
  if (typeof n !== "number") return "–";
  return n.toLocaleString("en", { maximumFractionDigits: 2 });
}

/** 83_400 ms -> "1:23.4" (short clips read best with tenths). */
export function formatClock(ms) {
  if (ms === undefined || ms === null || Number.isNaN(ms)) return "";
  const total = Math.max(0, Math.round(ms / 100)) / 10;
  const m = Math.floor(total / 60);
  const s = (total - m * 60).toFixed(1).padStart(4, "0");
  return `${m}:${s}`;
}

export function formatSeconds(ms) {
  return `${(ms / 1000).toFixed(1)} s`;
}

export function formatDate(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

/** What a request cost and why, in one sentence; "" when the server did not say. */
export function costText(minutesUsed, durationMs, what = "audio") {
  if (typeof minutesUsed !== "number") return "";
  const length = typeof durationMs === "number" ? ` for ${formatSeconds(durationMs)} of ${what}` : "";
  const why = minutesUsed > 0 ? " (billed per request, rounded up to the next 0.5 minute)" : "";
  return `Cost: ${formatMinutes(minutesUsed)} min${length}${why}.`;
}

function stamp(ms, sep) {
  const t = Math.max(0, Math.round(ms));
  const h = Math.floor(t / 3_600_000);
  const m = Math.floor((t % 3_600_000) / 60_000);
  const s = Math.floor((t % 60_000) / 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(h)}:${pad(m)}:${pad(s)}${sep}${pad(t % 1000, 3)}`;
}

function cueText(seg) {
  return seg.speaker ? `${seg.speaker}: ${seg.text.trim()}` : seg.text.trim();
}

export function segmentsToSrt(segments) {
  return segments
    .filter((s) => s.text.trim())
    .map((s, i) => `${i + 1}\n${stamp(s.startMs, ",")} --> ${stamp(s.endMs, ",")}\n${cueText(s)}\n`)
    .join("\n");
}

export function segmentsToVtt(segments) {
  const cues = segments.filter((s) => s.text.trim()).map((s) => `${stamp(s.startMs, ".")} --> ${stamp(s.endMs, ".")}\n${cueText(s)}\n`);
  return "WEBVTT\n\n" + cues.join("\n");
}

function parseStamp(text) {
  const m = /(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})/.exec(text);
  if (!m) return NaN;
  return ((Number(m[1] || 0) * 60 + Number(m[2])) * 60 + Number(m[3])) * 1000 + Number(m[4].padEnd(3, "0"));
}

/** SRT or WebVTT text -> [{ startMs, endMs, text }]; blocks without a timing line are skipped. */
export function parseCues(text) {
  const cues = [];
  for (const block of String(text).replace(/\r/g, "").split(/\n{2,}/)) {
    const lines = block.split("\n");
    const at = lines.findIndex((l) => l.includes("-->"));
    if (at < 0) continue;
    const [a, b] = lines[at].split("-->");
    const startMs = parseStamp(a);
    const endMs = parseStamp(b);
    if (Number.isNaN(startMs) || Number.isNaN(endMs)) continue;
    cues.push({ startMs, endMs, text: lines.slice(at + 1).join("\n").trim() });
  }
  return cues;
}

/** WebVTT for a <track>, from SRT or WebVTT text. */
export function toVtt(text) {
  if (/^\uFEFF?WEBVTT/.test(text)) return text;
  return segmentsToVtt(parseCues(text).map((c) => ({ speaker: null, ...c })));
}
