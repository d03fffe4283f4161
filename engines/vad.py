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
from functools import cached_property
from typing import Any

import numpy as np

from engines.types import SAMPLE_RATE, AudioSource

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

    def read(self, source: AudioSource) -> np.ndarray:
        """The chunk's audio from a source that is read piece by piece (a decoded upload on disk)."""
        pieces = [source.read(s, e) for s, e in self.spans]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    @cached_property
    def _offsets(self) -> tuple[list[float], list[float]]:
        """(chunk-local start, chunk-local end) of each piece in seconds, computed once: every decoded word of
        the chunk is mapped through them (to_segments)."""
        ends = (np.cumsum([e - s for s, e in self.spans]) / SAMPLE_RATE).tolist()
        return [0.0, *ends[:-1]], ends

    def piece_index(self, t: float) -> int:
        """Which span a chunk-local time falls in (a time on a cut belongs to the piece before it)."""
        return min(bisect.bisect_left(self._offsets[1], t), len(self.spans) - 1)

    def to_original(self, t: float, piece: int | None = None) -> float:
        """Maps a chunk-local time (seconds) to the original timeline; `piece` pins the span to use, so
        both ends of one word land in the same span even when the word straddles a cut."""
        i = self.piece_index(t) if piece is None else piece
        before = self._offsets[0][i]
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


VAD_WINDOW = 512  # samples per Silero decision (32 ms)
VAD_CONTEXT = 64  # samples of the previous window Silero sees in front of each window
# Windows per ONNX call (32 s of audio). faster-whisper uses 10000 (5.3 min): ONNX Runtime's working memory
# for such a call is ~150 MB more, and it is no faster (measured on CPU: 0.65 s vs 0.70 s for 10 min).
VAD_BLOCK_WINDOWS = 1000


def speech_spans(audio: np.ndarray, max_seconds: float = CHUNK_SECONDS) -> list[tuple[int, int]]:
    """Silero VAD speech spans in samples, with faster-whisper's batched-pipeline settings (short 160 ms
    silences split spans, so chunks can be packed tightly; spans never exceed `max_seconds`)."""
    if audio.size == 0:
        return []
    return spans_from_probabilities(speech_probabilities(audio), audio.size, vad_options(max_seconds))


def vad_options(max_seconds: float = CHUNK_SECONDS) -> Any:
    """faster-whisper's `VadOptions` as its batched pipeline sets them."""
    from faster_whisper.vad import VadOptions

    return VadOptions(max_speech_duration_s=max_seconds, min_silence_duration_ms=160)


def speech_probabilities(audio: np.ndarray, block_windows: int = VAD_BLOCK_WINDOWS) -> np.ndarray:
    """Silero's speech probability per 512-sample window of a whole recording (see `SileroStream`)."""
    stream = SileroStream(block_windows=block_windows)
    return np.concatenate([stream.feed(audio), stream.flush()])


def silero_session() -> Any:
    """The Silero ONNX session bundled with faster-whisper (one per process, single-threaded; `run` is
    thread-safe)."""
    from faster_whisper.vad import get_vad_model

    return get_vad_model().session


class SileroStream:
    """Silero's speech probability per 512-sample window, for audio that arrives in pieces.

    Why not faster-whisper's `get_speech_timestamps`: it needs the whole recording and pads a copy of it,
    then builds a second, 12 % larger copy with each window's context prepended, i.e. 2.1x the audio in
    temporaries (480 MB for an hour). Here one reused block buffer holds the windows, and the LSTM state
    (h, c) and the 64-sample context carry across calls, so the probabilities are the same whatever the
    pieces: a decoder can feed blocks as it produces them and never hold the recording.
    Like upstream, `flush` zero-pads the end to a whole window, adding one when the audio is a multiple.
    """

    def __init__(self, session: Any = None, block_windows: int = VAD_BLOCK_WINDOWS) -> None:
        self._session = session if session is not None else silero_session()
        self._block = max(1, block_windows)
        self._buf = np.zeros((self._block, VAD_CONTEXT + VAD_WINDOW), dtype=np.float32)
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._tail = np.zeros(VAD_CONTEXT, dtype=np.float32)  # the last window's last 64 samples
        self._rest = np.zeros(0, dtype=np.float32)  # samples short of a whole window, kept for the next call
        self.windows = 0  # probabilities produced so far

    def feed(self, pcm: np.ndarray) -> np.ndarray:
        """Probabilities of every whole window completed by `pcm` (the remainder waits for more audio)."""
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if self._rest.size:
            pcm = np.concatenate([self._rest, pcm])
        whole = pcm.size // VAD_WINDOW
        self._rest = pcm[whole * VAD_WINDOW :].copy()
        out = [self._run(pcm[w0 * VAD_WINDOW : (w0 + k) * VAD_WINDOW], k)
               for w0 in range(0, whole, self._block) for k in (min(self._block, whole - w0),)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def flush(self) -> np.ndarray:
        """The last (partial, zero-padded) window; the stream is then at its end."""
        last = np.zeros(VAD_WINDOW, dtype=np.float32)
        last[: self._rest.size] = self._rest
        self._rest = np.zeros(0, dtype=np.float32)
        return self._run(last, 1)

    def _run(self, windows: np.ndarray, k: int) -> np.ndarray:
        buf = self._buf[:k]
        buf[:, VAD_CONTEXT:] = windows.reshape(k, VAD_WINDOW)
        # Each window's context is the tail of the window before it; the stream's first one is silence.
        buf[0, :VAD_CONTEXT] = self._tail
        buf[1:k, :VAD_CONTEXT] = buf[: k - 1, -VAD_CONTEXT:]
        self._tail = buf[k - 1, -VAD_CONTEXT:].copy()
        out, self._h, self._c = self._session.run(None, {"input": buf, "h": self._h, "c": self._c})
        self.windows += k
        return np.asarray(out, dtype=np.float32).reshape(-1)


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
