"""Capability protocols and the frozen request/result types shared by every engine.

Engines never import Starlette: the server layer talks to them only through these types.
All `Protocol` methods are blocking and thread-safe; the server calls them off the event loop.
Audio crossing these boundaries is always mono float32 PCM at 16 kHz (`SAMPLE_RATE`) unless a
field says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

SAMPLE_RATE = 16_000

ProgressFn = Callable[[float], None]  # fraction done, 0.0 .. 1.0
StageFn = Callable[[str, float], None]  # (stage name, seconds): per-stage timings for the server's metrics
# Audio of one utterance (float32 mono 16 kHz) -> its 0-based speaker; one stateful function per stream.
SpeakerFn = Callable[[np.ndarray], int]


class EngineError(Exception):
    """An engine refused or failed a request for a reason the caller should see (bad audio, no model)."""


class ModelMissingError(EngineError):
    """A model named by a spec is not installed; the message says what to install."""


# ---------------------------------------------------------------- speech-to-text


@dataclass(frozen=True)
class Word:
    text: str  # as the model spells it, usually with a leading space
    start: float  # seconds
    end: float
    probability: float = 1.0
    speaker: int | None = None  # 0-based diarization cluster, numbered by first appearance


@dataclass(frozen=True)
class Segment:
    text: str
    start: float
    end: float
    words: tuple[Word, ...] = ()
    language: str | None = None
    speaker: int | None = None


@runtime_checkable
class AudioSource(Protocol):
    """Audio an engine reads piece by piece (float32 mono 16 kHz), e.g. a decoded upload on disk
    (engines.frontend.PreparedAudio), so a long recording never has to sit in memory whole."""

    @property
    def samples(self) -> int: ...

    def read(self, start: int, end: int) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class ArrayAudio:
    """An in-memory array as an AudioSource (reads are views, not copies)."""

    pcm: np.ndarray

    @property
    def samples(self) -> int:
        return int(self.pcm.size)

    def read(self, start: int, end: int) -> np.ndarray:
        return self.pcm[max(0, start) : max(0, end)]


def as_source(audio: np.ndarray | AudioSource) -> AudioSource:
    if isinstance(audio, np.ndarray):
        return ArrayAudio(np.ascontiguousarray(audio, dtype=np.float32).reshape(-1))
    return audio


@dataclass(frozen=True, eq=False)
class SttRequest:
    audio: np.ndarray | AudioSource  # float32 mono 16 kHz
    # Preferred languages: detection still runs and picks one of them unless another is clearly more probable.
    language_hints: tuple[str, ...] = ()
    language: str | None = None  # decode in this language, no detection (the caller knows it)
    task: Literal["transcribe", "translate"] = "transcribe"
    word_timestamps: bool = True
    terms: tuple[str, ...] = ()  # dictionary terms that steer decoding (hotwords / prompt)
    vad: bool = True
    # Speech spans (samples) found already, e.g. by the front end while decoding: the engine skips its VAD.
    speech: tuple[tuple[int, int], ...] | None = None
    group: object = None  # who the work is for: the batch queue shares the model fairly between groups
    prompt: str = ""  # text that precedes the audio (Whisper's initial prompt): style, spellings, context
    # Called on the request thread with each next run of segments, in timeline order, as soon as the chunks
    # holding them are decoded (the final result still carries every segment). Streaming responses use it.
    on_segments: Callable[[tuple[Segment, ...]], None] | None = None


@dataclass(frozen=True)
class SttResult:
    segments: tuple[Segment, ...]
    language: str
    language_probability: float
    duration: float  # seconds of input audio

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


MAX_ENDPOINT_DELAY_MS = (500, 3000)  # the range Soniox accepts for max_endpoint_delay_ms


@dataclass(frozen=True)
class StreamOptions:
    # Languages the speaker uses, preferred by the identification (a hinted language wins unless another is
    # clearly more probable, engines.whisper_text.choose_language); it runs again for every utterance.
    language_hints: tuple[str, ...] = ()
    language: str | None = None  # forced: every utterance is decoded in it, no identification
    task: Literal["transcribe", "translate"] = "transcribe"
    terms: tuple[str, ...] = ()
    enable_language_identification: bool = False  # tokens carry their utterance's language
    enable_endpoint_detection: bool = False  # updates flag the end of each utterance (an "<end>" token)
    endpoint_silence_s: float = 0.8  # silence that ends an utterance
    # Upper bound on the time from the end of speech to its endpoint (Soniox's max_endpoint_delay_ms,
    # MAX_ENDPOINT_DELAY_MS); None: endpoint_silence_s alone decides.
    max_endpoint_delay_ms: int | None = None
    # Shortest stretch of new audio between re-decodes; it grows with the decode cost under load. A word is
    # final at the first decode that hears enough audio after it, so this bounds how soon that happens.
    decode_interval_s: float = 1.0


@dataclass(frozen=True)
class StreamToken:
    text: str
    start_ms: int
    end_ms: int
    confidence: float
    is_final: bool
    language: str | None = None
    speaker: int | None = None


@dataclass(frozen=True)
class StreamUpdate:
    tokens: tuple[StreamToken, ...]  # newly final tokens (each exactly once) followed by current non-final ones
    final_audio_proc_ms: int
    total_audio_proc_ms: int
    endpoint: bool = False  # a pause finalized the utterance: the caller emits an "<end>" token
    finalized: bool = False  # a finalize request made every pending token final: the caller emits "<fin>"


class SttStream(Protocol):
    """Per-connection state; the engine's weights are shared between streams.

    Calls on one stream run in the order they are made; the blocking ones wait for `submit`'s Future.
    An implementation subclasses this and writes `submit`; the blocking calls are built on it here."""

    def submit(
        self, pcm: np.ndarray | None = None, *, finalize: bool = False, finish: bool = False
    ) -> Future[list[StreamUpdate]]:
        """`accept_all` (or `finish`) without blocking: no thread waits while the stream's decodes run, so an
        asyncio caller awaits `asyncio.wrap_future(stream.submit(pcm))`."""
        ...

    def accept(self, pcm: np.ndarray) -> StreamUpdate:
        """Adds audio; returns the new final words (each once) and the current non-final ones. Audio that
        spans pauses yields several updates (`accept_all`), merged here: an endpoint inside it is reported
        at the end of the update."""
        updates = self.accept_all(pcm)
        if len(updates) == 1:
            return updates[0]
        return StreamUpdate(
            tokens=tuple(t for u in updates[:-1] for t in u.tokens) + updates[-1].tokens,
            final_audio_proc_ms=updates[-1].final_audio_proc_ms,
            total_audio_proc_ms=updates[-1].total_audio_proc_ms,
            endpoint=any(u.endpoint for u in updates),
            finalized=updates[-1].finalized,
        )

    def accept_all(self, pcm: np.ndarray, *, finalize: bool = False) -> list[StreamUpdate]:
        """Like accept, but one update per utterance that ends inside `pcm` (a backlog spanning pauses);
        with `finalize`, the last update is `finalize()`'s."""
        return self.submit(pcm, finalize=finalize).result()

    def finalize(self) -> StreamUpdate:
        """Every pending token final at once (after one last decode), flagged `finalized`; the stream goes on."""
        return self.accept_all(np.zeros(0, dtype=np.float32), finalize=True)[-1]

    def finish(self) -> StreamUpdate:
        """Every pending token final; the stream accepts no more audio."""
        return self.submit(finish=True).result()[-1]


