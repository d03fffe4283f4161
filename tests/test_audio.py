"""Media decoding (engines.audio) and live-stream decoding (engines.stream_decode) on real speech.

Lossy formats are produced at test time with PyAV from the JFK clip, then decoded back and compared
with the source: same duration (within 0.1 s) and the same waveform (correlation at the best lag).
"""

from __future__ import annotations

import random
import struct
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from scipy.signal import correlate, resample_poly

from engines.audio import (
    EmptyMediaError,
    MediaError,
    UndecodableMediaError,
    choose_audio_stream,
    decode_file,
    iter_decode,
    pcm_from_raw,
    probe_duration,
)
from engines.stream_decode import FrameTooLongError, StreamDecoder, parse_wav_header
from engines.types import SAMPLE_RATE, EngineError

SR = SAMPLE_RATE


@pytest.fixture(scope="module")
def jfk(testdata: Path) -> np.ndarray:
    return decode_file(testdata / "en" / "jfk.flac")


def _encode(pcm: np.ndarray, path: Path, container: str, codec: str, rate: int, **options: str) -> Path:
    """Encodes 16 kHz mono float PCM with PyAV (it resamples to `rate` and frames for the codec)."""
    with av.open(str(path), "w", format=container, options=options) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        for i in range(0, len(pcm), 4000):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(pcm[None, i : i + 4000]), format="fltp", layout="mono"
            )
            frame.sample_rate = SR
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _similarity(decoded: np.ndarray, source: np.ndarray, max_lag_s: float = 0.1) -> float:
    """Correlation coefficient of the two signals at the best lag within +-max_lag_s."""
    full = correlate(decoded, source, mode="full", method="fft")
    zero = len(source) - 1
    window = int(max_lag_s * SR)
    lag = int(np.argmax(full[zero - window : zero + window + 1])) - window
    a, b = (decoded[lag:], source) if lag >= 0 else (decoded, source[-lag:])
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _wav_header(fmt_tag: int, channels: int, rate: int, bits: int, data_size: int) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    return (
        b"RIFF" + struct.pack("<I", min(0xFFFFFFFF, 4 + 8 + len(fmt) + 8 + data_size)) + b"WAVE"
        + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"data" + struct.pack("<I", data_size)
    )  # fmt: skip


def _stream_in_chunks(dec: StreamDecoder, data: bytes, sizes: random.Random, odd: bool = False):
    """Feeds `data` in random-sized chunks; returns (samples before close, samples from close,
    bytes fed when the first samples came back)."""
    before: list[np.ndarray] = []
    first_at = None
    pos = 0
    while pos < len(data):
        step = sizes.randrange(1, 4000, 2) if odd else sizes.randint(1, 4000)
        out = dec.feed(data[pos : pos + step])
        pos += step
        assert out.dtype == np.float32 and out.ndim == 1
        if out.size and first_at is None:
            first_at = pos
        before.append(out)
    return np.concatenate(before), dec.close(), first_at


def _decoder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "stream-decode"]


# ---------------------------------------------------------------- files on disk


def test_wav_22k_is_resampled_to_16k(testdata: Path) -> None:
    path = testdata / "en" / "LJ001-0001.wav"
    with av.open(str(path)) as c:
        native = c.streams.audio[0].duration / 22050
    audio = decode_file(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / SR - native) < 0.01
    assert 0.02 < _rms(audio) and np.abs(audio).max() <= 1.0


def test_float32_wav(testdata: Path) -> None:
    audio = decode_file(testdata / "diarization" / "dev00.wav")
    assert abs(len(audio) / SR - 30.0) < 0.01
    assert _rms(audio) > 0.001


def test_flac_stereo_is_mean_downmixed(testdata: Path, jfk: np.ndarray) -> None:
    assert abs(len(jfk) / SR - 11.0) < 0.05
    # Both channels carry the same speech: a channel mean keeps its level (FFmpeg's default matrix
    # would add 3 dB and exceed full scale).
    assert 0.5 < np.abs(jfk).max() <= 1.0
    assert probe_duration(testdata / "en" / "jfk.flac") == pytest.approx(11.0, abs=0.05)


