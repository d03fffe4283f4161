// The live transcript as running text: final words are joined into sentences (a pause no longer starts a new
// line), every sentence starts with a capital, a new paragraph starts only when the speaker changes or after
// a long silence. Final words are also kept as timed segments (a sentence, or ~one subtitle line each) for
// the SRT and JSON downloads; only newly final words reach the screen reader's live region.

const TERMINATOR = /[.!?…。！？]["'”»)]*\s*$/u;
const SEGMENT_MAX_CHARS = 84; // about one subtitle line: long unpunctuated speech still gives readable cues
const PARAGRAPH_GAP_MS = 4000;
const CONTROL = /^<[a-z_]+>$/;

function capitalize(text) {
  return text.replace(/^(\s*["'“«(]?)(\p{Ll})/u, (_, lead, letter) => lead + letter.toUpperCase());
}

export class LiveTranscript {
  /** container: where paragraphs go; announcer: a polite live region that hears final words only. */
  constructor(container, announcer) {
    this.container = container;
    this.announcer = announcer;
    this.partialEl = document.createElement("span");
    this.partialEl.className = "partial";
    this.reset();
  }

  reset() {
    this.segments = []; // { speaker, text, startMs, endMs, paragraph }
    this.open = false; // whether the last segment may still grow
    this.paragraphs = 0;
    this.paragraph = null;
    this.container.replaceChildren();
    this.announcer.textContent = "";
  }

  /** Applies one server message's tokens (Soniox shape); `diarization` shows speaker labels. */
  apply(tokens, diarization) {
    let partial = "";
    let finals = "";
    for (const t of tokens) {
      if (typeof t.text !== "string") continue;
      if (t.text === "<end>") {
        if (t.is_final) this.open = false; // a pause ends the cue, not the line
        continue;
      }
      if (CONTROL.test(t.text)) continue;
      if (t.is_final) finals += this.addFinal(t, diarization);
      else partial += t.text;
    }
    this.showPartial(partial);
    if (finals.trim()) this.announcer.textContent = finals.trim();
  }

  addFinal(t, diarization) {
    const speaker = diarization && t.speaker !== undefined && t.speaker !== null ? `Speaker ${t.speaker}` : null;
    const last = this.segments[this.segments.length - 1];
    if (last && last.speaker !== speaker) this.open = false;
    let text = t.text;
    if (!last || last.speaker !== speaker || TERMINATOR.test(last.text)) text = capitalize(text);
    if (!this.open) {
      const gap = last ? t.start_ms - last.endMs : 0;
      const newParagraph = !last || last.speaker !== speaker || (TERMINATOR.test(last.text) && gap >= PARAGRAPH_GAP_MS);
      if (newParagraph) this.startParagraph(speaker);
      else if (!/^\s/.test(text) && !/^[\p{sc=Han}\p{sc=Hiragana}\p{sc=Katakana}]/u.test(text)) text = " " + text;
      this.segments.push({ speaker, text: "", startMs: t.start_ms, endMs: t.end_ms, paragraph: this.paragraphs });
      this.open = true;
    }
    const seg = this.segments[this.segments.length - 1];
    if (!seg.text && newParagraphStart(this.paragraph)) text = text.trimStart();
    seg.text += text;
    seg.endMs = t.end_ms;
    this.paragraph.insertBefore(document.createTextNode(text), this.partialEl.parentNode === this.paragraph ? this.partialEl : null);
    if (TERMINATOR.test(seg.text) || seg.text.length >= SEGMENT_MAX_CHARS) this.open = false;
    return text;
  }

  startParagraph(speaker) {
    // A paragraph that holds only partial words (opened by showPartial) becomes this one.
    const reuse = this.paragraph && !this.paragraph.querySelector(".spk") && newParagraphStart(this.paragraph, this.partialEl);
    if (!reuse) {
      this.paragraphs += 1;
      this.paragraph = document.createElement("p");
      this.container.append(this.paragraph);
    }
    if (speaker) {
      const label = document.createElement("span");
      label.className = "spk";
      label.textContent = `${speaker}: `;
      this.paragraph.prepend(label);
    }
  }

  showPartial(text) {
    if (!text) {
      this.partialEl.remove();
      return;
    }
    if (!this.paragraph) this.startParagraph(null);
    this.partialEl.textContent = newParagraphStart(this.paragraph, this.partialEl) ? text.trimStart() : text;
    if (this.partialEl.parentNode !== this.paragraph) this.paragraph.append(this.partialEl);
    this.container.scrollTop = this.container.scrollHeight;
  }

  /** What was said, as plain text: paragraphs separated by a blank line. */
  text() {
    const paras = [];
    for (const seg of this.segments) {
      const i = seg.paragraph - 1;
      if (paras[i] === undefined) paras[i] = seg.speaker ? `${seg.speaker}: ` : "";
      paras[i] += seg.text;
    }
    const out = paras.filter((p) => p !== undefined && p.trim()).map((p) => p.trim());
    return out.length ? out.join("\n\n") + "\n" : "";
  }

  hasText() {
    return this.segments.some((s) => s.text.trim());
  }
}

/** Whether nothing but a speaker label precedes `except` in the paragraph (so text there drops its space). */
function newParagraphStart(paragraph, except = null) {
  if (!paragraph) return true;
  for (const node of paragraph.childNodes) {
    if (node === except) continue;
    if (node.nodeType === Node.TEXT_NODE && node.textContent) return false;
  }
  return true;
}
