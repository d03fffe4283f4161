"""A stored object as an HTTP download, streamed chunk by chunk from whichever store holds it."""

from __future__ import annotations

from urllib.parse import quote

from starlette.responses import StreamingResponse

from server.storage.base import OpenBlob


def attachment(filename: str) -> str:
    """Content-Disposition for a download (RFC 6266: a non-ASCII name goes in filename*)."""
    quoted = quote(filename)
    return f"attachment; filename*=utf-8''{quoted}" if quoted != filename else f'attachment; filename="{filename}"'


def blob_response(blob: OpenBlob, media_type: str, filename: str) -> StreamingResponse:
    # The length is known up front: the client sees a progress bar, and a cut-off read is a visible error.
    headers = {"Content-Length": str(blob.size), "Content-Disposition": attachment(filename)}
    return StreamingResponse(blob.chunks(), media_type=media_type, headers=headers)