def test_video_takes_the_best_audio_stream(testdata: Path) -> None:
    path = testdata / "video" / "nasa_13013.mp4"
    audio = decode_file(path)
    assert abs(len(audio) / SR - 13.06) < 0.1  # the narration track ends at 13.06 s
    assert _rms(audio[: 5 * SR]) > 0.01
    assert probe_duration(path) >= 13.0
    # The file carries the narration at 8 kHz (first) and at 16 kHz: the 16 kHz one is decoded.
    assert choose_audio_stream([(True, 8000), (True, 16000)]) == 1
    assert choose_audio_stream([(False, 48000), (True, 16000)]) == 1
    assert choose_audio_stream([(False, 16000), (False, 16000)]) == 0
    assert choose_audio_stream([]) is None


@pytest.mark.parametrize(
    ("suffix", "container", "codec", "rate"),
    [
        ("mp3", "mp3", "libmp3lame", 16000),
        ("ogg", "ogg", "libopus", 48000),
        ("webm", "webm", "libopus", 48000),
        ("m4a", "ipod", "aac", 16000),
    ],
)
def test_lossy_round_trip(
    tmp_path: Path, jfk: np.ndarray, suffix: str, container: str, codec: str, rate: int
) -> None:
    path = _encode(jfk, tmp_path / f"jfk.{suffix}", container, codec, rate)
    audio = decode_file(path)
    assert abs(len(audio) - len(jfk)) / SR < 0.1
    assert _similarity(audio, jfk) > 0.95
    assert _rms(audio) == pytest.approx(_rms(jfk), rel=0.1)
    assert probe_duration(path) == pytest.approx(len(jfk) / SR, abs=0.1)


def test_iter_decode_blocks_and_max_seconds(testdata: Path) -> None:
    path = testdata / "diarization" / "dev00.wav"
    blocks = list(iter_decode(path, block_seconds=7.0))
    assert [len(b) for b in blocks[:-1]] == [7 * SR] * (len(blocks) - 1)
    whole = decode_file(path)
    np.testing.assert_array_equal(np.concatenate(blocks), whole)
    assert len(decode_file(path, max_seconds=2.5)) == int(2.5 * SR)


def test_truncated_file_decodes_what_is_there(tmp_path: Path, jfk: np.ndarray) -> None:
    data = _encode(jfk, tmp_path / "jfk.webm", "webm", "libopus", 48000).read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: len(data) // 2])
    audio = decode_file(cut)
    assert 3.0 < len(audio) / SR < 8.0
    assert _similarity(audio, jfk[: len(audio)]) > 0.95


