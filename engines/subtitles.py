"""Subtitle cues from word timestamps, and their SubRip / WebVTT text.

Pure functions: `build_cues` groups timed words into cues (breaking at sentence ends, pauses, speaker
changes, the size limit and the duration limit), wraps each cue into balanced lines, then fixes the timing
so cues never overlap, last at least `min_duration` where the gap allows and start strictly later than the
previous one. Times are handled in whole milliseconds, the resolution both formats print, so every
invariant holds for the written file too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engines.types import Word

DEFAULT_MAX_CHARS, MIN_MAX_CHARS, MAX_MAX_CHARS = 70, 30, 120
DEFAULT_MAX_LINES, MIN_MAX_LINES, MAX_MAX_LINES = 2, 1, 4
_SENTENCE_END = (".", "?", "!", "\u2026", "\u3002", "\uff1f", "\uff01")
_SOFT_BREAK = (",", ";", ":", "\u3001", "\uff0c", "\uff1b")


@dataclass(frozen=True)
class Cue:
    index: int  # 1-based position in the list build_cues returned
    start: float  # seconds
    end: float
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def clamp_format_options(max_chars: Any, max_lines: Any) -> tuple[int, int]:
    """The spec's maxCharsPerLine (30..120, default 70) and maxLines (1..4, default 2).

    None or "" means the default; integers (or their text) outside the range are clamped into it, the
    choice this project made over rejecting them; anything that is not an integer raises ValueError.
    """

    def as_int(value: Any, name: str, default: int, lo: int, hi: int) -> int:
        if value is None or (isinstance(value, str) and not value.strip()):
            return default
        if isinstance(value, bool):
            raise ValueError(f"{name} must be an integer")
        if isinstance(value, int):
            n = value
        elif isinstance(value, float) and value.is_integer():
            n = int(value)
        elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            n = int(value.strip())
        else:
            raise ValueError(f"{name} must be an integer, got {value!r}"[:120])
        return min(hi, max(lo, n))

    return (
        as_int(max_chars, "maxCharsPerLine", DEFAULT_MAX_CHARS, MIN_MAX_CHARS, MAX_MAX_CHARS),
        as_int(max_lines, "maxLines", DEFAULT_MAX_LINES, MIN_MAX_LINES, MAX_MAX_LINES),
    )


# ---------------------------------------------------------------------- line wrapping


def _is_cjk(ch: str) -> bool:
    return (
        "\u3040" <= ch <= "\u30ff"
        or "\u3400" <= ch <= "\u9fff"
        or "\uff00" <= ch <= "\uffef"
        or ch in "\u3001\u3002"
    )


def _joins_without_space(left: str, right: str) -> bool:
    """Chinese/Japanese tokens follow each other directly; everything else is space separated."""
    return bool(left) and bool(right) and _is_cjk(left[-1]) and _is_cjk(right[0])


def _join(tokens: Sequence[str]) -> str:
    out = ""
    for t in tokens:
        out += t if not out or _joins_without_space(out, t) else " " + t
    return out


def _widths(tokens: Sequence[str], prefix: str):
    """width(i, j): characters of the line made of tokens[i:j] (the prefix counts on the first line)."""
    cum_len = [0]
    cum_gap = [0, 0]  # cum_gap[k]: spaces between tokens[0..k-1]
    for k, t in enumerate(tokens):
        cum_len.append(cum_len[-1] + len(t))
        if k:
            cum_gap.append(cum_gap[-1] + (not _joins_without_space(tokens[k - 1], t)))

    def width(i: int, j: int) -> int:
        return cum_len[j] - cum_len[i] + cum_gap[j] - cum_gap[i + 1] + (len(prefix) if i == 0 else 0)

    return width


def fits_lines(tokens: Sequence[str], max_chars: int, max_lines: int, prefix: str = "") -> bool:
    """Whether the tokens fit in `max_lines` lines: greedy filling uses the fewest lines possible."""
    if not tokens:
        return True
    width = _widths(tokens, prefix)
    lines, i = 1, 0
    for j in range(1, len(tokens) + 1):
        if width(i, j) > max_chars:
            if j - 1 == i:
                return False  # a single token wider than a line
            lines, i = lines + 1, j - 1
            if width(i, j) > max_chars or lines > max_lines:
                return False
    return True


def wrap_lines(
    tokens: Sequence[str], max_chars: int, max_lines: int, prefix: str = ""
) -> tuple[str, ...] | None:
    """Balanced wrapping at token boundaries, or None when the tokens need more than `max_lines` lines.

    Uses the fewest lines that fit, then among those the break points that minimize the longest line (and
    then the sum of squared widths), so a two-line cue reads as two similar halves rather than a full line
    and a stub. `prefix` (a speaker label) starts the first line and counts toward its length.
    """
    n = len(tokens)
    if n == 0 or not fits_lines(tokens, max_chars, max_lines, prefix):
        return None
    width = _widths(tokens, prefix)
    inf = (10**9, 10**9)
    # best[k][j]: (longest line, sum of squares) laying tokens[:j] on k lines.
    best: list[list[tuple[int, int]]] = [[inf] * (n + 1) for _ in range(max_lines + 1)]
    back: list[list[int]] = [[0] * (n + 1) for _ in range(max_lines + 1)]
    best[0][0] = (0, 0)
    for k in range(1, max_lines + 1):
        for j in range(1, n + 1):
            for i in range(j - 1, -1, -1):
                w = width(i, j)
                if w > max_chars:
                    break  # only wider for smaller i
                if best[k - 1][i] != inf:
                    cand = (max(best[k - 1][i][0], w), best[k - 1][i][1] + w * w)
                    if cand < best[k][j]:
                        best[k][j], back[k][j] = cand, i
        if best[k][n] != inf:
            lines: list[str] = []
            j = n
            for kk in range(k, 0, -1):
                i = back[kk][j]
                lines.append((prefix if i == 0 else "") + _join(tokens[i:j]))
                j = i
            return tuple(reversed(lines))
    return None  # unreachable: fits_lines said some layout exists


def _hard_split(word: Word, limit: int) -> list[Word]:
    """A word longer than a line becomes line-sized pieces sharing its time span in proportion."""
    text = word.text.strip()
    if len(text) <= limit:
        return [word]
    pieces = [text[i : i + limit] for i in range(0, len(text), limit)]
    step = (word.end - word.start) / len(pieces)
    return [
        Word(p, word.start + k * step, word.start + (k + 1) * step, word.probability, word.speaker)
        for k, p in enumerate(pieces)
    ]


# ---------------------------------------------------------------------- grouping


def _label_prefix(speaker: int | None, labels: Mapping[int, str] | None, max_chars: int) -> str:
    if labels is None or speaker is None:
        return ""
    label = " ".join(str(labels.get(speaker, f"Speaker {speaker + 1}")).split())
    room = max_chars // 2 - 2  # a long name must still leave room for words on the line
    if len(label) > room:
        label = label[: room - 1].rstrip() + "\u2026"
    return f"{label}: "


def _clean(words: Sequence[Word]) -> list[Word]:
    """Drops empty words and makes times monotonic (models occasionally emit a word out of order)."""
    out: list[Word] = []
    t = 0.0
    for w in words:
        if not w.text.strip():
            continue
        start = max(float(w.start), t)
        end = max(float(w.end), start)
        out.append(Word(" ".join(w.text.split()), start, end, w.probability, w.speaker))
        t = start
    return out


def _groups(
    words: list[Word], fits: Callable[[list[Word]], bool], max_duration: float, pause_split: float
) -> list[list[Word]]:
    groups: list[list[Word]] = []
    cur: list[Word] = []
    for w in words:
        if cur:
            prev = cur[-1]
            hard = (
                prev.text.endswith(_SENTENCE_END)
                or w.start - prev.end >= pause_split
                or w.speaker != prev.speaker
                or w.end - cur[0].start > max_duration
            )
            if hard:
                groups.append(cur)
                cur = []
            elif not fits(cur + [w]):
                # Prefer to cut after a comma in the second half over cutting mid-clause.
                cut = next(
                    (
                        k + 1
                        for k in range(len(cur) - 1, len(cur) // 2 - 1, -1)
                        if cur[k].text.endswith(_SOFT_BREAK)
                    ),
                    len(cur),
                )
                groups.append(cur[:cut])
                cur = cur[cut:]
                if cur and not fits(cur + [w]):
                    groups.append(cur)
                    cur = []
        cur.append(w)
    if cur:
        groups.append(cur)
    return groups


def build_cues(
    words: Sequence[Word],
    *,
    max_chars_per_line: int = DEFAULT_MAX_CHARS,
    max_lines: int = DEFAULT_MAX_LINES,
    min_duration: float = 1.0,
    max_duration: float = 7.0,
    pause_split: float = 0.6,
    speaker_labels: Mapping[int, str] | None = None,
) -> list[Cue]:
    """Cues from timed words; `speaker_labels` (speaker index -> name) turns on "Name: " prefixes."""
    if max_chars_per_line < 1 or max_lines < 1:
        raise ValueError("max_chars_per_line and max_lines must be positive")
    labelled = speaker_labels is not None

    def prefix(speaker: int | None) -> str:
        return _label_prefix(speaker, speaker_labels, max_chars_per_line)

    cleaned: list[Word] = []
    for w in _clean(words):
        cleaned += _hard_split(w, max_chars_per_line - len(prefix(w.speaker)))

    # Whether a group could carry a label is only known once the previous group is fixed, so size every
    # group as if it did: a label-less cue is then at most one label shorter than it could have been.
    def fits(group: list[Word]) -> bool:
        return fits_lines([w.text for w in group], max_chars_per_line, max_lines, prefix(group[0].speaker))

    groups = _groups(cleaned, fits, max_duration, pause_split)

    raw: list[tuple[int, int, tuple[str, ...]]] = []
    last_speaker: int | None = None
    for g in groups:
        speaker = g[0].speaker
        label = prefix(speaker) if labelled and speaker is not None and speaker != last_speaker else ""
        last_speaker = speaker if speaker is not None else last_speaker
        lines = wrap_lines([w.text for w in g], max_chars_per_line, max_lines, label)
        assert lines is not None  # every group passed `fits` with a label at least as long
        raw.append((round(g[0].start * 1000), round(g[-1].end * 1000), lines))
    return _timed(raw, round(min_duration * 1000), round(max_duration * 1000))


def _timed(raw: list[tuple[int, int, tuple[str, ...]]], min_ms: int, max_ms: int) -> list[Cue]:
    """Millisecond timing: start_i > start_(i-1), start_i < end_i <= start_(i+1), min/max duration."""
    starts: list[int] = []
    for s, _, _ in raw:
        starts.append(max(s, starts[-1] + 1) if starts else max(s, 0))
    cues: list[Cue] = []
    for i, (_, e, lines) in enumerate(raw):
        s = starts[i]
        end = min(max(e, s + min_ms), s + max(max_ms, min_ms, 1))
        if i + 1 < len(raw):
            end = min(end, starts[i + 1])
        end = max(end, s + 1)  # starts are strictly increasing, so this never overlaps the next cue
        cues.append(Cue(i + 1, s / 1000, end / 1000, lines))
    return cues


# ---------------------------------------------------------------------- file formats


def _stamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(cues: Sequence[Cue]) -> str:
    """SubRip: 1-based indices by position, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, blank-line separated."""
    blocks = [
        f"{n}\n{_stamp(c.start, ',')} --> {_stamp(c.end, ',')}\n" + "\n".join(c.lines)
        for n, c in enumerate(cues, 1)
    ]
    return "\n\n".join(blocks) + "\n" if blocks else ""


def to_vtt(cues: Sequence[Cue]) -> str:
    """WebVTT: the header, then cues with `HH:MM:SS.mmm` times; cue text escapes &, < and >."""

    def esc(line: str) -> str:
        return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    blocks = [
        f"{_stamp(c.start, '.')} --> {_stamp(c.end, '.')}\n" + "\n".join(esc(x) for x in c.lines)
        for c in cues
    ]
    return "WEBVTT\n\n" + "".join(b + "\n\n" for b in blocks)
