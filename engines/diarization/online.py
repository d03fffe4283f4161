"""Streaming speaker labels for realtime sessions: each finalized utterance is embedded with the GE2E
encoder and assigned to the nearest known speaker, or starts a new one when nothing is similar enough.

Labels stay stable for the session because centroids only move by running means and are never re-clustered.
Loudness is normalised exactly as the file diarizer does it (`ge2e.volume_gain`): GE2E reads a linear power
spectrum, so without it the same voice, quieter, would drift away from its own centroid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engines.diarization.ge2e import volume_gain
from engines.types import SAMPLE_RATE

# GE2E d-vectors of one speaker mostly score above ~0.75 cosine similarity, different speakers below.
SAME_SPEAKER_SIMILARITY = 0.72
MIN_AUDIO_S = 0.6
MAX_SPEAKERS = 8
WINDOW_FRAMES = 160  # 1.6 s partials, as GE2E was trained
STEP_FRAMES = 80


def nearest_speaker(embedding: np.ndarray, centroids: Sequence[np.ndarray], threshold: float, max_speakers: int) -> int:
    """Index of the matching centroid, or len(centroids) for a new speaker (capped at max_speakers)."""
    if not centroids:
        return 0
    sims = [float(np.dot(embedding, c) / (np.linalg.norm(c) + 1e-9)) for c in centroids]
    best = int(np.argmax(sims))
    if sims[best] >= threshold or len(centroids) >= max_speakers:
        return best
    return len(centroids)


class OnlineSpeakers:
    def __init__(self, encoder: Any, threshold: float = SAME_SPEAKER_SIMILARITY, max_speakers: int = MAX_SPEAKERS) -> None:
        self._encoder = encoder
        self._threshold = threshold
        self._max = max_speakers
        self._sums: list[np.ndarray] = []
        self._last = 0

    def embed(self, audio: np.ndarray) -> np.ndarray:
        mels = self._encoder.mel_frames(audio, gain=volume_gain(audio))
        n = int(mels.shape[0])
        starts = np.arange(0, max(1, n - WINDOW_FRAMES + 1), STEP_FRAMES)
        emb = self._encoder.embed_windows(mels, starts, WINDOW_FRAMES).mean(axis=0)
        return emb / (np.linalg.norm(emb) + 1e-9)

    def assign(self, audio: np.ndarray) -> int:
        """0-based speaker of this stretch of speech; too little audio keeps the previous speaker."""
        if len(audio) < MIN_AUDIO_S * SAMPLE_RATE:
            return self._last
        emb = self.embed(audio)
        idx = nearest_speaker(emb, self._sums, self._threshold, self._max)
        if idx == len(self._sums):
            self._sums.append(emb.copy())
        else:
            self._sums[idx] = self._sums[idx] + emb
        self._last = idx
        return idx
