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
from typing import Any

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
    from faster_whisper.vad import VadOptions

    if audio.size == 0:
        return []
    options = VadOptions(max_speech_duration_s=max_seconds, min_silence_duration_ms=160)
    return spans_from_probabilities(speech_probabilities(audio), audio.size, options)


VAD_WINDOW = 512  # samples per Silero decision (32 ms)
VAD_CONTEXT = 64  # samples of the previous window Silero sees in front of each window
# Windows per ONNX call (32 s of audio). faster-whisper uses 10000 (5.3 min): ONNX Runtime's working memory
# for such a call is ~150 MB more, and it is no faster (measured on CPU: 0.65 s vs 0.70 s for 10 min).
VAD_BLOCK_WINDOWS = 1000


def speech_probabilities(audio: np.ndarray, block_windows: int = VAD_BLOCK_WINDOWS) -> np.ndarray:
    """Silero's speech probability per 512-sample window, computed block by block.

    Why not faster-whisper's `get_speech_timestamps`: it pads a copy of the whole recording and then builds
    a second, 12 % larger copy with each window's context prepended, i.e. 2.1x the audio in temporaries
    (480 MB for an hour). Here one reused block buffer holds the windows; the LSTM state (h, c) and the
    64-sample context carry across blocks, so the probabilities are the same as on the whole array.
    Like upstream, the audio is zero-padded to a whole window plus one when it is already a multiple.
    """
    from faster_whisper.vad import get_vad_model

    session = get_vad_model().session
    pcm = np.asarray(audio, dtype=np.float32).reshape(-1)
    n_windows = pcm.size // VAD_WINDOW + 1
    block = max(1, min(block_windows, n_windows))
    buf = np.zeros((block, VAD_CONTEXT + VAD_WINDOW), dtype=np.float32)
    h = np.zeros((1, 1, 128), dtype=np.float32)
    c = np.zeros((1, 1, 128), dtype=np.float32)
    probs = np.empty(n_windows, dtype=np.float32)
    tail = np.zeros(VAD_CONTEXT, dtype=np.float32)  # the previous block's last 64 samples
    for w0 in range(0, n_windows, block):
        k = min(block, n_windows - w0)
        body = buf[:k, VAD_CONTEXT:]
        piece = pcm[w0 * VAD_WINDOW : (w0 + k) * VAD_WINDOW]
        full = piece.size // VAD_WINDOW
        body[:full] = piece[: full * VAD_WINDOW].reshape(full, VAD_WINDOW)
        if full < k:  # the last, zero-padded window
            body[full:] = 0.0
            body[full, : piece.size - full * VAD_WINDOW] = piece[full * VAD_WINDOW :]
        # Each window's context is the tail of the window before it; the first block's first one is silence.
        buf[0, :VAD_CONTEXT] = tail
        buf[1:k, :VAD_CONTEXT] = buf[: k - 1, -VAD_CONTEXT:]
        tail = buf[k - 1, -VAD_CONTEXT:].copy()
        out, h, c = session.run(None, {"input": buf[:k], "h": h, "c": c})
        probs[w0 : w0 + k] = np.asarray(out).reshape(-1)
    return probs


def spans_from_probabilities(probs: np.ndarray, n_samples: int, options: Any) -> list[tuple[int, int]]:
    """faster-whisper's `get_speech_timestamps` hysteresis and padding (1.1.x), unchanged, over
    precomputed probabilities (a port: upstream only accepts the whole audio array, and copies it twice).

    Derived from faster_whisper/vad.py (MIT License, Copyright (c) 2023 SYSTRAN), itself after
    snakers4/silero-vad's utils (MIT License); kept step for step so spans equal upstream's (tested)."""
    threshold = options.threshold
    neg_threshold = options.neg_threshold if options.neg_threshold is not None else max(threshold - 0.15, 0.01)
    win = VAD_WINDOW
    min_speech_samples = SAMPLE_RATE * options.min_speech_duration_ms / 1000
    pad = SAMPLE_RATE * options.speech_pad_ms / 1000
    max_speech_samples = SAMPLE_RATE * options.max_speech_duration_s - win - 2 * pad
    min_silence_samples = SAMPLE_RATE * options.min_silence_duration_ms / 1000
    min_silence_at_max_speech = SAMPLE_RATE * 98 / 1000

    triggered = False
    speeches: list[dict[str, int]] = []
    current: dict[str, int] = {}
    temp_end = prev_end = next_start = 0
    for i, prob in enumerate(probs.tolist()):
        pos = win * i
        if prob >= threshold and temp_end:
            temp_end = 0
            if next_start < prev_end:
                next_start = pos
        if prob >= threshold and not triggered:
            triggered = True
            current["start"] = pos
            continue
        if triggered and pos - current["start"] > max_speech_samples:
            if prev_end:
                current["end"] = prev_end
                speeches.append(current)
                current = {}
                if next_start < prev_end:  # already in silence, not yet speech again
                    triggered = False
                else:
                    current["start"] = next_start
                prev_end = next_start = temp_end = 0
            else:
                current["end"] = pos
                speeches.append(current)
                current = {}
                prev_end = next_start = temp_end = 0
                triggered = False
                continue
        if prob < neg_threshold and triggered:
            if not temp_end:
                temp_end = pos
            if pos - temp_end > min_silence_at_max_speech:
                prev_end = temp_end
            if pos - temp_end < min_silence_samples:
                continue
            current["end"] = temp_end
            if current["end"] - current["start"] > min_speech_samples:
                speeches.append(current)
            current = {}
            prev_end = next_start = temp_end = 0
            triggered = False
            continue
    if current and n_samples - current["start"] > min_speech_samples:
        current["end"] = n_samples
        speeches.append(current)

    for i, speech in enumerate(speeches):
        if i == 0:
            speech["start"] = int(max(0, speech["start"] - pad))
        if i != len(speeches) - 1:
            gap = speeches[i + 1]["start"] - speech["end"]
            if gap < 2 * pad:
                speech["end"] += int(gap // 2)
                speeches[i + 1]["start"] = int(max(0, speeches[i + 1]["start"] - gap // 2))
            else:
                speech["end"] = int(min(n_samples, speech["end"] + pad))
                speeches[i + 1]["start"] = int(max(0, speeches[i + 1]["start"] - pad))
        else:
            speech["end"] = int(min(n_samples, speech["end"] + pad))
    return [(int(s["start"]), int(s["end"])) for s in speeches]
