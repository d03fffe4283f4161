"""Whisper's text-side decisions, pure functions: which language to decode with, where a chunk's words
split into segments, and when a window counts as silence. Kept apart from the engine so they are tested
without a model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engines.types import EngineError, Word

NO_SPEECH_THRESHOLD = 0.6  # Whisper's own rule for dropping a window that holds no speech
LOGPROB_THRESHOLD = -1.0


def normalize_language(code: str) -> str:
    """'en-US' / 'EN_us' / ' en ' -> 'en' (Whisper knows ISO 639-1 codes, plus a few 3-letter ones)."""
    return code.strip().lower().replace("_", "-").split("-")[0]


# A language the hints do not name wins only when the model is sure of it and prefers it this many times
# over the best hinted language: English speech with the hint "sl" stays English (p 0.95 vs 0.002), Slovenian
# speech that the model half mistakes for Croatian (hr 0.5, sl 0.3) stays Slovenian.
CLEARLY_OTHER_RATIO = 4.0
CLEARLY_OTHER_MIN_P = 0.5
# Whisper's language identification on a second or two of speech is unreliable (a German "Der Prophet" can
# read as French at p 0.6): below this much audio a hinted language is never overruled.
CLEARLY_OTHER_MIN_S = 3.0


def usable_codes(codes: Sequence[str], supported: Sequence[str]) -> list[str]:
    """Normalized codes the model knows, in order, without duplicates; an error names them when none is."""
    wanted = [normalize_language(h) for h in codes if h.strip()]
    known = [h for h in dict.fromkeys(wanted) if h in supported]
    if wanted and not known:
        raise EngineError(f"language(s) {', '.join(wanted)} not supported by this Whisper model")
    return known


def choose_language(
    probs: Mapping[str, float], hints: Sequence[str], supported: Sequence[str], heard_s: float = 30.0
) -> tuple[str, float]:
    """The language to decode with, from the model's detection and the caller's hints.

    Hints are preferences, not orders (the Speech7 and Soniox `language_hints`): the best hinted language is
    chosen unless another is clearly more probable (CLEARLY_OTHER_*) in at least CLEARLY_OTHER_MIN_S of
    audio (`heard_s`). Without hints the model's top guess wins. Forcing a language is a separate option
    (SttRequest.language). Returns (code, the model's probability for it: low when a hint held against a
    more probable language, so a stream knows it is not sure yet)."""
    known = usable_codes(hints, supported)
    candidates = [lang for lang in probs if lang in supported]
    if not candidates and not known:
        raise EngineError("language detection returned no usable language")
    top = max(candidates, key=lambda lang: probs.get(lang, 0.0)) if candidates else known[0]
    if known:
        hinted = max(known, key=lambda lang: probs.get(lang, 0.0))
        p_top, p_hint = probs.get(top, 0.0), probs.get(hinted, 0.0)
        clearly = p_top >= CLEARLY_OTHER_MIN_P and p_top >= CLEARLY_OTHER_RATIO * p_hint
        if top not in known and not (clearly and heard_s >= CLEARLY_OTHER_MIN_S):
            top = hinted
    return top, float(probs.get(top, 0.0))


_SENTENCE_END = (".", "?", "!", "。", "？", "！", "…")
_ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "prof.", "vs.", "etc.", "e.g.", "i.e."})


def group_words(words: Sequence[Word], *, max_pause: float = 1.0, max_seconds: float = 15.0) -> list[list[Word]]:
    """Splits a chunk's words into segments (subtitle cues): after a sentence end, at a pause of at least
    `max_pause`, or before a segment would run past `max_seconds`. We decode without timestamp tokens (as
    faster-whisper's batched pipeline does), so segment boundaries come from the words."""
    groups: list[list[Word]] = []
    current: list[Word] = []
    for w in words:
        if current and (w.start - current[-1].end >= max_pause or w.end - current[0].start > max_seconds):
            groups.append(current)
            current = []
        current.append(w)
        token = w.text.strip().lower()
        if token.endswith(_SENTENCE_END) and token not in _ABBREVIATIONS:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def is_silence(no_speech_prob: float, avg_logprob: float) -> bool:
    return no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOGPROB_THRESHOLD
