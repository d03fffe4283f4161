"""Authenticated media uploads shared by /stt, /subtitle and /subtitle/jobs."""

from __future__ import annotations

import time
from pathlib import Path

from starlette.requests import Request

from server.accounts import Account
from server.auth import key_from_request, require_account
from server.errors import bad_request, unprocessable
from server.services import services
from server.uploads import ParsedUpload, receive_media


async def receive_authenticated_media(request: Request, limit_bytes: int) -> tuple[Account, ParsedUpload]:
    """A key in the header or query is checked before a byte of the upload is read (401 costs nothing);
    a key sent as an `apiKey` form field is checked after parsing. The temp file is removed on any error."""
    early = await require_account(request) if key_from_request(request) else None
    tmp = Path(services(request).settings.data_dir) / "tmp"
    began = time.perf_counter()
    upload = await receive_media(request, tmp_dir=tmp, limit_bytes=limit_bytes)
    services(request).metrics.observe_stage("upload", time.perf_counter() - began)
    try:
        account = early or await require_account(request, upload.fields)
        if upload.media is None:
            raise bad_request("Missing the media file: send it as multipart field 'audio'")
        if upload.media.size == 0:
            raise unprocessable("The uploaded file is empty", code="empty_media")
    except BaseException:
        upload.discard()
        raise
    return account, upload
