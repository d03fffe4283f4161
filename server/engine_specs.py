"""Provider keys become engine selection: `sttApiKey`/`ttsApiKey` hold a spec like `whisper:base` or
`piper:en_US-joe-medium`. Absent (NULL) means the server default; `off` means not configured.

`resolve` is a pure function (the installed models are passed in); `EngineSpecs` is the one typed entry point
the server uses, holding the defaults from the settings and asking the catalog what is installed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from models.catalog import Catalog

OFF = "off"
STT_ENGINES = ("whisper",)
TTS_ENGINES = ("piper",)


@dataclass(frozen=True)
class Selection:
    configured: bool
    engine: str = ""
    model: str = ""

    @property
    def spec(self) -> str:
        return f"{self.engine}:{self.model}" if self.configured else OFF


class SpecError(ValueError):
    pass


def parse_spec(value: str) -> tuple[str, str]:
    v = value.strip()
    if ":" not in v:
        return v.lower(), ""
    engine, model = v.split(":", 1)
    return engine.strip().lower(), model.strip()


def resolve(value: str | None, default: str, engines: Sequence[str], installed: Sequence[str], what: str) -> Selection:
    """Turns an account's stored spec (or None) into the selection that serves it, or raises SpecError."""
    raw = default if value is None or value.strip() == "" else value
    if raw.strip().lower() == OFF:
        return Selection(False)
    engine, model = parse_spec(raw)
    if engine not in engines:
        raise SpecError(f"unknown {what} engine {engine!r}: use one of {', '.join(engines)} (or 'off')")
    if not model:
        raise SpecError(f"{what} spec {raw!r} names no model: use {engine}:<model>, installed: {', '.join(installed) or 'none'}")
    if model not in installed:
        raise SpecError(
            f"{what} model {model!r} is not installed (installed: {', '.join(installed) or 'none'}); "
            "add it with scripts/models import"
        )
    return Selection(True, engine, model)


class EngineSpecs:
    """Parses account specs against the server's defaults and the models installed right now."""

    def __init__(self, catalog: Catalog, *, default_stt: str, default_tts: str) -> None:
        self._catalog = catalog
        self._default_stt = default_stt
        self._default_tts = default_tts

    def stt(self, value: str | None) -> Selection:
        return resolve(value, self._default_stt, STT_ENGINES, self._catalog.whisper_models(), "STT")

    def tts(self, value: str | None) -> Selection:
        return resolve(value, self._default_tts, TTS_ENGINES, self._catalog.piper_voices(), "TTS")

    def check(self, kind: str, value: str | None) -> None:
        """Raises SpecError for a spec an admin may not store (kind: stt | tts); None (the default) is fine."""
        if value is not None:
            (self.stt if kind == "stt" else self.tts)(value)
