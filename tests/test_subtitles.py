"""Subtitle cues: invariants checked over many seeded random word sequences, wrapping, SRT/VTT output."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import pytest

from engines.subtitles import Cue, build_cues, clamp_format_options, to_srt, to_vtt, wrap_lines
from engines.types import Word

VOCAB = (
    "a I we it the and of to in is was for that with speech model audio time line word subtitle "
    "telescope observatory international Ljubljana translation demonstration"
).split()
LABELS = {0: "Ana", 1: "Bob"}  # speaker 2 has no label: it is shown as "Speaker 3"


def random_words(rng: random.Random, n: int) -> list[Word]:
    words: list[Word] = []
    t = rng.uniform(0, 3)
    speaker = 0
    for _ in range(n):
        r = rng.random()
        if r < 0.02:
            text = "x" * rng.randint(121, 300)  # longer than any line: must be hard-split
        else:
            text = rng.choice(VOCAB) + rng.choice([""] * 14 + [",", ".", "?", "!"])
        # Mostly fluent speech, sometimes pauses right at the thresholds, sometimes overlapping words (-0.1).
        gap = rng.choice([0.0] * 6 + [0.05, 0.1, 0.2, 0.3, 0.39, 0.4, 0.59, 0.6, 1.5, 4.0, -0.1])
        start = max(0.0, t + gap)
        dur = rng.choice(
            [0.0, 0.05, 0.2, 0.2, 0.3, 0.3, 0.4, 0.8, 9.0]
        )  # zero-length and absurdly long words happen
        if rng.random() < 0.08:
            speaker = rng.randrange(3)
        words.append(Word(" " + text, round(start, 3), round(start + dur, 3), speaker=speaker))
        t = start + dur
    return words


@dataclass
class Params:
    max_chars: int
    max_lines: int
    labels: dict[int, str] | None


def label_for(speaker: int) -> str:
    return LABELS.get(speaker, f"Speaker {speaker + 1}") + ": "


def check_invariants(
    words: list[Word], cues: list[Cue], p: Params, min_d: float, max_d: float, pause: float
) -> None:
    assert cues, "words in, no cues out"
    # ---- shape
    for c in cues:
        assert 1 <= len(c.lines) <= p.max_lines
        for line in c.lines:
            assert line.strip() and line == line.strip()
            assert len(line) <= p.max_chars, (line, p)
    assert [c.index for c in cues] == list(range(1, len(cues) + 1))
    # ---- timing, in the milliseconds the files print
    ms = [(round(c.start * 1000), round(c.end * 1000)) for c in cues]
    for i, (s, e) in enumerate(ms):
        assert s < e
        assert e - s <= round(max_d * 1000)
        if i + 1 < len(ms):
            nxt = ms[i + 1][0]
            assert s < nxt and e <= nxt
            if e - s < round(min_d * 1000):
                assert e == nxt, "a short cue must be cut by the next one, not by choice"
        else:
            assert e - s >= round(min_d * 1000)
    # ---- text: every character of every word, in order, with labels exactly where the speaker changes
    chars: list[int] = []  # word index of each non-space character of the input
    for k, w in enumerate(words):
        chars += [k] * len("".join(w.text.split()))
    pos = 0
    prev_speaker = None
    for c in cues:
        text = "\n".join(c.lines)
        first_word = words[chars[pos]]
        if p.labels is not None:
            lab = label_for(first_word.speaker)  # type: ignore[arg-type]
            if first_word.speaker != prev_speaker:
                assert text.startswith(lab), (text, first_word)
                text = text[len(lab) :]
            else:
                assert not text.startswith(lab)
        prev_speaker = first_word.speaker
        flat = "".join(text.split())
        expected = "".join("".join(w.text.split()) for w in words)[pos : pos + len(flat)]
        assert flat == expected
        span = sorted(set(chars[pos : pos + len(flat)]))
        pos += len(flat)
        inside = words[span[0] : span[-1] + 1]
        assert len({w.speaker for w in inside}) == 1, "a cue mixes speakers"
        for a, b in zip(inside, inside[1:], strict=False):
            assert not a.text.endswith((".", "?", "!")), "a cue runs across a sentence end"
            assert b.start - a.end < pause, "a cue runs across a pause"
        # the cue shows while its words are spoken (allowing the 1 ms nudges that keep starts increasing)
        assert c.start >= min(w.start for w in inside) - 0.0015
    assert pos == len(chars)


@pytest.mark.parametrize("seed", range(60))
def test_random_sequences_keep_every_invariant(seed: int) -> None:
    rng = random.Random(seed)
    words = random_words(rng, rng.randint(1, 160))
    p = Params(rng.randint(30, 120), rng.randint(1, 4), LABELS if seed % 2 else None)
    min_d, max_d, pause = rng.choice([0.5, 1.0, 2.0]), rng.choice([3.0, 7.0]), rng.choice([0.4, 0.6, 1.0])
    cues = build_cues(
        words,
        max_chars_per_line=p.max_chars,
        max_lines=p.max_lines,
        min_duration=min_d,
        max_duration=max_d,
        pause_split=pause,
        speaker_labels=p.labels,
    )
    check_invariants(words, cues, p, min_d, max_d, pause)
    assert parse_srt(to_srt(cues)) == [
        (c.index, round(c.start * 1000), round(c.end * 1000), c.lines) for c in cues
    ]


def test_no_words_no_cues() -> None:
    assert build_cues([]) == []
    assert build_cues([Word(" ", 0.0, 1.0)]) == []
    assert to_srt([]) == ""
    assert to_vtt([]) == "WEBVTT\n\n"


def timed(text: str, start: float = 0.0, step: float = 0.3) -> list[Word]:
    return [Word(" " + w, start + i * step, start + i * step + 0.25) for i, w in enumerate(text.split())]


def test_sentences_and_pauses_split_cues() -> None:
    words = timed("Hello there. How are you?") + timed("Fine thanks", start=5.0)
    cues = build_cues(words)
    assert [c.lines for c in cues] == [("Hello there.",), ("How are you?",), ("Fine thanks",)]
    # "Hello there." (0-0.55 s) may only grow until "How" starts; "Fine thanks" (5-5.55 s) gets its full second.
    assert (cues[0].start, cues[0].end) == (0.0, 0.6)
    assert (cues[2].start, cues[2].end) == (5.0, 6.0)


def test_min_duration_never_runs_into_next_cue() -> None:
    words = [Word(" Yes.", 1.0, 1.2), Word(" No.", 1.5, 1.7)]
    a, b = build_cues(words, min_duration=1.0)
    assert (a.start, a.end) == (1.0, 1.5) and (b.start, b.end) == (1.5, 2.5)


def test_lines_are_balanced() -> None:
    text = "one two three four five six seven eight nine ten eleven twelve thirteen"
    assert len(text) == 71
    assert wrap_lines(text.split(), 71, 2) == (text,)  # the fewest lines first
    lines = wrap_lines(text.split(), 40, 2)
    assert lines == ("one two three four five six seven", "eight nine ten eleven twelve thirteen")
    assert wrap_lines(text.split(), 30, 2) is None  # 71 characters cannot fit on 2 x 30
    assert wrap_lines(["Hello"], 30, 1, prefix="Ana: ") == ("Ana: Hello",)


def test_cue_is_split_when_lines_overflow_preferring_a_comma() -> None:
    text = (
        "We measured the speed of the model on several machines, and the results were better "
        "than we expected for such a small network"
    )
    cues = build_cues(timed(text, step=0.1), max_chars_per_line=30, max_lines=2, max_duration=60)
    assert len(cues) > 1
    assert cues[0].lines[-1].endswith("machines,")
    assert all(len(line) <= 30 for c in cues for line in c.lines)


def test_speaker_labels_prefix_only_on_change() -> None:
    words = [
        Word(" Hi", 0.0, 0.3, speaker=0),
        Word(" there.", 0.3, 0.6, speaker=0),
        Word(" Again.", 0.7, 1.0, speaker=0),
        Word(" Hello", 1.1, 1.4, speaker=1),
        Word(" back", 1.4, 1.6, speaker=1),
    ]
    cues = build_cues(words, speaker_labels={0: "John"})
    assert [c.lines for c in cues] == [("John: Hi there.",), ("Again.",), ("Speaker 2: Hello back",)]
    # Without labels a speaker change still ends the cue, but no names are shown.
    assert [c.lines for c in build_cues(words)] == [("Hi there.",), ("Again.",), ("Hello back",)]


def test_long_label_is_shortened_and_counted() -> None:
    words = timed("word " * 30)
    cues = build_cues(
        [Word(w.text, w.start, w.end, speaker=0) for w in words],
        max_chars_per_line=30,
        speaker_labels={0: "Doctor Bartholomew Maximilian Smith"},
    )
    assert cues[0].lines[0].startswith("Doctor Barth\u2026: word")
    assert all(len(line) <= 30 for c in cues for line in c.lines)


def test_chinese_words_join_without_spaces() -> None:
    words = [Word(t, i * 0.3, i * 0.3 + 0.3) for i, t in enumerate(["你好", "，", "世界", "。"])]
    assert build_cues(words)[0].lines == ("你好，世界。",)


def test_clamp_format_options() -> None:
    assert clamp_format_options(None, None) == (70, 2)
    assert clamp_format_options("", "") == (70, 2)
    assert clamp_format_options("42", "3") == (42, 3)
    assert clamp_format_options(10, 0) == (30, 1)
    assert clamp_format_options(500, 9) == (120, 4)
    assert clamp_format_options(" 80 ", 2.0) == (80, 2)
    for bad in ("abc", "70.5", 70.5, True, [70]):
        with pytest.raises(ValueError):
            clamp_format_options(bad, None)
    with pytest.raises(ValueError, match="maxLines"):
        clamp_format_options(None, "two")


# ---------------------------------------------------------------------- file formats

SRT_BLOCK = re.compile(
    r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)\n((?:.+\n?)+)"
)


def parse_srt(text: str) -> list[tuple[int, int, int, tuple[str, ...]]]:
    """A strict little SRT reader: every block must match exactly, blocks separated by one blank line."""
    if not text:
        return []
    assert text.endswith("\n") and not text.endswith("\n\n")
    out = []
    for block in text[:-1].split("\n\n"):
        m = SRT_BLOCK.fullmatch(block)
        assert m, f"malformed SRT block: {block!r}"
        g = [int(x) for x in m.groups()[:9]]
        start = ((g[1] * 60 + g[2]) * 60 + g[3]) * 1000 + g[4]
        end = ((g[5] * 60 + g[6]) * 60 + g[7]) * 1000 + g[8]
        out.append((g[0], start, end, tuple(m.group(10).split("\n"))))
    return out


def test_srt_round_trip_and_format() -> None:
    cues = [Cue(1, 0.0, 1.5, ("Hello",)), Cue(2, 3661.0016, 3663.25, ("two", "lines"))]
    srt = to_srt(cues)
    assert srt == "1\n00:00:00,000 --> 00:00:01,500\nHello\n\n2\n01:01:01,002 --> 01:01:03,250\ntwo\nlines\n"
    assert parse_srt(srt) == [(1, 0, 1500, ("Hello",)), (2, 3661002, 3663250, ("two", "lines"))]
    # Indices follow list position, so a filtered list still numbers 1, 2, ...
    assert parse_srt(to_srt(cues[1:]))[0][0] == 1


def test_vtt_format() -> None:
    vtt = to_vtt([Cue(1, 0.25, 2.0, ("Tom & Jerry <3",)), Cue(2, 2.0, 3.5, ("a", "b"))])
    assert vtt == (
        "WEBVTT\n\n00:00:00.250 --> 00:00:02.000\nTom &amp; Jerry &lt;3\n\n"
        "00:00:02.000 --> 00:00:03.500\na\nb\n\n"
    )
