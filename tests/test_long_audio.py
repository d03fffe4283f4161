"""Bounded-memory paths for long media: blockwise VAD and single-array decoding give the same results as
the whole-signal versions they replace (memory itself is measured by scripts/bench_memory.py)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from faster_whisper.vad import VadOptions, get_speech_timestamps

from engines import audio as audio_module
from engines.audio import decode_file, iter_decode
from engines.types import SAMPLE_RATE
from engines.vad import VAD_WINDOW, spans_from_probabilities, speech_probabilities, speech_spans


@pytest.fixture(scope="module")
def speech(testdata: Path) -> np.ndarray:
    """~2 min of real speech: the diarization meetings and JFK, with a silent gap between clips."""
    names = ["diarization/dev00.wav", "diarization/dev01.wav", "diarization/sample.wav", "en/jfk.flac"]
    gap = np.zeros(3 * SAMPLE_RATE, dtype=np.float32)
    return np.concatenate([part for n in names for part in (decode_file(testdata / n), gap)])


@pytest.mark.parametrize("block_windows", [10000, 97, 1])
@pytest.mark.parametrize(
    "options", [VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160), VadOptions()],
    ids=["batched-pipeline", "defaults"],
)
def test_blockwise_vad_matches_faster_whisper(speech: np.ndarray, block_windows: int, options: VadOptions) -> None:
    expected = [(d["start"], d["end"]) for d in get_speech_timestamps(speech, options, SAMPLE_RATE)]
    assert len(expected) >= 5
    got = spans_from_probabilities(speech_probabilities(speech, block_windows), speech.size, options)
    assert got == expected


def test_vad_edges(speech: np.ndarray) -> None:
    # An exact multiple of the window: upstream pads a whole extra window, so must we.
    exact = speech[: VAD_WINDOW * 2000]
    assert speech_probabilities(exact).size == 2001
    options = VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160)
    expected = [(d["start"], d["end"]) for d in get_speech_timestamps(exact, options, SAMPLE_RATE)]
    assert speech_spans(exact) == expected
    assert speech_spans(np.zeros(0, dtype=np.float32)) == []
    assert speech_spans(np.zeros(100, dtype=np.float32)) == []


def _write_flac(path: Path, pcm: np.ndarray) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        for i in range(0, pcm.size, 4096):
            frame = av.AudioFrame.from_ndarray(pcm[None, i : i + 4096], format="flt", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for packet in stream.encode(frame):
                out.mux(packet)
        out.mux(stream.encode(None))


def test_decode_file_is_one_exact_array(tmp_path: Path, speech: np.ndarray) -> None:
    path = tmp_path / "long.flac"
    _write_flac(path, speech)
    audio = decode_file(path)
    # One array that owns exactly its samples (no view pinning a larger buffer), equal to the blocks.
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.flags.owndata and audio.flags.c_contiguous
    assert audio.size == speech.size
    assert np.array_equal(audio, np.concatenate(list(iter_decode(path, block_seconds=7.0))))
    assert np.abs(audio - speech).max() < 1e-3  # FLAC stores 16-bit samples
    head = decode_file(path, max_seconds=12.5)
    assert head.flags.owndata and head.size == int(12.5 * SAMPLE_RATE)
    assert np.array_equal(head, audio[: head.size])


@pytest.mark.parametrize("guess", [1000, 10**8], ids=["header-too-short", "header-too-long"])
def test_decode_file_grows_or_trims_a_wrong_size_guess(
    tmp_path: Path, speech: np.ndarray, guess: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "long.flac"
    _write_flac(path, speech)
    expected = decode_file(path)
    monkeypatch.setattr(audio_module, "_expected_samples", lambda _container: guess)
    audio = decode_file(path)
    assert audio.flags.owndata and audio.size == expected.size
    assert np.array_equal(audio, expected)
