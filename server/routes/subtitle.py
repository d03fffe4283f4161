"""POST /subtitle (SRT/WebVTT download) and the async jobs: POST /subtitle/jobs, GET status, GET file."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.auth import require_account
from server.disconnect import unless_disconnected
from server.media_request import receive_authenticated_media
from server.services import services
from server.storage.http import blob_response
from server.stt_options import parse_stt_options
from server.subtitle_render import parse_format, render


def _download_name(upload_name: str | None, ext: str) -> str:
    stem = (upload_name or "subtitles").rsplit(".", 1)[0]
    safe = "".join(c for c in stem if c.isalnum() or c in "-_ .")[:80].strip() or "subtitles"
    return f"{safe}.{ext}"


async def subtitle(request: Request) -> Response:
    svc = services(request)
    account, upload = await receive_authenticated_media(request, svc.settings.subtitle_max_upload_bytes)
    try:
        options = parse_stt_options(upload.fields)
        fmt = parse_format(upload.fields)
        assert upload.media is not None
        transcript = await unless_disconnected(
            request, svc.transcription.transcribe_file(account, upload.media.path, options, kind="subtitle")
        )
        name = upload.media.filename
    finally:
        upload.discard()
    body = render(transcript, fmt, options.speaker_labels, options.diarize)
    return Response(
        body,
        media_type=fmt.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{_download_name(name, fmt.extension)}"',
            "X-Minutes-Used": str(transcript.minutes_used),
            "X-Duration-Ms": str(int(transcript.duration_s * 1000)),
        },
    )


async def create_job(request: Request) -> JSONResponse:
    svc = services(request)
    account, upload = await receive_authenticated_media(request, svc.settings.stt_max_upload_bytes)
    jobs = svc.subtitle_jobs
    try:
        options = parse_stt_options(upload.fields)
        fmt = parse_format(upload.fields)
        assert upload.media is not None
        view = await jobs.create(account, upload.media, options, fmt)
    finally:
        upload.discard()  # the service moved the file away if it kept it
    return JSONResponse(view)


async def job_status(request: Request) -> JSONResponse:
    account = await require_account(request)
    jobs = services(request).subtitle_jobs
    return JSONResponse(await jobs.status(account.id, request.path_params["job_id"]))


async def job_file(request: Request) -> Response:
    account = await require_account(request)
    jobs = services(request).subtitle_jobs
    result, fmt, upload_name = await jobs.result_file(account.id, request.path_params["job_id"])
    media_type = "text/vtt; charset=utf-8" if fmt == "vtt" else "application/x-subrip; charset=utf-8"
    return blob_response(result, media_type, _download_name(upload_name, fmt))


routes = [
    Route("/subtitle", subtitle, methods=["POST"]),
    Route("/subtitle/jobs", create_job, methods=["POST"]),
    Route("/subtitle/jobs/{job_id}", job_status, methods=["GET"]),
    Route("/subtitle/jobs/{job_id}/file", job_file, methods=["GET"]),
]
