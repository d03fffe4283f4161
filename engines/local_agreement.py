"""Pure decisions of the streaming decoder: which words to commit, and when to decode.

Whisper is not a streaming model: a realtime stream re-decodes its unconfirmed audio tail every
so often and must decide which words are stable. LocalAgreement-n (Machacek et al. 2023,
"Turning Whisper into Real-Time Transcription System") confirms the words on which n consecutive
hypotheses agree; with n = 2 a word becomes final only when the NEXT decode repeats it, so a word
waits a whole decode interval plus a decode after the one that first heard it. `stable_prefix_len`
commits in one pass instead: a word the decoder heard whole, followed by enough audio that later
context rarely changes it, and read with confidence, is final at once (the alignment that gives
word timestamps is the same cross-attention AlignAtt reads). Agreement stays as a second way in,
and a pause (`Action.FINALIZE`) commits whatever is pending after one last decode.
Everything here is a function of plain facts so that it can be tested with lists and numbers.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from engines.types import StreamOptions


def normalize_word(text: str) -> str:
    """Comparison key of a word: case, punctuation, spacing and accents' composition do not count.

    Whisper re-decodes the same audio as " country," then " country." depending on what follows, so
    a strict comparison would hold words back for no reason.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if ch.isalnum())


def agreed_prefix_len(previous: Sequence[str], current: Sequence[str]) -> int:
    """Number of leading words on which two consecutive hypotheses agree (LocalAgreement-2)."""
    n = 0
    for a, b in zip(previous, current, strict=False):
        if normalize_word(a) != normalize_word(b):
            break
        n += 1
    return n


@dataclass(frozen=True)
class CommitRule:
    """When one decode suffices to make a word final (`stable_prefix_len`)."""

    margin_s: float = 0.5  # audio the decoder heard after the word's end: its right context
    min_probability: float = 0.6  # Whisper's mean token probability of the word
    # Two decodes agreeing on a word still need this much audio after it: both may have heard it cut off
    # ("impression" of "impressions") when decodes come often.
    agree_margin_s: float = 0.25


def stable_prefix_len(words: Sequence[tuple[float, float]], audio_end: float, rule: CommitRule) -> int:
    """Number of leading hypothesis words (end, probability), times in seconds like `audio_end` (the end of
    the audio the decoder heard), that are final after this one decode.

    Whisper revises the last word or two of a window (a word cut off mid-way, or re-read once the next
    words are heard); words followed by `margin_s` of audio and read with confidence almost never change."""
    n = 0
    for end, probability in words:
        if end > audio_end - rule.margin_s or probability < rule.min_probability:
            break
        n += 1
    return n


