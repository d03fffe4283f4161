"""GET /speeches and GET /speeches/:speechId (details, or the MP3 with ?download=1)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.auth import require_account
from server.errors import bad_request
from server.services import services
from server.storage.http import blob_response
from server.stt_options import parse_bool
from server.tts_service import speech_json


async def speeches_index(request: Request) -> JSONResponse:
    account = await require_account(request)
    raw = request.query_params.get("limit", "50")
    try:
        limit = max(1, min(500, int(raw)))
    except ValueError:
        raise bad_request("limit must be an integer") from None
    return JSONResponse({"speeches": await services(request).tts.list_speeches(account.id, limit)})


async def speech_detail(request: Request) -> Response:
    account = await require_account(request)
    service = services(request).tts
    row = await service.get_speech(account.id, request.path_params["speech_id"])
    if parse_bool(request.query_params.get("download"), "download"):
        audio = await service.open_audio(row["id"])
        return blob_response(audio, "audio/mpeg", f"speech-{row['id']}.mp3")
    return JSONResponse(speech_json(row, full_text=True))


routes = [
    Route("/speeches", speeches_index, methods=["GET"]),
    Route("/speeches/{speech_id}", speech_detail, methods=["GET"]),
]
