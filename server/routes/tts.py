"""POST /tts: stream MP3 as it is synthesized, or JSON metadata with `"json": true`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from server.auth import read_json, require_account
from server.errors import ApiError, bad_request
from server.services import services
from server.tts_service import SpeechJob, speech_json, validate_text

log = logging.getLogger("speech7.tts")


class SpeechStreamResponse(StreamingResponse):
    """Streams a TTS job and settles its fate deterministically when the response ends.

    When the client disconnects, Starlette abandons the body iterator: a suspended generator would run its
    cleanup only when garbage-collected, and one that never started would never run it (its reservation would
    stay taken). Closing it here, then releasing the job, makes "nothing stored, nothing charged" immediate.
    """

    def __init__(
        self, job: SpeechJob, body: AsyncIterator[bytes], headers: dict[str, str], *, media_type: str = "audio/mpeg",
    ) -> None:
        """`body` is what `job.open()` returned: the first audio is ready, so the status is known to be 200."""
        super().__init__(body, media_type=media_type, headers=headers)
        self._job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ApiError as exc:
            # The status went out with the first audio: the only way left to tell the client is to end the
            # transfer unfinished (the server closes the connection: an incomplete body), never to complete it.
            # The job has refunded and stored nothing; this is no server fault, so no traceback.
            log.log(logging.ERROR if exc.status >= 500 else logging.WARNING, "speech %s cut short: %s",
                    self._job.id, exc.message)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            await self._job.release()


def _speed(value: object) -> float:
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad_request("speed must be a number between 0.5 and 2.0")
    try:
        s = float(value)
    except ValueError:
        raise bad_request("speed must be a number between 0.5 and 2.0") from None
    if not 0.5 <= s <= 2.0:
        raise bad_request("speed must be a number between 0.5 and 2.0")
    return s


async def tts(request: Request) -> Response:
    body = await read_json(request)
    account = await require_account(request, body)
    svc = services(request)
    text = validate_text(body.get("text"), svc.settings.tts_max_words)
    voice = body.get("voice")
    if voice is not None and (not isinstance(voice, str) or not voice.strip()):
        raise bad_request("voice must be a voice name such as en_US-joe-medium")
    voice = voice.split(":", 1)[-1].strip() if isinstance(voice, str) else None
    speed = _speed(body.get("speed"))
    job = await svc.tts.prepare(account, text, voice, speed)
    if body.get("json") is True or str(body.get("json")).lower() == "true":
        record = await job.run_to_end()
        return JSONResponse(speech_json(record.row, full_text=True), headers={"X-Speech-Id": record.id})
    return SpeechStreamResponse(
        job,
        await job.open(),
        headers={
            "X-Speech-Id": job.id,
            "Content-Disposition": f'inline; filename="{job.id}.mp3"',
            "Cache-Control": "no-store",
        },
    )


routes = [Route("/tts", tts, methods=["POST"])]
