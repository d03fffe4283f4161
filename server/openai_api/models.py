"""OpenAI model and voice names -> this server's engines, and GET /v1/models.

Names a request may use for `model`:
  * an installed engine, as its spec (`whisper:base`, `piper:en_US-joe-medium`) or bare (`base`,
    `en_US-joe-medium`): that model serves the request, billed to the caller like any other;
  * OpenAI's names (`whisper-1`, `gpt-4o-transcribe`, `tts-1`, ...) or the bare engine (`whisper`, `piper`):
    the account's own engine, i.e. what its sttApiKey/ttsApiKey selects (or the server default).
`voice` is an installed Piper voice, or one of OpenAI's voice names, which speak with the voice the model
names or else the account's voice. The resolution is pure; the listing reads the catalog.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from server.openai_api.auth import require_account
from server.openai_api.errors import OpenAIError, invalid, openai_endpoint
from server.services import Services, services

STT_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "whisper")
TTS_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "piper")
OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse", "marin", "cedar",
)
OWNER = "speech7-local"


def _installed(name: str, engine: str, installed: Sequence[str]) -> str | None:
    bare = name[len(engine) + 1:] if name.lower().startswith(engine + ":") else name
    return bare if bare in installed else None


def _unknown_model(name: str, installed: Sequence[str], engine: str, aliases: Sequence[str]) -> OpenAIError:
    names = [f"{engine}:{m}" for m in installed] + list(aliases)
    return OpenAIError(404, "model_not_found", f"The model {name!r} does not exist here: use one of {', '.join(names)}",
                       param="model")


def stt_model(name: Any, installed: Sequence[str]) -> str | None:
    """The Whisper model a request names; None for the account's own engine."""
    if not isinstance(name, str) or not name.strip():
        raise invalid("model is required (e.g. whisper-1 for this account's engine)", "model", "missing_required_parameter")
    name = name.strip()
    if name.lower() in STT_ALIASES:
        return None
    found = _installed(name, "whisper", installed)
    if found is None:
        raise _unknown_model(name, installed, "whisper", STT_ALIASES)
    return found


def tts_voice(model: Any, voice: Any, installed: Sequence[str]) -> str | None:
    """The Piper voice to speak with; None for the account's own voice."""
    if not isinstance(model, str) or not model.strip():
        raise invalid("model is required (e.g. tts-1 for this account's voice)", "model", "missing_required_parameter")
    model = model.strip()
    model_voice = None
    if model.lower() not in TTS_ALIASES:
        model_voice = _installed(model, "piper", installed)
        if model_voice is None:
            raise _unknown_model(model, installed, "piper", TTS_ALIASES)
    if isinstance(voice, dict):  # newer clients may send {"id": "..."}
        voice = voice.get("id")
    if not isinstance(voice, str) or not voice.strip():
        raise invalid("voice is required (e.g. alloy for this account's voice)", "voice", "missing_required_parameter")
    voice = voice.strip()
    named = _installed(voice, "piper", installed)
    if named is not None:
        return named
    if voice.lower() in OPENAI_VOICES:
        return model_voice
    raise invalid(
        f"Unknown voice {voice!r}: use an installed voice ({', '.join(installed) or 'none'}) or one of OpenAI's "
        f"names ({', '.join(OPENAI_VOICES)}), which speak with this account's voice", "voice",
    )


def model_list(d: Services) -> list[dict[str, Any]]:
    """Installed engines first (their ids are what `model` accepts), then OpenAI's names that map to them."""

    def entry(model_id: str, path: Any = None) -> dict[str, Any]:
        try:
            created = int(path.stat().st_mtime) if path is not None else int(time.time())
        except OSError:
            created = int(time.time())
        return {"id": model_id, "object": "model", "created": created, "owned_by": OWNER}

    out = [entry(f"whisper:{m}", d.catalog.whisper_dir(m)) for m in d.catalog.whisper_models()]
    out += [entry(f"piper:{v}", d.catalog.piper_voice(v)[0]) for v in d.catalog.piper_voices()]
    out += [entry(a) for a in STT_ALIASES + TTS_ALIASES]
    return out


@openai_endpoint
async def list_models(request: Request) -> JSONResponse:
    d = services(request)
    await require_account(request, d)
    return JSONResponse({"object": "list", "data": model_list(d)})


@openai_endpoint
async def get_model(request: Request) -> JSONResponse:
    d = services(request)
    await require_account(request, d)
    wanted = request.path_params["model_id"]
    for m in model_list(d):
        if m["id"] == wanted:
            return JSONResponse(m)
    raise OpenAIError(404, "model_not_found", f"The model {wanted!r} does not exist", param="model")