@runtime_checkable
class SttEngine(Protocol):
    engine: str  # "whisper"
    model: str  # "base", "tiny.en", ...
    device: str  # "cpu" | "cuda"

    @property
    def multilingual(self) -> bool: ...

    def check_language_hints(self, hints: Sequence[str], language: str | None = None) -> None:
        """Raises EngineError for hints (or a forced language) the model cannot honour (e.g. 'de' on an
        English-only model)."""
        ...

    def transcribe(self, request: SttRequest, progress: ProgressFn | None = None) -> SttResult: ...

    def open_stream(self, options: StreamOptions, *, speaker_fn: SpeakerFn | None = None) -> SttStream:
        """A realtime stream; `speaker_fn` (when given) labels each utterance's final words with a speaker."""
        ...


# ---------------------------------------------------------------- text-to-speech


@dataclass(frozen=True)
class TtsRequest:
    text: str
    speed: float = 1.0  # 1.0 = the voice's natural rate; >1 faster


@dataclass(frozen=True, eq=False)
class AudioChunk:
    pcm: np.ndarray  # float32 mono at `sample_rate`
    sample_rate: int
    text: str = ""  # the sentence this chunk speaks


@dataclass(frozen=True)
class DurationEstimate:
    """How long a text will sound, known before synthesis. The real duration is expected to lie in
    [low_s, high_s]: a request is refused only when even `low_s` is more than the balance covers."""

    low_s: float
    expected_s: float
    high_s: float


