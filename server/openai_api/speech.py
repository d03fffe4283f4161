"""POST /v1/audio/speech: OpenAI's JSON body, audio streamed as it is synthesised.

The same TtsService as POST /tts prepares the job (engine check, voice load, text check, minutes reserved:
every refusal comes before a byte) and streams it sentence by sentence; the client's format is encoded from
the same PCM beside the MP3 the service stores, so the speech also appears under GET /speeches and is billed
exactly like /tts (settled when every byte is out, refunded when the client leaves early).

`instructions` is accepted and ignored (Piper voices have no style prompt); `stream_format` may only be
`audio` (the SSE variant is not offered). `speed` must lie in OpenAI's 0.25-4.0, and Piper serves 0.5-2.0:
a value between those ranges is refused with a message naming the supported one rather than altered.
"""

from __future__ import annotations

import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engines.audio_encoders import FORMATS, open_encoder
from engines.piper_tts import MAX_SPEED, MIN_SPEED
from server.auth import read_json
from server.errors import ApiError
from server.openai_api.auth import require_account
from server.openai_api.errors import OpenAIError, invalid, openai_endpoint
from server.openai_api.models import tts_voice
from server.routes.tts import SpeechStreamResponse
from server.services import services
from server.tts_service import validate_text


def parse_speed(value: Any) -> float:
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid("speed must be a number from 0.25 to 4.0", "speed")
    speed = float(value)
    if not 0.25 <= speed <= 4.0:
        raise invalid("speed must be a number from 0.25 to 4.0", "speed")
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise invalid(f"this server's voices speak at speed {MIN_SPEED:g} to {MAX_SPEED:g}", "speed", "unsupported_value")
    return speed


@openai_endpoint
async def speech(request: Request) -> Response:
    d = services(request)
    account = await require_account(request, d)
    body = await read_json(request)
    try:
        text = validate_text(body.get("input"), d.settings.tts_max_words)
    except ApiError as exc:
        raise OpenAIError(400, exc.code, exc.message.replace("text", "input", 1), param="input") from None
    fmt = body.get("response_format") or "mp3"
    if fmt not in FORMATS:
        raise invalid(f"response_format must be one of {', '.join(FORMATS)}", "response_format")
    if body.get("stream_format") not in (None, "audio"):
        raise invalid("stream_format: only 'audio' is supported here", "stream_format", "unsupported_value")
    speed = parse_speed(body.get("speed"))
    voice = tts_voice(body.get("model"), body.get("voice"), d.catalog.piper_voices())
    job = await d.tts.prepare(account, text, voice, speed)
    audio = await job.open(None if fmt == "mp3" else functools.partial(open_encoder, fmt))
    return SpeechStreamResponse(
        job,
        audio,
        headers={
            "X-Speech-Id": job.id, "Cache-Control": "no-store",
            "Content-Disposition": f'inline; filename="speech.{fmt}"',
        },
        media_type=FORMATS[fmt].media_type,
    )


routes = [Route("/v1/audio/speech", speech, methods=["POST"])]
