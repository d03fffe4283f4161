"""POST /v1/audio/transcriptions and /v1/audio/translations (multipart, OpenAI's fields).

Thin: authenticate (before a byte of the upload is read), stream the `file` part to disk under the STT upload
limit, parse the fields, then call the same TranscriptionService as POST /stt (same reservation, billing,
refunds, batching). Accepted and ignored: `temperature` (validated; decoding is beam search at 0),
`include[]`, `chunking_strategy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.openai_api.auth import require_account
from server.openai_api.errors import OpenAIError, invalid, openai_endpoint
from server.openai_api.formats import RESPONSE_FORMATS, render_response
from server.openai_api.models import stt_model
from server.openai_api.transcript_stream import stream_transcript
from server.services import services
from server.stt_options import LANG_RE, SttOptions
from server.uploads import receive_media

GRANULARITIES = ("word", "segment")


@dataclass(frozen=True)
class TranscriptionRequest:
    model: str | None  # an installed Whisper model; None: the account's engine
    options: SttOptions
    response_format: str
    granularities: tuple[str, ...]
    stream: bool


def _flag(value: str | None, name: str) -> bool:
    v = (value or "false").strip().lower()
    if v not in {"true", "false", "1", "0"}:
        raise invalid(f"{name} must be true or false", name)
    return v in {"true", "1"}


def parse_request(
    fields: Mapping[str, str], repeated: Mapping[str, Sequence[str]], task: str, installed: Sequence[str]
) -> TranscriptionRequest:
    model = stt_model(fields.get("model"), installed)
    fmt = (fields.get("response_format") or "json").strip().lower()
    if fmt not in RESPONSE_FORMATS:
        raise invalid(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", "response_format")
    # OpenAI's `language` names the language of the audio: it is decoded in it, without detection.
    forced: str | None = None
    language = (fields.get("language") or "").strip().lower()
    if language and task == "transcribe":  # a translation's source language is always detected
        if not LANG_RE.match(language):
            raise invalid(f"language must be an ISO-639-1 code such as en or de, not {language!r}", "language")
        forced = language.split("-")[0]
    raw_t = (fields.get("temperature") or "0").strip()
    try:
        temperature = float(raw_t)
    except ValueError:
        temperature = -1.0
    if not 0.0 <= temperature <= 1.0:
        raise invalid("temperature must be a number between 0 and 1", "temperature")
    granularities = tuple(
        dict.fromkeys(g.strip().lower() for key in ("timestamp_granularities[]", "timestamp_granularities")
                      for g in repeated.get(key, ()) if g.strip())
    )
    bad = [g for g in granularities if g not in GRANULARITIES]
    if bad:
        raise invalid(f"timestamp_granularities[] takes word and/or segment, not {bad[0]!r}", "timestamp_granularities")
    stream = _flag(fields.get("stream"), "stream")
    if stream and fmt not in {"json", "text"}:
        raise invalid("stream=true sends text events: use response_format json or text", "stream")
    prompt = (fields.get("prompt") or "").strip()
    options = SttOptions(language=forced, task=task, prompt=prompt, model=model)
    return TranscriptionRequest(model, options, fmt, granularities, stream)


async def _handle(request: Request, task: str) -> Response:
    d = services(request)
    account = await require_account(request, d)
    with d.upload_slots.hold(account.id):  # per-account cap on uploads in progress (429 beyond)
        upload = await receive_media(
            request, tmp_dir=d.lease.tmp_dir, limit_bytes=d.settings.stt_max_upload_bytes, file_field="file",
            idle_timeout_s=d.settings.upload_idle_timeout_s,
        )
    handed_over = False
    try:
        if upload.media is None:
            raise invalid("file is required: send the audio as the multipart field 'file'", "file", "missing_required_parameter")
        if upload.media.size == 0:
            raise OpenAIError(400, "empty_file", "The uploaded file is empty", param="file")
        req = parse_request(upload.fields, upload.repeated, task, d.catalog.whisper_models())
        if req.stream:
            handed_over = True  # the stream owns the upload now and removes it when the transcription ends
            return await stream_transcript(d.transcription, account, upload, req.options)
        transcript = await d.transcription.transcribe_file(account, upload.media.path, req.options, kind="stt")
    finally:
        if not handed_over:
            upload.discard()
    return render_response(transcript, req.response_format, task, req.granularities)


@openai_endpoint
async def transcriptions(request: Request) -> Response:
    return await _handle(request, "transcribe")


@openai_endpoint
async def translations(request: Request) -> Response:
    return await _handle(request, "translate")


routes = [
    Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
    Route("/v1/audio/translations", translations, methods=["POST"]),
]