@runtime_checkable
class TtsEngine(Protocol):
    engine: str  # "piper"
    model: str  # voice name, e.g. "en_US-joe-medium"
    device: str
    sample_rate: int

    def synthesize(self, request: TtsRequest) -> Iterator[AudioChunk]:
        """Yields one chunk per sentence as soon as it is synthesized."""
        ...

    def estimate(self, request: TtsRequest) -> DurationEstimate:
        """The audio's duration, without synthesizing it (cheap enough to run before every request)."""
        ...


# ---------------------------------------------------------------- diarization


@dataclass(frozen=True)
class SpeakerTurn:
    start: float
    end: float
    speaker: int  # 0-based, numbered by first appearance


@dataclass(frozen=True, eq=False)
class DiarizationRequest:
    audio: np.ndarray  # float32 mono 16 kHz
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None


@dataclass(frozen=True)
class DiarizationResult:
    turns: tuple[SpeakerTurn, ...]
    num_speakers: int


@runtime_checkable
class Diarizer(Protocol):
    engine: str  # "builtin" | "pyannote"
    model: str
    device: str

    def diarize(self, request: DiarizationRequest, progress: ProgressFn | None = None) -> DiarizationResult: ...


@runtime_checkable
class SpeakerEncoder(Protocol):
    """Speaker embeddings (GE2E d-vectors): realtime sessions label speakers with it, utterance by utterance."""

    device: str

    def mel_frames(self, audio: np.ndarray, *, gain: float = 1.0) -> Any:
        """The encoder's input features of a stretch of audio (frames x mels, on the encoder's device);
        `gain` scales the samples first (loudness normalisation)."""
        ...

    def embed_windows(self, mels: Any, starts: np.ndarray, n_frames: int = ...) -> np.ndarray:
        """One unit-length embedding per window mels[s : s + n_frames]; shape (len(starts), dim)."""
        ...


# ---------------------------------------------------------------- translation


@dataclass(frozen=True)
class TranslationRequest:
    texts: tuple[str, ...]
    source: str  # ISO 639-1
    target: str
    terms: tuple[tuple[str, str], ...] = ()  # (source term, required target term)


@dataclass(frozen=True)
class TranslationResult:
    texts: tuple[str, ...]


@runtime_checkable
class Translator(Protocol):
    engine: str  # "ct2"
    model: str

    def pairs(self) -> Sequence[tuple[str, str]]:
        """Every (source, target) direction this translator serves."""
        ...

    def translate(self, request: TranslationRequest) -> TranslationResult: ...


# ---------------------------------------------------------------- the model provider


class ModelProvider(Protocol):
    """Loads each model on first use and shares it (engines.manager.ModelManager; fakes in the tests).

    Loading blocks (seconds) and may raise ModelMissingError; callers run it off the event loop.
    """

    def stt(self, model: str) -> SttEngine: ...

    def tts(self, voice: str) -> TtsEngine: ...

    def diarizer(self) -> Diarizer: ...

    def speaker_encoder(self) -> SpeakerEncoder: ...

    def translator(self) -> Translator: ...

    def loaded(self) -> dict[str, str]:
        """key -> device of every loaded model (GET /healthz)."""
        ...

    def instances(self) -> dict[str, Any]:
        """key -> loaded model, for the engines' own gauges on GET /metrics."""
        ...

    def close(self) -> None: ...
