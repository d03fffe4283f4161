"""Voice activity detection and chunk planning for Whisper.

Whisper reads fixed 30 s windows and its encoder costs the same for a full window as for a nearly empty
one, so we pack speech tightly: Silero VAD (bundled with faster-whisper) finds speech spans, and
`plan_chunks` concatenates consecutive spans into chunks of at most 30 s with the silence between them cut
out. Each chunk remembers where its pieces came from, so times the model reports inside a chunk map back
to the original timeline (`Chunk.to_original`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engines.types import SAMPLE_RATE

CHUNK_SECONDS = 30.0


@dataclass(frozen=True)
class Chunk:
    """Speech pieces `(start_sample, end_sample)` of the original audio, played back to back."""

    spans: tuple[tuple[int, int], ...]

    @property
    def samples(self) -> int:
        return sum(e - s for s, e in self.spans)

    @property
    def duration(self) -> float:
        return self.samples / SAMPLE_RATE

    @property
    def start(self) -> float:
        return self.spans[0][0] / SAMPLE_RATE

    @property
    def end(self) -> float:
        return self.spans[-1][1] / SAMPLE_RATE

    def audio(self, pcm: np.ndarray) -> np.ndarray:
        if len(self.spans) == 1:
            s, e = self.spans[0]
            return pcm[s:e]
        return np.concatenate([pcm[s:e] for s, e in self.spans])

    def piece_index(self, t: float) -> int:
        """Which span a chunk-local time falls in (a time on a cut belongs to the piece before it)."""
        ends = np.cumsum([e - s for s, e in self.spans]) / SAMPLE_RATE
        return min(bisect.bisect_left(ends.tolist(), t), len(self.spans) - 1)

    def to_original(self, t: float, piece: int | None = None) -> float:
        """Maps a chunk-local time (seconds) to the original timeline; `piece` pins the span to use, so
        both ends of one word land in the same span even when the word straddles a cut."""
        i = self.piece_index(t) if piece is None else piece
        before = sum(e - s for s, e in self.spans[:i]) / SAMPLE_RATE
        s, e = self.spans[i]
        return min(max(s / SAMPLE_RATE + t - before, s / SAMPLE_RATE), e / SAMPLE_RATE)


def plan_chunks(
    spans: Sequence[tuple[int, int]], max_seconds: float = CHUNK_SECONDS, sample_rate: int = SAMPLE_RATE
) -> list[Chunk]:
    """Greedily packs time-ordered speech spans into chunks of at most `max_seconds` of audio.

    A span longer than the limit (VAD was told to split at the limit, but be defensive) is cut into
    limit-sized pieces so no chunk exceeds Whisper's window.
    """
    limit = int(max_seconds * sample_rate)
    chunks: list[Chunk] = []
    current: list[tuple[int, int]] = []
    used = 0
    for start, end in spans:
        if end <= start:
            continue
        for s in range(start, end, limit):
            piece = (s, min(end, s + limit))
            size = piece[1] - piece[0]
            if current and used + size > limit:
                chunks.append(Chunk(tuple(current)))
                current, used = [], 0
            current.append(piece)
            used += size
    if current:
        chunks.append(Chunk(tuple(current)))
    return chunks


def fixed_chunks(n_samples: int, max_seconds: float = CHUNK_SECONDS, sample_rate: int = SAMPLE_RATE) -> list[Chunk]:
    """Plain back-to-back windows, for requests that turn VAD off."""
    return plan_chunks([(0, n_samples)], max_seconds, sample_rate) if n_samples > 0 else []


def speech_spans(audio: np.ndarray, max_seconds: float = CHUNK_SECONDS) -> list[tuple[int, int]]:
    """Silero VAD speech spans in samples, with faster-whisper's batched-pipeline settings (short 160 ms
    silences split spans, so chunks can be packed tightly; spans never exceed `max_seconds`)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if audio.size == 0:
        return []
    options = VadOptions(max_speech_duration_s=max_seconds, min_silence_duration_ms=160)
    return [(int(ts["start"]), int(ts["end"])) for ts in get_speech_timestamps(audio, options, SAMPLE_RATE)]