def loop_start(words: Sequence[tuple[str, float, float]]) -> int:
    """Where a decoding loop starts in a hypothesis of (text, start, end) words: the end of the first of
    consecutive repeats of a phrase, three or more, or two whose repeat took less than half the audio time
    the phrase took; else len(words).

    Whisper, small models on short windows most of all, sometimes repeats a phrase until its token limit
    ("Printy. Printy. Printy. Printy.", "printing in the only sense, printing in the only sense, ..."); the
    first occurrence is what it heard, the rest is not: often squeezed into the end of the window. A
    speaker who says a phrase twice takes about as long the second time."""
    keys = [normalize_word(w[0]) for w in words]
    size = len(keys)

    def duration(i: int, n: int) -> float:
        return words[i + n - 1][2] - words[i][1]

    def repeats(i: int, n: int) -> int:
        k = 1
        while keys[i + k * n : i + (k + 1) * n] == keys[i : i + n]:
            k += 1
        return k

    for i in range(size):
        for n in range(1, (size - i) // 2 + 1):
            if keys[i + n] != keys[i]:
                continue
            times = repeats(i, n)
            if times >= 3 or (times == 2 and duration(i + n, n) < duration(i, n) / 2):
                return i + n
    return size


def skip_committed(
    committed: Sequence[str],
    committed_end: float,
    hypothesis: Sequence[tuple[str, float, float]],
    max_tail: int = 4,
) -> int:
    """Index of the first hypothesis word (text, start, end) after the committed words it re-hears.

    The decode window starts a few committed words back (`committed`, in order), so that Whisper
    hears the next word's onset whole and in context; the hypothesis then repeats those words first.
    If the repetition is not exact (the window clipped the first word, or Whisper spells it
    differently) the last committed words are looked for near the start. Then (or failing that)
    words are dropped while most of their duration lies before `committed_end` (seconds, as the word
    times), less `TIME_SLACK_S`: committed audio read again, or words Whisper squeezed into no time
    there ("the invention of movable metal letters" at one instant, before the real ones).
    """
    keys = [normalize_word(w[0]) for w in hypothesis]
    done = [normalize_word(w) for w in committed]

    def heard_again(p: int, n: int) -> bool:  # hypothesis[p:p+n] repeats the last n committed words
        return keys[p : p + n] == done[-n:] and _middle(hypothesis[p + n - 1]) < committed_end + 0.5

    def by_time(k: int, slack: float) -> int:
        while k < len(hypothesis) and _middle(hypothesis[k]) < committed_end - slack:
            k += 1
        return k

    if done and heard_again(0, len(done)):
        return by_time(len(done), TIME_SLACK_S)
    for n in range(min(max_tail, len(done)), 0, -1):
        for p in range(0, min(len(keys) - n, len(done) + 1) + 1):
            if heard_again(p, n):
                return by_time(p + n, TIME_SLACK_S)
    return by_time(0, 0.0)


TIME_SLACK_S = 0.1  # word times are approximate: a new word may seem to start a little before the last end


def _middle(word: tuple[str, float, float]) -> float:
    return (word[1] + word[2]) / 2


SENTENCE_END = (".", "?", "!", "。", "？", "！", "؟", "।")


def words_leaving_window(
    anchored: Sequence[tuple[str, float]],
    anchor: float,
    committed_end: float,
    context_s: float,
    max_context_s: float,
) -> int:
    """How many of the committed words (text, end) heard at the window start leave the window.

    Re-hearing committed words costs decoder time but gives Whisper context and whole word onsets.
    Once more than `context_s` of them are heard, the window restarts one word before the latest
    sentence end: Whisper decodes a sentence best from its beginning, and that one re-heard word
    realigns the hypothesis. A run-on sentence longer than `max_context_s` is cut at a word.
    """
    if committed_end - anchor <= context_s or len(anchored) < 2:
        return 0
    for j in range(len(anchored) - 1, 0, -1):
        if anchored[j][0].rstrip().endswith(SENTENCE_END):
            return j
    if committed_end - anchor <= max_context_s:
        return 0
    drop = 0
    while drop < len(anchored) - 1 and committed_end - anchored[drop][1] > context_s:
        drop += 1
    return drop


# ---------------------------------------------------------------- decode policy


class Action(Enum):
    WAIT = "wait"  # nothing to do yet: accept() returns at once
    DECODE = "decode"  # re-decode the unconfirmed tail and commit what is stable
    SKIP_SILENCE = "skip_silence"  # no speech in the tail: move the window start forward, no decode
    FINALIZE = "finalize"  # a short pause after speech: one last decode, every pending word final
    END_UTTERANCE = "end_utterance"  # a long enough pause: finalize, and the next words start an utterance


@dataclass(frozen=True)
class DecodeFacts:
    new_audio_s: float  # audio accepted since the last decode
    tail_has_speech: bool  # VAD found speech in the unconfirmed tail (or words are pending)
    utterance_has_speech: bool  # VAD found speech since the last utterance end
    trailing_silence_s: float  # silence at the end of the audio the VAD has seen
    last_decode_cost_s: float  # clock seconds the previous decode took (0 before the first)


@dataclass(frozen=True)
class DecodePolicy:
    min_chunk_s: float = 1.0  # re-decode after this much new audio
    endpoint_silence_s: float = 0.8  # a pause this long ends the utterance
    # A pause this long finalizes the words before it: a word followed by this much silence is over, and
    # waiting for the endpoint would add its whole silence to the lag of the utterance's last words.
    pause_s: float = 0.3
    # The interval grows to cost_factor x the last decode's cost: a stream whose decodes are slow
    # (busy device, many streams) decodes less often instead of falling further behind.
    cost_factor: float = 1.2


def decode_interval(policy: DecodePolicy, last_decode_cost_s: float) -> float:
    return max(policy.min_chunk_s, policy.cost_factor * last_decode_cost_s)


def next_action(facts: DecodeFacts, policy: DecodePolicy) -> Action:
    """What the stream does after accepting audio, decided from facts alone."""
    if facts.utterance_has_speech and facts.trailing_silence_s >= policy.endpoint_silence_s:
        return Action.END_UTTERANCE
    if facts.tail_has_speech and facts.trailing_silence_s >= min(policy.pause_s, policy.endpoint_silence_s):
        return Action.FINALIZE
    if not facts.tail_has_speech:
        return Action.SKIP_SILENCE
    if facts.new_audio_s >= decode_interval(policy, facts.last_decode_cost_s):
        return Action.DECODE
    return Action.WAIT


# Finding speech's end takes the VAD about this long beyond the silence it needs (its 32 ms windows, the
# hysteresis, and 100 ms steps): subtracted from max_endpoint_delay_ms.
ENDPOINT_SLACK_S = 0.15


def endpoint_silence(options: StreamOptions) -> float:
    """Silence that ends an utterance: `endpoint_silence_s`, shortened so that the endpoint comes within
    `max_endpoint_delay_ms` of the end of speech."""
    if options.max_endpoint_delay_ms is None:
        return options.endpoint_silence_s
    return min(options.endpoint_silence_s, options.max_endpoint_delay_ms / 1000 - ENDPOINT_SLACK_S)
