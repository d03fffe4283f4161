"""Authenticated media uploads shared by /stt, /subtitle and /subtitle/jobs.

Who pays is known before the upload reaches the disk: a key in the header or the query is checked before a
byte of the body is read; without one, the body is read only up to the file part (and at most 1 MB) looking
for an `apiKey` form field, then 401. Each account receives at most `S7_MAX_UPLOADS_PER_ACCOUNT` uploads
at once (429 beyond)."""

from __future__ import annotations

import contextlib
import time

from starlette.requests import Request

from server.accounts import Account
from server.auth import key_from_request, require_account
from server.errors import bad_request, unauthorized, unprocessable
from server.services import services
from server.uploads import ParsedUpload, receive_media

KEY_FIELD_MISSING = (
    "Missing API key: send an x-api-key header, ?apiKey=, or an apiKey form field before the file"
)


async def receive_authenticated_media(request: Request, limit_bytes: int) -> tuple[Account, ParsedUpload]:
    """The caller's account and its upload (the temp file is removed on any error)."""
    svc = services(request)
    payer: Account | None = await require_account(request) if key_from_request(request) else None
    with contextlib.ExitStack() as slot:
        if payer is not None:
            slot.enter_context(svc.upload_slots.hold(payer.id))

        async def gate(fields: dict[str, str]) -> None:
            nonlocal payer
            if not fields.get("apiKey"):
                raise unauthorized(KEY_FIELD_MISSING)
            payer = await require_account(request, fields)
            slot.enter_context(svc.upload_slots.hold(payer.id))

        began = time.perf_counter()
        upload = await receive_media(
            request, tmp_dir=svc.lease.tmp_dir, limit_bytes=limit_bytes, idle_timeout_s=svc.settings.upload_idle_timeout_s,
            gate=None if payer is not None else gate,
        )
    svc.metrics.observe_stage("upload", time.perf_counter() - began)
    try:
        assert payer is not None  # the gate ran (and refused a body without a key)
        if upload.media is None:
            raise bad_request("Missing the media file: send it as multipart field 'audio'")
        if upload.media.size == 0:
            raise unprocessable("The uploaded file is empty", code="empty_media")
    except BaseException:
        upload.discard()
        raise
    return payer, upload
