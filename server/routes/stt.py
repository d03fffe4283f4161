"""POST /stt: transcribe uploaded audio or video."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.disconnect import unless_disconnected
from server.media_request import receive_authenticated_media
from server.services import services
from server.stt_options import parse_bool, parse_stt_options
from server.transcription import stt_json


async def stt(request: Request) -> JSONResponse:
    svc = services(request)
    account, upload = await receive_authenticated_media(request, svc.settings.stt_max_upload_bytes)
    try:
        options = parse_stt_options(upload.fields)
        as_array = parse_bool(upload.fields.get("json"), "json")
        assert upload.media is not None
        transcript = await unless_disconnected(
            request, svc.transcription.transcribe_file(account, upload.media.path, options, kind="stt")
        )
    finally:
        upload.discard()
    body = stt_json(transcript, options)
    if as_array:
        return JSONResponse(body["transcript"])
    return JSONResponse(body)


routes = [Route("/stt", stt, methods=["POST"])]
