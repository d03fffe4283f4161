"""Streaming speaker labels on real speech: two different voices get two labels, a voice keeps its label."""

from __future__ import annotations

import numpy as np
import pytest

from engines.diarization.online import OnlineSpeakers, nearest_speaker


def test_nearest_speaker_rules():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert nearest_speaker(a, [], 0.7, 4) == 0
    assert nearest_speaker(a, [a * 3], 0.7, 4) == 0  # centroids are sums: direction is what counts
    assert nearest_speaker(b, [a], 0.7, 4) == 1
    assert nearest_speaker(b, [a], 0.7, 1) == 0  # capped


@pytest.mark.slow
def test_two_voices_two_labels(testdata, ge2e_weights):
    from engines.audio import decode_file
    from engines.diarization.ge2e import Ge2eEncoder

    tracker = OnlineSpeakers(Ge2eEncoder(ge2e_weights))
    lj = [decode_file(testdata / "en" / f"LJ001-000{i}.wav") for i in (1, 2, 3)]  # one female reader
    libri_a = decode_file(testdata / "en" / "librispeech_1272-128104-0000.flac")  # two other readers
    libri_b = decode_file(testdata / "en" / "librispeech_2412-153948-0000.flac")
    labels = [tracker.assign(lj[0]), tracker.assign(libri_a), tracker.assign(lj[1]), tracker.assign(libri_b),
              tracker.assign(lj[2])]
    assert labels[0] == labels[2] == labels[4] == 0
    assert len({labels[0], labels[1], labels[3]}) == 3


@pytest.mark.slow
def test_loudness_does_not_change_the_voice(testdata, ge2e_weights):
    """The realtime labeller normalises loudness with the file diarizer's function: the same utterance at
    -20 dB embeds (almost) identically, so a quiet talker keeps their label."""
    from engines.audio import decode_file
    from engines.diarization.ge2e import Ge2eEncoder

    tracker = OnlineSpeakers(Ge2eEncoder(ge2e_weights))
    audio = decode_file(testdata / "en" / "LJ001-0001.wav")
    loud, quiet = tracker.embed(audio), tracker.embed(audio * 0.1)
    assert float(loud @ quiet) > 0.999
    assert tracker.assign(audio) == 0 and tracker.assign(audio * 0.05) == 0
