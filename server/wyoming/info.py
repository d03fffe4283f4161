"""The Wyoming `info` answer to `describe`: one ASR program listing the installed Whisper models, one TTS
program listing the installed Piper voices, each with the languages it serves (what Home Assistant offers
in its pipeline settings), attribution, `installed` and version, read from the models directory on each
describe so models imported while the server runs appear without a restart."""

from __future__ import annotations

import functools
import json
from importlib import metadata
from pathlib import Path

from wyoming.info import AsrModel, AsrProgram, Attribution, Info, TtsProgram, TtsVoice

from models.catalog import Catalog

ASR_PROGRAM = "speech7-whisper"
TTS_PROGRAM = "speech7-piper"
# Multilingual Whisper vocabularies hold 51865 tokens (large-v3: 51866); English-only ones 51864.
_MULTILINGUAL_VOCAB = 51865
_SERVER = Attribution(name="speech7-local", url="")
_WHISPER = Attribution(name="OpenAI Whisper (faster-whisper / CTranslate2)", url="https://github.com/openai/whisper")
_PIPER = Attribution(name="Piper", url="https://github.com/OHF-Voice/piper1-gpl")


def server_version() -> str:
    try:
        return metadata.version("speech7-local")
    except metadata.PackageNotFoundError:
        return "0"


@functools.lru_cache(maxsize=64)
def _vocabulary_size(path: str, mtime: float) -> int:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return sum(1 for _ in fh)


def whisper_languages(model_dir: Path) -> list[str]:
    """The languages a Whisper model directory transcribes, judged by its vocabulary as faster-whisper does."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    vocab = model_dir / "vocabulary.txt"
    try:
        english_only = _vocabulary_size(str(vocab), vocab.stat().st_mtime) < _MULTILINGUAL_VOCAB
    except OSError:
        english_only = model_dir.name.endswith(".en")  # no vocabulary file: the naming convention
    return ["en"] if english_only else list(_LANGUAGE_CODES)


def piper_language(config_path: Path, voice: str) -> str:
    """The voice config's language code (e.g. en_US); older configs lack it, the voice name starts with it."""
    try:
        code = json.loads(config_path.read_text("utf-8")).get("language", {}).get("code")
    except (OSError, ValueError, AttributeError):
        code = None
    return code if isinstance(code, str) and code else voice.split("-", 1)[0]


def build_info(catalog: Catalog) -> Info:
    """Blocking (reads the models directory): call it in a thread."""
    version = server_version()
    models = [
        AsrModel(name=m, attribution=_WHISPER, installed=True, description=f"Whisper {m}", version=None,
                 languages=whisper_languages(catalog.whisper_dir(m)))
        for m in catalog.whisper_models()
    ]
    voices = [
        TtsVoice(name=v, attribution=_PIPER, installed=True, description=v, version=None,
                 languages=[piper_language(catalog.piper_voice(v)[1], v)])
        for v in catalog.piper_voices()
    ]
    asr = [AsrProgram(name=ASR_PROGRAM, attribution=_SERVER, installed=True, version=version, models=models,
                      description="Whisper speech-to-text on speech7-local", supports_transcript_streaming=True)]
    tts = [TtsProgram(name=TTS_PROGRAM, attribution=_SERVER, installed=True, version=version, voices=voices,
                      description="Piper text-to-speech on speech7-local")]
    return Info(asr=asr if models else [], tts=tts if voices else [])
