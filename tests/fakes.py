"""Fake engines for server-layer tests: they implement the engine protocols (engines.types) honestly, with
results derived from their input, so routes, billing and error handling run in milliseconds.

The fakes hear tones: every second of audio whose energy is above a floor is one "word" named after its
dominant frequency rounded to 100 Hz ("tone300"). Their speaker embeddings and diarization tell tones apart
by frequency, the TTS voice speaks a tone whose length follows the text. A test knows what the audio it sends
contains, so it knows exactly what the engine must have produced and can check that the server passed it
through, billed it and cleaned up, without a real model.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engines.batching import BatchStats
from engines.types import (
    SAMPLE_RATE,
    AudioChunk,
    DiarizationRequest,
    DiarizationResult,
    DurationEstimate,
    EngineError,
    ModelMissingError,
    ProgressFn,
    Segment,
    SpeakerFn,
    SpeakerTurn,
    StreamOptions,
    SttRequest,
    SttResult,
    TranslationRequest,
    TranslationResult,
    TtsRequest,
    Word,
    as_source,
)
from server.settings import Settings

if TYPE_CHECKING:
    from tests.fake_stream import FakeStream, StreamLoad

BLOCK = SAMPLE_RATE  # one word per second of voiced audio
VOICED_RMS = 0.01
TTS_RATE = 22050
TTS_SECONDS_PER_CHAR = 0.05


def tone(freq: float, seconds: float, rate: int = SAMPLE_RATE, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silence(seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    return np.zeros(int(seconds * rate), dtype=np.float32)


def dominant_hz(audio: np.ndarray, rate: int = SAMPLE_RATE) -> int:
    """The loudest frequency, rounded to 100 Hz (what the fakes "hear")."""
    spectrum = np.abs(np.fft.rfft(audio))
    return int(round(float(np.argmax(spectrum)) * rate / len(audio) / 100.0)) * 100


def voiced_blocks(audio: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(start sample, block) for every full second of audio louder than the floor."""
    for start in range(0, len(audio) - BLOCK + 1, BLOCK):
        block = audio[start : start + BLOCK]
        if float(np.sqrt(np.mean(np.square(block)))) >= VOICED_RMS:
            yield start, block


# Whisper "broken" and voice "broken-voice" are in the catalog but FakeModels cannot load them (ModelMissingError).
WHISPER = ("fake", "fake.en", "broken")
VOICES = ("voice-a", "broken-voice")


def fake_models() -> FakeModels:
    return FakeModels([FakeStt("fake"), FakeStt("fake.en", multilingual=False)], [FakeTts("voice-a")])


def fake_settings(root: Path, admin_key: str) -> Settings:
    """A server whose catalog lists the fake models, the multilingual fake STT and voice-a by default."""
    models_dir = install_placeholders(root / "models", WHISPER, VOICES)
    return Settings(data_dir=root / "data", admin_key=admin_key, models_dir=models_dir, default_stt="whisper:fake",
                    default_tts="piper:voice-a", job_poll_seconds=0.05)


def install_placeholders(root: Path, whisper: Sequence[str], piper: Sequence[str]) -> Path:
    """Catalog entries (empty files) for the fake models, so account specs resolve as for real ones."""
    for name in whisper:
        d = root / "whisper" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.bin").touch()
        (d / "config.json").write_text("{}")
    (root / "piper").mkdir(parents=True, exist_ok=True)
    for voice in piper:
        (root / "piper" / f"{voice}.onnx").touch()
        (root / "piper" / f"{voice}.onnx.json").write_text("{}")
    return root


# ---------------------------------------------------------------- speech-to-text


