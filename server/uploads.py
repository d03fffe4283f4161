"""Multipart uploads streamed straight to disk with a size limit enforced while the bytes arrive.

The media part (`audio`) is written to a temporary file under the data directory; other fields are kept as
small strings. A request over the limit is refused (413) as soon as the limit is crossed, and its partial
file is removed; nothing is ever buffered whole in memory. A body that stalls is dropped (408), and a caller
that does not know yet who pays (no key in the header or query) passes a gate that sees the form fields
before the file: nothing reaches the disk before it passes.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import python_multipart
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from server.errors import ApiError, bad_request, too_large, unsupported_media

CLOSE = {"Connection": "close"}
MAX_FIELD_BYTES = 256 * 1024
MAX_FIELDS = 200
MEDIA_EXTENSIONS = {
    ".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".webm", ".m4a", ".aac", ".mp4", ".mov",
    ".mkv", ".mka", ".wma", ".aiff", ".aif", ".amr", ".3gp", ".avi", ".m4v", ".mpeg", ".mpg", ".ts",
}


def media_type_allowed(content_type: str, filename: str) -> bool:
    """audio/* and video/* are accepted; a generic or missing type is accepted for a media file extension
    (browsers and some clients send application/octet-stream for .opus, .mkv, ...)."""
    ct = content_type.split(";")[0].strip().lower()
    if ct.startswith("audio/") or ct.startswith("video/"):
        return True
    if ct in {"", "application/octet-stream"}:
        return Path(filename).suffix.lower() in MEDIA_EXTENSIONS
    return False


@dataclass
class UploadedMedia:
    path: Path
    filename: str
    content_type: str
    size: int

    def discard(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


@dataclass
class ParsedUpload:
    fields: dict[str, str] = field(default_factory=dict)  # a repeated field keeps its last value here
    media: UploadedMedia | None = None
    repeated: dict[str, list[str]] = field(default_factory=dict)  # every value, in order (`name[]` lists)

    def discard(self) -> None:
        if self.media is not None:
            self.media.discard()


# Before the caller knows who is paying (no key in the header or the query), at most this much of a body is
# read looking for an `apiKey` form field, which must come before the file part; then 401.
GATE_LIMIT_BYTES = 1024 * 1024
# The gate: called once, with the form fields read so far, before the first byte of the file is written (or
# at the end of a body without a file); it raises (401, 429, ...) to refuse the upload.
Gate = Callable[[dict[str, str]], Awaitable[None]]


async def body_chunks(request: Request, idle_timeout_s: float) -> AsyncIterator[bytes]:
    """The request body as it arrives; a body that stalls longer than `idle_timeout_s` is dropped (408)."""
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), idle_timeout_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ApiError(408, "request_timeout", f"The request body stalled: no data for {idle_timeout_s:g} s",
                           headers=CLOSE) from None
        yield chunk


async def receive_media(
    request: Request, *, tmp_dir: Path, limit_bytes: int, file_field: str = "audio", idle_timeout_s: float = 60.0,
    gate: Gate | None = None,
) -> ParsedUpload:
    """Parses a multipart request; raises 415/413/408/400 (or the gate's refusal) and leaves no file behind.

    With a `gate`, nothing is written to disk before it passes, and it is called after at most
    GATE_LIMIT_BYTES of the body. A refusal before the whole body was read closes the connection, so the
    client stops sending."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise unsupported_media(f"Send the media as multipart/form-data with a file field named {file_field!r}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise bad_request("multipart/form-data without a boundary")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit_bytes + 1024 * 1024:
        refusal = too_large(limit_bytes)
        refusal.headers.update(CLOSE)
        raise refusal

    result = ParsedUpload()
    # "pending": the file's bytes held in memory (one network chunk at most) until the gate has passed.
    state: dict = {"name": None, "filename": None, "ctype": "", "buf": bytearray(), "fh": None, "path": None,
                   "size": 0, "error": None, "headers": {}, "gated": gate is None, "pending": None,
                   "file_ended": False}

    def open_file() -> None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        path = tmp_dir / f"up_{secrets.token_hex(12)}"
        state["path"] = path
        state["fh"] = open(path, "wb")

    def close_file() -> None:
        state["fh"].close()
        state["fh"] = None
        result.media = UploadedMedia(state["path"], state["filename"] or "upload", state["ctype"], state["size"])

    def on_part_begin() -> None:
        state.update(name=None, filename=None, ctype="", buf=bytearray(), headers={})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hf"] = state.get("hf", b"") + data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hv"] = state.get("hv", b"") + data[start:end]

    def on_header_end() -> None:
        state["headers"][state.pop("hf", b"").lower()] = state.pop("hv", b"")

    def on_headers_finished() -> None:
        disp, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["name"] = opts.get(b"name", b"").decode("utf-8", "replace")
        fn = opts.get(b"filename")
        state["filename"] = fn.decode("utf-8", "replace") if fn is not None else None
        state["ctype"] = state["headers"].get(b"content-type", b"").decode("latin-1")
        if state["filename"] is not None:
            if state["name"] != file_field:
                state["error"] = bad_request(f"unexpected file field {state['name']!r}; send the media as {file_field!r}")
                return
            if result.media is not None or state["pending"] is not None:
                state["error"] = bad_request(f"send exactly one {file_field!r} file")
                return
            if not media_type_allowed(state["ctype"], state["filename"]):
                state["error"] = unsupported_media(
                    f"Unsupported media type {state['ctype'] or 'unknown'!r}: send audio/* or video/*"
                )
                return
            if state["gated"]:
                open_file()
            else:
                state["pending"] = bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["error"] is not None:
            return
        n = end - start
        if state["fh"] is not None or state["pending"] is not None:
            state["size"] += n
            if state["size"] > limit_bytes:
                state["error"] = too_large(limit_bytes)
            elif state["fh"] is not None:
                state["fh"].write(data[start:end])
            else:
                state["pending"] += data[start:end]
        else:
            if len(state["buf"]) + n > MAX_FIELD_BYTES:
                state["error"] = bad_request(f"form field {state['name']!r} is too long")
                return
            state["buf"] += data[start:end]

    def on_part_end() -> None:
        if state["error"] is not None:
            return
        if state["fh"] is not None:
            close_file()
        elif state["pending"] is not None:
            state["file_ended"] = True  # a small file that arrived whole before the gate: stored after it
        else:
            if len(result.fields) >= MAX_FIELDS:
                state["error"] = bad_request("too many form fields")
                return
            value = state["buf"].decode("utf-8", "replace")
            result.fields[state["name"]] = value
            result.repeated.setdefault(state["name"], []).append(value)

    async def pass_gate() -> None:
        assert gate is not None
        await gate(dict(result.fields))
        state["gated"] = True
        pending, state["pending"] = state["pending"], None
        if pending is not None:
            open_file()
            state["fh"].write(pending)
            if state["file_ended"]:
                close_file()

    parser = python_multipart.MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
            "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        },
    )
    finished = False
    received = 0
    try:
        async for chunk in body_chunks(request, idle_timeout_s):
            received += len(chunk)
            parser.write(chunk)
            if state["error"] is not None:
                raise state["error"]
            if not state["gated"] and (state["pending"] is not None or received > GATE_LIMIT_BYTES):
                await pass_gate()  # the file has begun (the key must have come before it), or 1 MB went by
        parser.finalize()
        if state["error"] is not None:
            raise state["error"]
        finished = True
        if not state["gated"]:  # a small body without a file
            await pass_gate()
    except ApiError as exc:
        _cleanup(state, result)
        if not finished and "connection" not in {k.lower() for k in exc.headers}:
            exc.headers.update(CLOSE)  # refused before the end of the body: stop the client sending the rest
        raise
    except Exception as exc:  # malformed multipart, client disconnect, ...
        _cleanup(state, result)
        raise bad_request(f"could not read the multipart upload: {exc}") from None
    if state["fh"] is not None:  # stream ended mid-part
        _cleanup(state, result)
        raise bad_request("the upload ended before the file was complete")
    return result


def _cleanup(state: dict, result: ParsedUpload) -> None:
    state["pending"] = None
    if state.get("fh") is not None:
        state["fh"].close()
    if state.get("path") is not None:
        try:
            os.unlink(state["path"])
        except FileNotFoundError:
            pass
    result.discard()
