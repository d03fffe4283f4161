// The usage ledger of one account, in words: grants read as grants (+minutes), charges as charges (−minutes),
// refunds and reservations in progress as what they are. (The ledger stores an admin grant as kind "credit"
// with negative minutes, since it is the opposite of a charge; shown raw that read as a negative amount.)

import { el } from "./api.js";
import { formatDate, formatMinutes } from "./format.js";

const KIND_WORDS = {
  stt: "Speech to text", tts: "Text to speech", subtitle: "Subtitles", subtitle_job: "Subtitle job", realtime: "Live transcription",
};

const STATUS_WORDS = { settled: "charged", reserved: "in progress", refunded: "refunded", credit: "added by an admin" };

function signed(n) {
  if (n === 0) return "0";
  return `${n > 0 ? "+" : "−"}${formatMinutes(Math.abs(n))}`;
}

/** One ledger row as { entry, status, change, note }: change is the effect on the balance, signed. */
export function describeUsage(u) {
  if (u.kind === "credit") {
    const grant = -u.minutes; // stored negative: a grant is the opposite of a charge
    return {
      entry: grant >= 0 ? "Grant" : "Deduction",
      status: grant >= 0 ? "added by an admin" : "removed by an admin",
      change: signed(grant),
      note: u.note || "",
    };
  }
  const change = u.status === "refunded" ? "0" : signed(-u.minutes);
  const note = u.status === "refunded" ? [`${formatMinutes(u.minutes)} min given back`, u.note].filter(Boolean).join(": ") : u.note || u.reference || "";
  return { entry: KIND_WORDS[u.kind] || u.kind, status: STATUS_WORDS[u.status] || u.status, change, note };
}

export function usageRows(usage) {
  const rows = usage.map((u) => {
    const d = describeUsage(u);
    const audio = u.audioSeconds ? `${u.audioSeconds.toFixed(1)} s` : "";
    return el("tr", { class: u.kind === "credit" ? "grant" : "" },
      el("td", { "data-label": "When", text: formatDate(u.createdAt) }),
      el("td", { "data-label": "Entry", text: d.entry }),
      el("td", { "data-label": "Status", text: d.status }),
      el("td", { "data-label": "Minutes", class: "num", text: d.change }),
      el("td", { "data-label": "Audio", class: "num", text: audio }),
      el("td", { "data-label": "Note", text: d.note }));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "6", class: "sub", text: "No usage yet." })));
  return rows;
}
