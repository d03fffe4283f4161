"""How a realtime window is shaped for Whisper's batches: encoder length, prompt length, beam, token limit.

Pure decisions for `WhisperEngine.submit_window` (engines.whisper), kept apart from the engine so that they are
tested without a model. A realtime stream decodes a few seconds of audio several times a second, and hundreds
of streams must share the model's batches, so its windows are decoded unlike a file's 30 s chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.batching import PRIORITY_REALTIME
from engines.types import StreamOptions, SttResult

WINDOW_FRAMES = 3000  # 30 s of 10 ms log-Mel frames: the encoder's full input
MAX_LENGTH = 448  # Whisper's decoder positions
STREAM_PAD_FRAMES, STREAM_MIN_FRAMES = 200, 1000  # see encoder_frames
STREAM_BUCKET_FRAMES = {"cpu": 100, "cuda": 500}
# Context-prompt lengths (tokens) a streaming window's previous text is cut to: few lengths, so that the
# windows of many streams share batches; 32 tokens (~25 words) is the context Whisper needs to continue.
STREAM_PROMPT_BUCKETS = (0, 32)
STREAM_BATCH_FACTOR = 4  # see batch_limit
STREAM_TOKENS = (16, 10)  # tokens a streaming window may generate: this many, plus this many per second
# Streaming windows decode greedily: re-decoded every few hundred ms, they gain nothing measurable from a
# beam (bench_realtime's programmes: WER 0.062 greedy vs 0.073 with 5 beams, tiny.en; 0.067 vs 0.081 with
# base), and the decoder's share of a large GPU batch shrinks several times.
STREAM_BEAM_SIZE = 1


def encoder_frames(frames: int, device: str) -> int:
    """Encoder input length (10 ms frames) for a streaming window of `frames`.

    Why: Whisper's encoder costs the same for 2 s of speech padded to 30 s as for 30 s (0.7 s vs 0.09 s for
    10 s with tiny.en on two busy cores), and CTranslate2 encodes shorter inputs. A window is encoded with
    STREAM_PAD_FRAMES of padding after it and at least STREAM_MIN_FRAMES in all (with less, Whisper repeats
    or drops words of short windows: "And so my fellow Americans. And so my fellow Americans."), rounded up to
    a bucket so that windows of different streams share a batch: 1 s on a CPU, where padding costs compute,
    5 s on a GPU, where batch sharing matters more."""
    bucket = STREAM_BUCKET_FRAMES["cuda" if device == "cuda" else "cpu"]
    wanted = max(STREAM_MIN_FRAMES, frames + STREAM_PAD_FRAMES)
    return min(WINDOW_FRAMES, -(-wanted // bucket) * bucket)


def bucket_context(glossary: list[int], previous: list[int]) -> list[int]:
    """A streaming window's context prompt: the glossary tokens whole (streams sharing one have equal
    lengths anyway), then the most recent previous-text tokens, cut so that the whole reaches the largest
    STREAM_PROMPT_BUCKETS length it can. CTranslate2 batches only prompts of one length."""
    size = max((b for b in STREAM_PROMPT_BUCKETS if b <= len(glossary) + len(previous)), default=0)
    keep = size - len(glossary)
    return glossary + (previous[len(previous) - keep :] if keep > 0 else [])


def stream_max_tokens(duration: float) -> int:
    """Tokens a window of `duration` seconds may generate: speech holds a few per second."""
    return int(STREAM_TOKENS[0] + STREAM_TOKENS[1] * duration)


def generation_limit(prompt_tokens: int, wanted: Sequence[int]) -> int:
    """CTranslate2's `max_length` that lets each item generate its `max_tokens` (0: no limit).

    Why: a decoding loop ("Printy. Printy. ...") otherwise runs to Whisper's 448 tokens, seconds on a CPU for
    a window of two. CTranslate2 4.x stops Whisper's generation at min(max_length / 2, max_length - prompt
    + 1) new tokens (measured), hence the formula."""
    if not wanted or min(wanted) <= 0:
        return MAX_LENGTH
    most = max(wanted)
    return min(MAX_LENGTH, max(2 * most, prompt_tokens + most))


def batch_limit(frames: int, full: int) -> int:
    """Items per batch for inputs of `frames`: `full` for 30 s chunks; realtime windows, encoded shorter, are
    allowed STREAM_BATCH_FACTOR times the encoder frames of that, since hundreds of live streams must decode
    within a fraction of a second: every stream that waits out a batch adds that batch's time to its lag."""
    if frames >= WINDOW_FRAMES:
        return full
    return max(full, STREAM_BATCH_FACTOR * full * WINDOW_FRAMES // max(frames, 1))


@dataclass(frozen=True, eq=False)
class WindowRequest:
    """One decode a stream needs: the live window's features, its language (None: detect among hints)."""

    features: np.ndarray
    language: str | None
    hints: tuple[str, ...]
    prompt: str | None
    options: StreamOptions

    def submit(self, engine: Any) -> Future[SttResult]:
        return engine.submit_window(  # type: ignore[no-any-return]
            features=self.features, language=self.language, language_hints=self.hints,
            task=self.options.task, prompt=self.prompt, terms=self.options.terms, priority=PRIORITY_REALTIME,
        )