class FakeStt:
    """`SttEngine`. `fail` (when set) is raised by transcribe() and by streams, as an engine failure would be."""

    engine = "fake"
    device = "cpu"

    def __init__(self, model: str, *, multilingual: bool = True) -> None:
        self.model = model
        self._multilingual = multilingual
        self.fail: BaseException | None = None
        # Set `hold_longer_than` (seconds) and transcribe() of longer audio sets `holding` and waits for
        # `release`, as a long file keeps a model busy: what tests of fair sharing hold a request with.
        self.hold_longer_than: float | None = None
        self.holding = threading.Event()
        self.release = threading.Event()

    @property
    def multilingual(self) -> bool:
        return self._multilingual

    def check_language_hints(self, hints: Sequence[str], language: str | None = None) -> None:
        hints = (*hints, *((language,) if language else ()))
        if not self._multilingual and any(h != "en" for h in hints):
            raise EngineError(f"model {self.model!r} is English-only and cannot transcribe {', '.join(hints)}")

    def transcribe(self, request: SttRequest, progress: ProgressFn | None = None) -> SttResult:
        self.check_language_hints(request.language_hints, request.language)
        if self.fail is not None:
            raise self.fail
        segments: list[Segment] = []
        run: list[Word] = []
        source = as_source(request.audio)  # the server hands over the front end's decoded file
        if self.hold_longer_than is not None and source.samples > self.hold_longer_than * SAMPLE_RATE:
            self.holding.set()
            if not self.release.wait(timeout=60):
                raise EngineError("the test never released the held transcription")
        for start, block in voiced_blocks(source.read(0, source.samples)):
            word = Word(f" tone{dominant_hz(block)}", start / SAMPLE_RATE, (start + BLOCK) / SAMPLE_RATE, 0.9)
            if run and run[-1].end < word.start:  # a silent second ends the segment
                segments.append(_segment(run))
                run = []
            run.append(word)
        if run:
            segments.append(_segment(run))
        if progress:
            progress(1.0)
        language = request.language or (request.language_hints[0] if request.language_hints else "en")
        return SttResult(tuple(segments), language, 1.0, source.samples / SAMPLE_RATE)

    def open_stream(self, options: StreamOptions, *, speaker_fn: SpeakerFn | None = None) -> FakeStream:
        from tests.fake_stream import FakeStream

        self.streams.opened.append(options)
        return FakeStream(self, options, speaker_fn)

    @functools.cached_property
    def streams(self) -> StreamLoad:
        """How this engine's realtime streams run: tests slow them down or hold them (tests/fake_stream.py)."""
        from tests.fake_stream import StreamLoad

        return StreamLoad()

    def batch_stats(self) -> BatchStats:
        """What a loaded model reports on /metrics; the realtime admission reads its busy ratio."""
        return BatchStats(0, 0, 0, {}, 0, busy_ratio=self.streams.busy_ratio)


def _segment(words: list[Word]) -> Segment:
    return Segment("".join(w.text for w in words), words[0].start, words[-1].end, tuple(words))


class FakeSpeakerEncoder:
    """`SpeakerEncoder`: a window's embedding is a unit vector at an angle set by its dominant frequency."""

    device = "cpu"

    def mel_frames(self, audio: np.ndarray, *, gain: float = 1.0) -> np.ndarray:
        frames = len(audio) // 160  # 10 ms frames, as GE2E's
        return np.asarray(audio[: frames * 160] * gain, dtype=np.float32).reshape(frames, 160)

    def embed_windows(self, mels: Any, starts: np.ndarray, n_frames: int = 160) -> np.ndarray:
        out = []
        for s in starts:
            angle = dominant_hz(np.ravel(mels[int(s) : int(s) + n_frames])) / 2000.0 * np.pi
            out.append([np.cos(angle), np.sin(angle)])
        return np.asarray(out, dtype=np.float32)


class FakeDiarizer:
    """`Diarizer`: one speaker per distinct tone, numbered by first appearance."""

    engine = "fake"
    model = "tones"
    device = "cpu"

    def diarize(self, request: DiarizationRequest, progress: ProgressFn | None = None) -> DiarizationResult:
        speakers: dict[int, int] = {}
        turns = []
        source = as_source(request.audio)  # the server hands over the front end's decoded file
        for start, block in voiced_blocks(source.read(0, source.samples)):
            spk = speakers.setdefault(dominant_hz(block), len(speakers))
            turns.append(SpeakerTurn(start / SAMPLE_RATE, (start + BLOCK) / SAMPLE_RATE, spk))
        return DiarizationResult(tuple(turns), len(speakers))


