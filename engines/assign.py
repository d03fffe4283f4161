"""Speaker assignment and transcript entries: pure functions over words and diarization turns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from engines.types import Segment, SpeakerTurn, Word


def assign_speakers(words: Sequence[Word], turns: Sequence[SpeakerTurn]) -> list[Word]:
    """Each word gets the speaker whose turns overlap it most; a word in no turn takes the nearest turn's
    speaker (VAD and ASR disagree by a few hundred ms at the edges)."""
    if not turns:
        return list(words)
    out = []
    for w in words:
        best, best_overlap = None, 0.0
        for t in turns:
            ov = min(w.end, t.end) - max(w.start, t.start)
            if ov > best_overlap:
                best, best_overlap = t.speaker, ov
        if best is None:
            mid = (w.start + w.end) / 2
            best = min(turns, key=lambda t: 0.0 if t.start <= mid <= t.end else min(abs(mid - t.start), abs(mid - t.end))).speaker
        out.append(replace(w, speaker=best))
    return renumber_by_first_appearance(out)


def renumber_by_first_appearance(words: Sequence[Word]) -> list[Word]:
    """Speaker N is the N-th voice heard in the transcript (that is what `speakerNLabel` refers to)."""
    mapping: dict[int, int] = {}
    out = []
    for w in words:
        if w.speaker is not None and w.speaker not in mapping:
            mapping[w.speaker] = len(mapping)
        out.append(replace(w, speaker=mapping.get(w.speaker)) if w.speaker is not None else w)
    return out


@dataclass(frozen=True)
class Entry:
    speaker: int | None
    text: str
    start: float
    end: float
    language: str | None
    words: tuple[Word, ...]


def words_text(words: Sequence[Word]) -> str:
    return "".join(w.text for w in words).strip()


def build_entries(segments: Sequence[Segment], words_by_segment: Sequence[Sequence[Word]] | None = None) -> list[Entry]:
    """One entry per segment, split wherever the speaker changes inside it. `words_by_segment` overrides the
    segments' own words (after term correction or speaker assignment)."""
    entries: list[Entry] = []
    for i, seg in enumerate(segments):
        words = list(words_by_segment[i]) if words_by_segment is not None else list(seg.words)
        if not words:
            if seg.text.strip():
                entries.append(Entry(seg.speaker, seg.text.strip(), seg.start, seg.end, seg.language, ()))
            continue
        run: list[Word] = [words[0]]
        for w in words[1:]:
            if w.speaker != run[-1].speaker:
                entries.append(_entry(run, seg.language))
                run = [w]
            else:
                run.append(w)
        entries.append(_entry(run, seg.language))
    return [e for e in entries if e.text]


def _entry(words: list[Word], language: str | None) -> Entry:
    return Entry(words[0].speaker, words_text(words), words[0].start, words[-1].end, language, tuple(words))


def merge_turns(entries: Sequence[Entry]) -> list[tuple[int | None, str]]:
    """Consecutive entries of one speaker become one turn of the diarized text."""
    turns: list[tuple[int | None, str]] = []
    for e in entries:
        if turns and turns[-1][0] == e.speaker:
            turns[-1] = (e.speaker, turns[-1][1] + " " + e.text)
        else:
            turns.append((e.speaker, e.text))
    return turns
