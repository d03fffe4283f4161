"""The words of a realtime stream: timed by absolute samples, kept pending across decodes, made tokens."""

from __future__ import annotations

from dataclasses import dataclass

from engines.local_agreement import normalize_word
from engines.types import SAMPLE_RATE, StreamToken

PROMPT_CHARS = 200  # committed text passed as prompt (Whisper's prompt holds ~224 tokens)


@dataclass(frozen=True)
class TimedWord:
    text: str
    start: int  # samples from stream start
    end: int
    probability: float


def keep_pending_words(pending: list[TimedWord], fresh: list[TimedWord]) -> list[TimedWord]:
    """The unconfirmed words after a decode: the fresh hypothesis, unless it only lost words.

    A fresh decode hears all the audio the pending words came from and more, yet Whisper (small models
    most of all, on a short window after a prompt) sometimes skips words: "can do for your country."
    comes back as "country.". When the fresh words are the pending ones with some missing (then
    possibly new words after them), the pending words stay: the next decode may confirm them, and an
    utterance that ends first still has them. A fresh word that contradicts them means Whisper heard
    something else, and the fresh hypothesis wins as LocalAgreement has it.
    """
    if len(fresh) >= len(pending):
        return fresh
    keys = [normalize_word(w.text) for w in pending]
    matched, i = 0, 0
    for w in fresh:  # the longest start of `fresh` found in order inside `pending`
        key = normalize_word(w.text)
        while i < len(keys) and keys[i] != key:
            i += 1
        if i == len(keys):
            break
        matched, i = matched + 1, i + 1
    rest = fresh[matched:]
    if (fresh and not matched) or (rest and rest[0].start < pending[-1].end):
        return fresh
    return pending + rest


def ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE


def to_token(w: TimedWord, final: bool, language: str | None, speaker: int | None) -> StreamToken:
    return StreamToken(
        text=w.text,
        start_ms=ms(w.start),
        end_ms=ms(w.end),
        confidence=round(float(w.probability), 4),
        is_final=final,
        language=language,
        speaker=speaker,
    )


def clip_prompt(text: str) -> str:
    """The last PROMPT_CHARS of committed text, cut at a word boundary."""
    if len(text) <= PROMPT_CHARS:
        return text
    text = text[-PROMPT_CHARS:]
    space = text.find(" ")
    return text[space:] if space >= 0 else text


def clamp_words(words: list[TimedWord], floor: int, end: int) -> list[TimedWord]:
    """Word times (samples) made monotonic and kept between `floor` (the committed end) and `end` (the audio
    heard): a decoder's timestamps may overlap committed words or run past the audio."""
    out: list[TimedWord] = []
    for w in words:
        start = min(max(w.start, floor), end)
        stop = min(max(w.end, start), end)
        out.append(TimedWord(w.text, start, stop, w.probability))
        floor = stop
    return out