class FakeTranslator:
    """`Translator` for de->en: marks the text it was given."""

    engine = "fake"
    model = "marker"

    def pairs(self) -> Sequence[tuple[str, str]]:
        return [("de", "en")]

    def translate(self, request: TranslationRequest) -> TranslationResult:
        return TranslationResult(tuple(f"[{request.target}] {t}" for t in request.texts))


# ---------------------------------------------------------------- text-to-speech


class FakeTts:
    """`TtsEngine`: one tone per sentence, TTS_SECONDS_PER_CHAR per character at speed 1. `fail_after` sentences
    (when set) it raises, as a voice crashing mid-text would. Its duration estimate is exact, times
    `estimate_factor` (below 1: a voice that speaks longer than estimated)."""

    engine = "fake"
    device = "cpu"
    sample_rate = TTS_RATE

    def __init__(self, voice: str) -> None:
        self.model = voice
        self.fail_after: int | None = None
        self.estimate_factor = 1.0

    def synthesize(self, request: TtsRequest) -> Iterator[AudioChunk]:
        return self._generate(self._sentences(request.text), request.speed)

    def estimate(self, request: TtsRequest) -> DurationEstimate:
        seconds = sum(len(s) for s in self._sentences(request.text)) * TTS_SECONDS_PER_CHAR / request.speed
        guess = seconds * self.estimate_factor
        return DurationEstimate(guess, guess, guess)

    @staticmethod
    def _sentences(text: str) -> list[str]:
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if re.search(r"\w", s)]
        if not sentences:  # validated on the call, like Piper, so the server refuses before streaming
            raise EngineError("text has nothing to speak (it is empty or only punctuation)")
        return sentences

    def _generate(self, sentences: list[str], speed: float) -> Iterator[AudioChunk]:
        for i, sentence in enumerate(sentences):
            if self.fail_after is not None and i >= self.fail_after:
                raise RuntimeError("the voice crashed")
            yield AudioChunk(tone(440, len(sentence) * TTS_SECONDS_PER_CHAR / speed, TTS_RATE), TTS_RATE, sentence)


# ---------------------------------------------------------------- the provider


class FakeModels:
    """`ModelProvider` over the fakes; a name it does not serve is a ModelMissingError, as a missing file is."""

    def __init__(self, stt: Sequence[FakeStt], tts: Sequence[FakeTts]) -> None:
        self.stt_engines = {e.model: e for e in stt}
        self.tts_engines = {e.model: e for e in tts}
        self._loaded: dict[str, Any] = {}
        self.closed = False

    def _load(self, key: str, engine: Any) -> Any:
        if engine is None:
            raise ModelMissingError(f"{key} is not installed")
        self._loaded[key] = engine
        return engine

    def stt(self, model: str) -> FakeStt:
        return self._load(f"whisper:{model}", self.stt_engines.get(model))  # type: ignore[no-any-return]

    def tts(self, voice: str) -> FakeTts:
        return self._load(f"piper:{voice}", self.tts_engines.get(voice))  # type: ignore[no-any-return]

    def diarizer(self) -> FakeDiarizer:
        return self._load("diarizer:fake", FakeDiarizer())  # type: ignore[no-any-return]

    def speaker_encoder(self) -> FakeSpeakerEncoder:
        return self._load("ge2e", FakeSpeakerEncoder())  # type: ignore[no-any-return]

    def translator(self) -> FakeTranslator:
        return self._load("translation:fake", FakeTranslator())  # type: ignore[no-any-return]

    def loaded(self) -> dict[str, str]:
        return {k: "cpu" for k in self._loaded}

    def instances(self) -> dict[str, Any]:
        return dict(self._loaded)

    def close(self) -> None:
        self.closed = True


def _conforms() -> None:
    """Never called: mypy checks here that each fake implements its protocol (`mypy tests/fakes.py`)."""
    from engines.types import Diarizer, ModelProvider, SpeakerEncoder, SttEngine, Translator, TtsEngine

    stt: SttEngine = FakeStt("x")
    tts: TtsEngine = FakeTts("x")
    diarizer: Diarizer = FakeDiarizer()
    encoder: SpeakerEncoder = FakeSpeakerEncoder()
    translator: Translator = FakeTranslator()
    models: ModelProvider = FakeModels([], [])
    del stt, tts, diarizer, encoder, translator, models
