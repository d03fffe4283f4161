"""Audio state of a realtime stream: a buffer addressed by absolute sample index, and Silero VAD run
incrementally over it (speech runs, trailing silence) for engines.streaming."""

from __future__ import annotations

from typing import Any

import numpy as np

from engines.types import SAMPLE_RATE


class AudioBuffer:
    """Growable float32 buffer addressed by absolute sample index; appends are O(frame)."""

    def __init__(self) -> None:
        self._data = np.zeros(SAMPLE_RATE * 8, dtype=np.float32)
        self.start = 0  # absolute index of _data[0]
        self.end = 0  # absolute index after the last sample

    def append(self, pcm: np.ndarray) -> None:
        used = self.end - self.start
        if used + len(pcm) > len(self._data):
            grown = np.zeros(max(2 * len(self._data), used + len(pcm)), dtype=np.float32)
            grown[:used] = self._data[:used]
            self._data = grown
        self._data[used : used + len(pcm)] = pcm
        self.end += len(pcm)

    def view(self, start: int, end: int) -> np.ndarray:
        start = max(start, self.start)
        return self._data[start - self.start : max(start, end) - self.start]

    def trim(self, before: int) -> None:
        """Forget audio before `before` (absolute)."""
        drop = min(before, self.end) - self.start
        if drop > 0:
            used = self.end - self.start
            self._data[: used - drop] = self._data[drop:used]
            self.start += drop


class SpeechTracker:
    """Silero VAD run incrementally (the LSTM state is carried across calls): speech runs in samples."""

    WINDOW = 512  # Silero's frame at 16 kHz
    CONTEXT = 64

    def __init__(self, threshold: float = 0.5, min_speech_s: float = 0.1) -> None:
        from faster_whisper.vad import get_vad_model

        self._session: Any = get_vad_model().session  # shared onnxruntime session; run() is thread-safe
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(self.CONTEXT, dtype=np.float32)
        self._on = threshold
        self._off = max(threshold - 0.15, 0.01)  # hysteresis, as faster-whisper's VAD does
        self._min_speech = int(min_speech_s * SAMPLE_RATE)
        self.processed = 0  # samples the VAD has seen
        self._open: list[int] | None = None  # [start, end] of the run in progress
        self.last_speech_end = -1  # end of the last speech run long enough to count
        self._runs: list[tuple[int, int]] = []  # finished runs, pruned with the buffer

    def update(self, buffer: AudioBuffer) -> None:
        n = (buffer.end - self.processed) // self.WINDOW
        if n <= 0:
            return
        audio = buffer.view(self.processed, self.processed + n * self.WINDOW).reshape(n, self.WINDOW)
        contexts = np.concatenate([self._context[None, :], audio[:-1, -self.CONTEXT :]], axis=0)
        batch = np.concatenate([contexts, audio], axis=1)
        probs, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = audio[-1, -self.CONTEXT :].copy()
        for p in np.asarray(probs).reshape(-1):
            self._step(float(p))

    def _step(self, p: float) -> None:
        start, end = self.processed, self.processed + self.WINDOW
        self.processed = end
        if self._open is None:
            if p >= self._on:
                self._open = [start, end]
        elif p >= self._off:
            self._open[1] = end
        else:
            self._close()
        if self._open is not None and self._open[1] - self._open[0] >= self._min_speech:
            self.last_speech_end = self._open[1]

    def _close(self) -> None:
        assert self._open is not None
        if self._open[1] - self._open[0] >= self._min_speech:  # shorter blips are clicks, not speech
            self._runs.append((self._open[0], self._open[1]))
        self._open = None

    @property
    def in_speech(self) -> bool:
        return self._open is not None and self._open[1] - self._open[0] >= self._min_speech

    def trailing_silence(self) -> int:
        return 0 if self.in_speech else self.processed - max(self.last_speech_end, 0)

    def speech_start_after(self, sample: int) -> int | None:
        """Start (clipped to `sample`) of the first counted speech after `sample`, None if none yet."""
        runs = self._runs + ([tuple(self._open)] if self.in_speech and self._open else [])
        for s, e in runs:
            if e > sample:
                return max(s, sample)
        return None

    def prune(self, before: int) -> None:
        self._runs = [r for r in self._runs if r[1] > before]
