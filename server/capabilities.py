"""What an account can do on this server: engine selection from its provider keys, and what is installed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from engines.types import ModelProvider
from models.catalog import Catalog
from server.accounts import Account
from server.engine_specs import EngineSpecs, Selection, SpecError, is_off
from server.errors import ApiError
from server.settings import Settings

log = logging.getLogger("speech7.capabilities")


class Capabilities:
    def __init__(
        self, settings: Settings, catalog: Catalog, specs: EngineSpecs, models: ModelProvider, device: str
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.specs = specs
        self.models = models
        self.device = device

    def stt_selection(self, account: Account) -> Selection:
        return self.specs.stt(account.stt_engine)

    def tts_selection(self, account: Account, voice: str | None = None) -> Selection:
        return self.specs.voice(voice) if voice else self.specs.tts(account.tts_engine)

    def require_stt(self, account: Account, model: str | None = None) -> Selection:
        """The account's STT selection, or the installed Whisper `model` a request chose instead: an account
        with STT configured may use any installed model (minutes cost the same); 'off' allows none."""
        if model is not None:
            if is_off(account.stt_engine):
                raise ApiError(403, "stt_not_configured", "Speech-to-text is not configured for this account (sttApiKey is 'off')")
            installed = self.catalog.whisper_models()
            if model not in installed:
                raise ApiError(
                    400, "unknown_model",
                    f"model {model!r} is not installed here (installed: {', '.join(installed) or 'none'})",
                )
            return Selection(True, "whisper", model)
        try:
            sel = self.stt_selection(account)
        except SpecError as exc:
            raise ApiError(503, "engine_unavailable", str(exc)) from None
        if not sel.configured:
            raise ApiError(403, "stt_not_configured", "Speech-to-text is not configured for this account (sttApiKey is 'off')")
        return sel

    def require_stt_options(self, account: Account, *, diarize: bool, model: str | None = None) -> Selection:
        """require_stt, plus a diarizer when the request asks for speaker labels."""
        sel = self.require_stt(account, model)
        if diarize and self.settings.default_diarizer == "off":
            raise ApiError(400, "diarization_not_configured", "Speaker diarization is turned off on this server")
        return sel

    def require_tts(self, account: Account, voice: str | None = None) -> Selection:
        if voice is not None and is_off(account.tts_engine):
            raise ApiError(403, "tts_not_configured", "Text-to-speech is not configured for this account (ttsApiKey is 'off')")
        try:
            sel = self.tts_selection(account, voice)
        except SpecError as exc:
            raise ApiError(400 if voice else 503, "unknown_voice" if voice else "engine_unavailable", str(exc)) from None
        if not sel.configured:
            raise ApiError(403, "tts_not_configured", "Text-to-speech is not configured for this account (ttsApiKey is 'off')")
        return sel

    def translation_pairs(self) -> list[list[str]]:
        try:
            return [list(p) for p in self.models.translator().pairs()]
        except Exception as exc:  # a broken translation dir must not break capabilities
            log.warning("translation models unavailable: %s", exc)
            return []

    def for_account(self, account: Account) -> dict[str, Any]:
        def describe(fn: Callable[[Account], Selection]) -> dict[str, Any]:
            try:
                sel = fn(account)
            except SpecError as exc:
                return {"configured": False, "engine": None, "model": None, "spec": None, "source": None,
                        "device": self.device, "error": str(exc)}
            # Which engine serves the capability, and why: the account's provider key names it ("account"),
            # or the server's default serves it ("default": no provider key, or a hosted provider's key).
            return {
                "configured": sel.configured,
                "engine": sel.engine or None,
                "model": sel.model or None,
                "spec": sel.spec if sel.configured else None,
                "source": sel.source,
                "device": self.device,
            }

        diar = self.settings.default_diarizer
        diar_engine, _, diar_model = diar.partition(":")
        diar_ok = diar != "off" and (
            self.catalog.ge2e_weights().is_file() if diar_engine == "builtin" else diar_model in self.catalog.pyannote_pipelines()
        )
        stt = describe(self.stt_selection)
        # What a request may send as `model` (POST /stt, /subtitle, the realtime config): nothing when STT is off.
        choices = [
            {"model": m, "multilingual": self.catalog.whisper_multilingual(m)} for m in self.catalog.whisper_models()
        ] if stt["configured"] or stt.get("error") else []
        return {
            "stt": {**stt, "models": self.catalog.whisper_models(), "choices": choices},
            "tts": {**describe(self.tts_selection), "voices": self.catalog.piper_voices()},
            "diarization": {
                "configured": diar_ok,
                "engine": diar_engine if diar != "off" else None,
                "model": (diar_model or "ge2e") if diar != "off" else None,
                "device": self.device,
            },
            "translation": {
                "configured": True,
                "engine": "ct2",
                "toEnglish": "whisper",  # any language -> English through Whisper's translate task
                "pairs": self.translation_pairs(),
            },
            "minutesRemaining": account.minutes,
            "isAdmin": account.is_admin,
        }
