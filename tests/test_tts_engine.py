"""Piper TTS engine and the streaming MP3 encoder, with the real en_US-joe-medium voice.

Empty input contract: `PiperEngine.synthesize` raises `EngineError` at call time (before any iteration)
for text with nothing speakable, so the server can answer 400 before it starts an audio stream.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest

from engines.mp3 import Mp3StreamEncoder, decode_mp3, encode_mp3, mp3_duration_seconds
from engines.piper_tts import PiperEngine, length_scale_for, list_voices, split_sentences
from engines.tts_estimate import PhonemeCounts, VoicePace
from engines.types import EngineError, ModelMissingError, TtsEngine, TtsRequest

THREE_SENTENCES = (
    "The weather is sunny today. We will walk to the park after lunch. Please bring some water and a hat."
)


@pytest.fixture(scope="module")
def engine(piper_voice: tuple[Path, Path]) -> PiperEngine:
    onnx, cfg = piper_voice
    return PiperEngine(onnx, cfg, voice_name="en_US-joe-medium", device="cpu")


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def _wer(reference: str, hypothesis: str) -> float:
    ref, hyp = _words(reference), _words(hypothesis)
    row = list(range(len(hyp) + 1))  # Levenshtein distance over words, one row at a time
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)] / max(len(ref), 1)


# ------------------------------------------------------------------ pure helpers (no model)


def test_split_sentences_keeps_abbreviations_and_lines() -> None:
    text = "Dr. Smith met J. R. Jones at 3.5 p.m. sharp. Really? Yes!\nA heading without a period"
    assert split_sentences(text) == [
        "Dr. Smith met J. R. Jones at 3.5 p.m. sharp.",
        "Really?",
        "Yes!",
        "A heading without a period",
    ]


def test_split_sentences_cuts_overlong_sentence_at_a_clause() -> None:
    long = ", ".join(["one more clause of words here"] * 30) + "."
    parts = split_sentences(long, max_chars=120)
    assert len(parts) > 1
    assert all(len(p) <= 120 for p in parts)
    assert " ".join(parts).replace(" ", "") == long.replace(" ", "")  # nothing lost or reordered


def test_speed_maps_to_length_scale_and_is_bounded() -> None:
    assert length_scale_for(2.0) == pytest.approx(0.5)
    assert length_scale_for(0.5, voice_length_scale=1.2) == pytest.approx(2.4)
    for bad in (0.49, 2.01, 0.0):
        with pytest.raises(EngineError, match="speed"):
            length_scale_for(bad)


def test_list_voices_needs_the_json_beside_the_onnx(tmp_path: Path) -> None:
    for name in (
        "b.onnx",
        "b.onnx.json",
        "a.onnx",
        "a.onnx.json",
        "lonely.onnx",
        "config-only.onnx.json",
        "x.txt",
    ):
        (tmp_path / name).write_bytes(b"")
    assert list_voices(tmp_path) == ["a", "b"]
    assert list_voices(tmp_path / "absent") == []


def test_missing_voice_files_raise_model_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match="not installed"):
        PiperEngine(tmp_path / "v.onnx", tmp_path / "v.onnx.json", voice_name="v")


def test_mp3_stream_of_odd_sized_pieces_decodes_to_same_tone_and_length() -> None:
    sr = 22050
    t = np.arange(int(sr * 1.7)) / sr
    tone = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    enc = Mp3StreamEncoder(sr, bitrate=64000)
    data = b"".join(enc.encode(tone[i : i + 1000]) for i in range(0, tone.size, 1000)) + enc.flush()
    assert data[0] == 0xFF and data[1] & 0xE0 == 0xE0  # starts with a bare MPEG frame sync, no container
    pcm, rate = decode_mp3(data)
    assert rate == sr
    assert abs(pcm.size / sr - tone.size / sr) < 0.15
    spectrum = np.abs(np.fft.rfft(pcm))
    assert np.fft.rfftfreq(pcm.size, 1 / sr)[int(np.argmax(spectrum))] == pytest.approx(440.0, abs=5.0)
    with pytest.raises(EngineError):
        enc.encode(tone)


def test_mp3_rejects_a_rate_mp3_cannot_carry() -> None:
    with pytest.raises(EngineError, match="MP3"):
        Mp3StreamEncoder(16001)


def test_voice_pace_learns_a_voice_slower_than_the_calibration_and_ignores_outliers() -> None:
    pace, counts = VoicePace(22050), PhonemeCounts(phonemes=60, pauses=2, units=1)
    predicted = counts.seconds(1.0, 22050)
    assert pace.estimate(counts, 1.0).expected_s == pytest.approx(predicted)
    for _ in range(30):
        pace.observe(counts, 1.0, 1.5 * predicted)
    assert pace.pace == pytest.approx(1.5, rel=0.01)
    est = pace.estimate(counts, 1.0)
    assert est.expected_s == pytest.approx(1.5 * predicted, rel=0.01)
    assert est.low_s < est.expected_s < est.high_s
    pace.observe(counts, 1.0, 20 * predicted)  # a broken observation, not a voice
    assert pace.pace == pytest.approx(1.5, rel=0.01)


# ------------------------------------------------------------------ the real voice


@pytest.mark.slow
def test_engine_satisfies_protocol(engine: PiperEngine) -> None:
    assert isinstance(engine, TtsEngine)
    assert (engine.engine, engine.model, engine.device, engine.sample_rate) == (
        "piper",
        "en_US-joe-medium",
        "cpu",
        22050,
    )


@pytest.mark.slow
def test_three_sentences_give_three_non_silent_chunks(engine: PiperEngine) -> None:
    chunks = list(engine.synthesize(TtsRequest(THREE_SENTENCES)))
    assert [c.text for c in chunks] == [
        "The weather is sunny today.",
        "We will walk to the park after lunch.",
        "Please bring some water and a hat.",
    ]
    for c in chunks:
        assert c.sample_rate == 22050 and c.pcm.dtype == np.float32 and c.pcm.ndim == 1
        assert 0.5 < c.pcm.size / c.sample_rate < 6.0
        assert _rms(c.pcm) > 0.02
        assert np.abs(c.pcm).max() <= 1.0


class _CountingSession:
    """Wraps the real onnxruntime session to observe how many sentences were synthesized so far."""

    def __init__(self, session: object) -> None:
        self._session = session
        self.runs = 0

    def run(self, *args: object, **kwargs: object) -> object:
        self.runs += 1
        return self._session.run(*args, **kwargs)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_first_chunk_is_yielded_before_later_sentences_are_synthesized(
    piper_voice: tuple[Path, Path],
) -> None:
    onnx, cfg = piper_voice
    own = PiperEngine(onnx, cfg, voice_name="en_US-joe-medium")  # private instance: we wrap its session
    counter = _CountingSession(own._voice.session)
    own._voice.session = counter  # type: ignore[assignment]
    stream = own.synthesize(TtsRequest(THREE_SENTENCES))
    first = next(stream)
    assert first.text == "The weather is sunny today."
    assert counter.runs == 1  # sentences two and three have not been synthesized yet
    rest = list(stream)
    assert len(rest) == 2 and counter.runs == 3


@pytest.mark.slow
def test_empty_or_unspeakable_text_raises_before_streaming(engine: PiperEngine) -> None:
    for text in ("", "   \n ", "?!..."):
        with pytest.raises(EngineError, match="nothing to speak"):
            engine.synthesize(TtsRequest(text))
    with pytest.raises(EngineError, match="speed"):
        engine.synthesize(TtsRequest("Hello there.", speed=3.0))


@pytest.mark.slow
def test_streamed_mp3_decodes_to_the_pcm_duration(engine: PiperEngine) -> None:
    enc = Mp3StreamEncoder(engine.sample_rate)
    pieces: list[bytes] = []
    total_samples = 0
    for chunk in engine.synthesize(TtsRequest(THREE_SENTENCES)):
        pieces.append(enc.encode(chunk.pcm))
        total_samples += chunk.pcm.size
    pieces.append(enc.flush())
    assert pieces[0], "the first sentence alone should already produce MP3 bytes to send"
    pcm_seconds = total_samples / engine.sample_rate
    assert mp3_duration_seconds(b"".join(pieces)) == pytest.approx(pcm_seconds, abs=0.15)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "speed"),
    [
        (THREE_SENTENCES, 1.0),
        (THREE_SENTENCES, 0.5),
        (THREE_SENTENCES, 2.0),
        ("123456 123456 123456", 1.0),  # 20 characters, six seconds of "one hundred twenty-three thousand ..."
        ("Call 555-0199 by 5 p.m. on Jan. 3rd, 2025.", 1.5),
    ],
)
def test_duration_estimate_brackets_the_real_duration(engine: PiperEngine, text: str, speed: float) -> None:
    est = engine.estimate(TtsRequest(text, speed))
    real = sum(len(c.pcm) for c in engine.synthesize(TtsRequest(text, speed))) / engine.sample_rate
    assert est.low_s <= real <= est.high_s, (est, real)
    assert est.low_s < est.expected_s < est.high_s


def test_faster_speech_is_shorter(engine: PiperEngine) -> None:
    text = "Reading the same sentence faster should take noticeably less time."

    def seconds(speed: float) -> float:
        return sum(c.pcm.size for c in engine.synthesize(TtsRequest(text, speed=speed))) / engine.sample_rate

    normal, fast = seconds(1.0), seconds(1.5)
    # Expected ratio is 1/1.5 = 0.67; duration noise (noise_w) moves it by a few percent at most.
    assert fast < 0.85 * normal


@pytest.mark.slow
def test_mp3_speech_is_intelligible_to_whisper(engine: PiperEngine, whisper_tiny_dir: Path) -> None:
    from faster_whisper import WhisperModel
    from scipy.signal import resample_poly

    text = (
        "The quick brown fox jumps over the lazy dog. "
        "Our meeting starts at nine in the morning. Please send me the report before Friday."
    )
    pcm = np.concatenate([c.pcm for c in engine.synthesize(TtsRequest(text))])
    decoded, rate = decode_mp3(encode_mp3(pcm, engine.sample_rate))  # what a client actually receives
    audio16k = resample_poly(decoded, 16000, rate).astype(np.float32)
    model = WhisperModel(str(whisper_tiny_dir), device="cpu", compute_type="int8", cpu_threads=2)
    segments, _info = model.transcribe(audio16k, language="en", beam_size=1, vad_filter=False)
    hypothesis = " ".join(s.text for s in segments)
    assert _wer(text, hypothesis) < 0.3, hypothesis


@pytest.mark.slow
def test_one_voice_serves_concurrent_requests(engine: PiperEngine) -> None:
    texts = ["The first caller asks about the weather. It is raining.", "The second caller wants a taxi now."]
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = [len(c.pcm) for c in engine.synthesize(TtsRequest(texts[i])) if _rms(c.pcm) > 0.02]
        except BaseException as exc:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results[0]) == 2 and len(results[1]) == 1


@pytest.mark.slow
def test_installed_voice_is_listed(piper_voice: tuple[Path, Path]) -> None:
    assert "en_US-joe-medium" in list_voices(piper_voice[0].parent)


def test_cuda_without_a_gpu_onnxruntime_serves_on_the_cpu_and_says_so(
    piper_voice: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider: there is nothing to fall back from")
    onnx, cfg = piper_voice
    with caplog.at_level("WARNING", logger="engines.piper_tts"):
        engine = PiperEngine(onnx, cfg, voice_name="en_US-joe-medium", device="cuda")
    assert engine.device == "cpu"
    assert any("runs on the CPU" in r.getMessage() for r in caplog.records)
    chunks = list(engine.synthesize(TtsRequest("The GPU box still speaks.")))
    assert chunks and np.abs(chunks[0].pcm).max() > 0.1
