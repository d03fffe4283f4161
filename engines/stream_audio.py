"""Audio state of a realtime stream: a buffer addressed by absolute sample index, and Silero VAD run
incrementally over it (speech runs, trailing silence) for engines.streaming."""

from __future__ import annotations

from typing import Any

import numpy as np

from engines.log_mel import HOP, N_FFT, log10_mel_power, mel_bank
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

    @property
    def heard_to(self) -> int:
        """Where audio the VAD judged silence ends: the start of the run in progress (speech or a blip
        too short to count yet), else everything processed."""
        return self.processed if self._open is None else self._open[0]

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


class LogMel:
    """Whisper's log-Mel front end computed incrementally: each 10 ms frame once, as its audio arrives.

    Why: a stream re-decodes its live window every few hundred ms; recomputing the spectrogram of the whole
    window each time costs more CPU than the decode on a busy GPU server (hundreds of streams). Frames are
    stored as log10 power (the window-wide clamp and scaling of Whisper's front end depend on the window, so
    they are applied in `window`). Frame k is centred on absolute sample k * HOP, as in faster-whisper's
    `FeatureExtractor` (audio before the stream start counts as silence instead of a reflection).
    """

    HOP = HOP
    N_FFT = N_FFT

    def __init__(self, filters: np.ndarray) -> None:
        self._filters_t = mel_bank(filters)  # (N_FFT // 2 + 1, n_mels)
        self._data = np.zeros((8 * SAMPLE_RATE // self.HOP, self.n_mels), dtype=np.float32)  # (frames, mels)
        self.start = 0  # absolute index of _data[0]
        self.done = 0  # frames computed: all k < done

    @property
    def n_mels(self) -> int:
        return int(self._filters_t.shape[1])

    def update(self, buffer: AudioBuffer) -> None:
        """Computes every frame whose analysis window lies inside the audio received so far."""
        last = (buffer.end - self.N_FFT // 2) // self.HOP + 1
        if last > self.done:
            frames = self._frames(buffer, self.done, last, buffer.end)
            used = self.done - self.start
            if used + len(frames) > len(self._data):
                grown = np.zeros((max(2 * len(self._data), used + len(frames)), self.n_mels), dtype=np.float32)
                grown[:used] = self._data[:used]
                self._data = grown
            self._data[used : used + len(frames)] = frames
            self.done = last

    def window(self, buffer: AudioBuffer, start: int, end: int) -> np.ndarray:
        """Normalized features (n_mels, frames) of samples [start, end), start and end multiples of HOP:
        stored frames, then the last few (whose analysis window passes `end`) with silence after `end`."""
        first, stop = start // self.HOP, end // self.HOP
        stored = self._data[max(first, self.start) - self.start : max(min(stop, self.done) - self.start, 0)]
        if stop > max(self.done, first):
            stored = np.concatenate([stored, self._frames(buffer, max(self.done, first), stop, end)])
        log = stored.T
        if log.size:
            log = np.maximum(log, log.max() - 8.0)
        return np.ascontiguousarray((log + 4.0) / 4.0, dtype=np.float32)

    def prune(self, before: int) -> None:
        """Forget frames of audio before sample `before` (absolute)."""
        drop = min(before // self.HOP, self.done) - self.start
        if drop > 0:
            used = self.done - self.start
            self._data[: used - drop] = self._data[drop:used]
            self.start += drop

    def _frames(self, buffer: AudioBuffer, first: int, stop: int, audio_end: int) -> np.ndarray:
        """log10 Mel power of frames [first, stop); samples outside [buffer.start, audio_end) are zeros."""
        half = self.N_FFT // 2
        lo, hi = first * self.HOP - half, (stop - 1) * self.HOP + half
        audio = np.zeros(hi - lo, dtype=np.float32)
        a, b = max(lo, buffer.start), min(hi, audio_end)
        if b > a:
            audio[a - lo : b - lo] = buffer.view(a, b)
        windows = np.lib.stride_tricks.sliding_window_view(audio, self.N_FFT)[:: self.HOP]
        return log10_mel_power(windows, self._filters_t)