def test_not_media_and_empty_inputs(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(b"this is a text file, not audio\n" * 200)
    with pytest.raises(UndecodableMediaError, match="could not decode the uploaded media"):
        decode_file(garbage)
    with pytest.raises(UndecodableMediaError):
        probe_duration(garbage)

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(EmptyMediaError, match="no audio"):
        decode_file(empty)

    silent = tmp_path / "zero.wav"
    silent.write_bytes(_wav_header(1, 1, 16000, 16, 0))
    with pytest.raises(EmptyMediaError, match="no audio samples"):
        decode_file(silent)
    # Both are EngineErrors (the server maps MediaError to 422).
    assert issubclass(MediaError, EngineError)


def test_video_without_audio(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), dtype=np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(EmptyMediaError, match="has no audio"):
        decode_file(path)


def test_pcm_from_raw_stereo_48k(jfk: np.ndarray) -> None:
    left = resample_poly(jfk.astype(np.float64), 3, 1)
    stereo = np.stack([left, 0.5 * left], axis=1)  # mean of the channels = 0.75 * source
    raw = (np.clip(stereo, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()
    audio = pcm_from_raw(raw + b"\x01", "pcm_s16le", 48000, 2)  # a dangling byte is ignored
    assert audio.dtype == np.float32
    assert abs(len(audio) - len(jfk)) <= 2
    n = min(len(audio), len(jfk))
    assert np.dot(audio[:n], jfk[:n]) / np.dot(jfk[:n], jfk[:n]) == pytest.approx(0.75, abs=0.01)
    assert _similarity(audio, jfk) > 0.999


# ---------------------------------------------------------------- live streams


def test_stream_webm_opus_in_random_chunks(tmp_path: Path, jfk: np.ndarray) -> None:
    path = _encode(jfk, tmp_path / "jfk.webm", "webm", "libopus", 48000, live="1")
    reference = decode_file(path)
    # A generous wait bound makes each feed return once the decoder has consumed the chunk, so
    # what arrives before close() is deterministic (the wait ends early in practice).
    dec = StreamDecoder(audio_format="auto", max_wait_s=10.0)
    before, tail, first_at = _stream_in_chunks(dec, path.read_bytes(), random.Random(7))
    total = np.concatenate([before, tail])
    assert abs(len(total) - len(reference)) / SR < 0.1
    assert first_at is not None and first_at < 8000  # audio flows right after the header
    assert len(before) / SR > len(reference) / SR - 0.2  # only the resampler tail waits for close()
    assert _similarity(total, jfk) > 0.95
    assert not _decoder_threads()


def test_stream_pcm_s16le_odd_chunks(jfk: np.ndarray) -> None:
    samples = resample_poly(jfk.astype(np.float64), 3, 1)  # 48 kHz stereo, odd chunk sizes split frames
    raw = (np.clip(np.stack([samples, samples], axis=1), -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()
    dec = StreamDecoder(audio_format="pcm_s16le", sample_rate=48000, num_channels=2)
    assert dec.instant  # raw PCM: the realtime session converts it without a thread hop
    before, tail, first_at = _stream_in_chunks(dec, raw, random.Random(11), odd=True)
    total = np.concatenate([before, tail])
    assert first_at is not None and first_at < 8000
    np.testing.assert_allclose(total, pcm_from_raw(raw, "pcm_s16le", 48000, 2), atol=1e-5)
    assert abs(len(total) - len(jfk)) / SR < 0.1


def test_stream_wav_and_other_containers(tmp_path: Path, testdata: Path, jfk: np.ndarray) -> None:
    # PCM WAV (22.05 kHz) is parsed directly: samples from the first chunk after the header.
    wav = testdata / "en" / "LJ001-0001.wav"
    auto = StreamDecoder()
    assert not auto.instant  # the format is not known yet: the first bytes may start a container decoder
    auto.feed(wav.read_bytes()[:100])
    assert auto.instant  # a PCM WAV header: what follows is raw PCM
    auto.abort()
    before, tail, first_at = _stream_in_chunks(StreamDecoder(), wav.read_bytes(), random.Random(3))
    np.testing.assert_allclose(np.concatenate([before, tail]), decode_file(wav), atol=1e-4)
    assert first_at is not None and first_at < 8000
    # 24-bit WAV, Ogg/Opus and MP3 go through FFmpeg's demuxers.
    for path in (
        _encode(jfk, tmp_path / "s24.wav", "wav", "pcm_s24le", 16000),
        _encode(jfk, tmp_path / "jfk.ogg", "ogg", "libopus", 48000),
        _encode(jfk, tmp_path / "jfk.mp3", "mp3", "libmp3lame", 16000),
    ):
        dec = StreamDecoder(max_wait_s=10.0)
        before, tail, _ = _stream_in_chunks(dec, path.read_bytes(), random.Random(5))
        assert not dec.instant, path.name  # FFmpeg's thread: the realtime session feeds it on an inference thread
        assert abs(len(before) + len(tail) - len(jfk)) / SR < 0.1, path.name
        assert len(before) > 0, path.name
        assert _similarity(np.concatenate([before, tail]), jfk) > 0.95, path.name


@pytest.mark.timeout(60)
def test_stream_garbage_errors_and_does_not_hang() -> None:
    rng = np.random.default_rng(1)
    dec = StreamDecoder()
    with pytest.raises(UndecodableMediaError):
        for _ in range(14):
            dec.feed(rng.integers(0, 256, 1500, dtype=np.uint8).tobytes())
        dec.close()
    assert not _decoder_threads()
    with pytest.raises(RuntimeError):
        dec.feed(b"more")  # a failed decoder stays closed

    # More garbage than format detection looks at: the error comes from feed(), before close().
    dec = StreamDecoder(max_wait_s=10.0)
    with pytest.raises(UndecodableMediaError):
        for _ in range(100):
            dec.feed(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    assert not _decoder_threads()


def test_stream_edge_cases(tmp_path: Path, jfk: np.ndarray) -> None:
    assert StreamDecoder().close().size == 0  # nothing sent
    data = _encode(jfk, tmp_path / "jfk.webm", "webm", "libopus", 48000).read_bytes()
    dec = StreamDecoder()
    dec.feed(data[:5000])
    dec.abort()  # client went away mid-stream: the thread ends
    assert not _decoder_threads()
    with pytest.raises(ValueError):
        StreamDecoder(audio_format="pcm_s16le")  # needs sample_rate
    with pytest.raises(ValueError):
        StreamDecoder(audio_format="mulaw")  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_stream_frames_that_decode_to_too_much_audio_are_refused(tmp_path: Path, jfk: np.ndarray) -> None:
    """A few kB of FLAC that hold five minutes of silence: the decoder thread stops once it holds a minute
    of unread audio, instead of decoding (and keeping) all of it."""
    import soundfile as sf

    limit = 60 * SR
    path = tmp_path / "silence.flac"
    sf.write(path, np.zeros(300 * SR, dtype=np.float32), SR, format="FLAC")
    dec = StreamDecoder(max_wait_s=10.0, max_frame_samples=limit)
    with pytest.raises(FrameTooLongError, match="60 s"):
        dec.feed(path.read_bytes())
        dec.close()
    assert not _decoder_threads()
    # Raw PCM: one frame of 70 s at 8 kHz is 1.1 MB, and refused the same way.
    pcm = StreamDecoder("pcm_s16le", 8000, max_frame_samples=limit)
    with pytest.raises(FrameTooLongError):
        pcm.feed(np.zeros(70 * 8000, dtype="<i2").tobytes())
    # Speech streamed in frames as it is recorded is far below the bound.
    webm = _encode(jfk, tmp_path / "jfk.webm", "webm", "libopus", 48000).read_bytes()
    ok = StreamDecoder(max_wait_s=10.0, max_frame_samples=limit)
    got = np.concatenate([ok.feed(webm[i : i + 4000]) for i in range(0, len(webm), 4000)] + [ok.close()])
    assert abs(len(got) - len(jfk)) < SR // 10


def test_parse_wav_header() -> None:
    header = _wav_header(1, 2, 44100, 16, 4000)
    assert parse_wav_header(header[:3]) == ("need_more", None)
    assert parse_wav_header(header[:30]) == ("need_more", None)
    status, info = parse_wav_header(header)
    assert status == "pcm" and info is not None
    assert (info.fmt, info.sample_rate, info.channels, info.data_offset, info.data_size) == (
        "pcm_s16le", 44100, 2, len(header), 4000
    )  # fmt: skip
    live = parse_wav_header(_wav_header(3, 1, 16000, 32, 0xFFFFFFFF))[1]
    assert live is not None and live.fmt == "pcm_f32le" and live.data_size is None
    assert parse_wav_header(_wav_header(1, 1, 16000, 24, 0)) == ("other", None)
    assert parse_wav_header(b"OggS\x00\x02") == ("other", None)
    assert parse_wav_header(b"\x1aE\xdf\xa3") == ("other", None)
