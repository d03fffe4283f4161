"""The float32 block-wise log-Mel front end equals faster-whisper's FeatureExtractor (what the model expects)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from engines.audio import decode_file
from engines.log_mel import BLOCK_FRAMES, HOP, log_mel, mel_bank


@pytest.mark.parametrize("n_mels", [80, 128])  # Whisper base/tiny, large-v3
@pytest.mark.parametrize("seconds", [0.005, 0.7, 30.0])  # shorter than a window, a few blocks, a full chunk
def test_features_equal_faster_whisper(testdata: Path, n_mels: int, seconds: float) -> None:
    pcm = decode_file(testdata / "diarization" / "sample.wav")[: int(seconds * 16000)]
    reference = FeatureExtractor(feature_size=n_mels)
    ours = log_mel(pcm, mel_bank(reference.mel_filters))
    theirs = reference(pcm)
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-4  # float32 rounding; the features span about 2 units
    if seconds == 30.0:
        assert ours.shape[1] > 2 * BLOCK_FRAMES and ours.shape[1] == len(pcm) // HOP + 1


def test_silence_is_the_floor() -> None:
    reference = FeatureExtractor(feature_size=80)
    silent = np.zeros(16000, dtype=np.float32)
    assert np.array_equal(log_mel(silent, mel_bank(reference.mel_filters)), reference(silent))
