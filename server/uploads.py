"""Multipart uploads streamed straight to disk with a size limit enforced while the bytes arrive.

The media part (`audio`) is written to a temporary file under the data directory; other fields are kept as
small strings. A request over the limit is refused (413) as soon as the limit is crossed, and its partial
file is removed; nothing is ever buffered whole in memory.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import python_multipart
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from server.errors import ApiError, bad_request, too_large, unsupported_media

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


async def receive_media(request: Request, *, tmp_dir: Path, limit_bytes: int, file_field: str = "audio") -> ParsedUpload:
    """Parses a multipart request; raises 415/413/400 and leaves no file behind on any error."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise unsupported_media(f"Send the media as multipart/form-data with a file field named {file_field!r}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise bad_request("multipart/form-data without a boundary")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit_bytes + 1024 * 1024:
        raise too_large(limit_bytes)

    tmp_dir.mkdir(parents=True, exist_ok=True)
    result = ParsedUpload()
    state: dict = {"name": None, "filename": None, "ctype": "", "buf": bytearray(), "fh": None, "path": None,
                   "size": 0, "error": None, "headers": {}}

    def on_part_begin() -> None:
        state.update(name=None, filename=None, ctype="", buf=bytearray(), fh=None, path=None, headers={})

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
            if result.media is not None:
                state["error"] = bad_request(f"send exactly one {file_field!r} file")
                return
            if not media_type_allowed(state["ctype"], state["filename"]):
                state["error"] = unsupported_media(
                    f"Unsupported media type {state['ctype'] or 'unknown'!r}: send audio/* or video/*"
                )
                return
            path = tmp_dir / f"up_{secrets.token_hex(12)}"
            state["path"] = path
            state["fh"] = open(path, "wb")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["error"] is not None:
            return
        n = end - start
        if state["fh"] is not None:
            state["size"] += n
            if state["size"] > limit_bytes:
                state["error"] = too_large(limit_bytes)
                return
            state["fh"].write(data[start:end])
        else:
            if len(state["buf"]) + n > MAX_FIELD_BYTES:
                state["error"] = bad_request(f"form field {state['name']!r} is too long")
                return
            state["buf"] += data[start:end]

    def on_part_end() -> None:
        if state["error"] is not None:
            return
        if state["fh"] is not None:
            state["fh"].close()
            result.media = UploadedMedia(state["path"], state["filename"] or "upload", state["ctype"], state["size"])
            state["fh"] = None
        else:
            if len(result.fields) >= MAX_FIELDS:
                state["error"] = bad_request("too many form fields")
                return
            value = state["buf"].decode("utf-8", "replace")
            result.fields[state["name"]] = value
            result.repeated.setdefault(state["name"], []).append(value)

    parser = python_multipart.MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
            "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if state["error"] is not None:
                raise state["error"]
        parser.finalize()
        if state["error"] is not None:
            raise state["error"]
    except ApiError:
        _cleanup(state, result)
        raise
    except Exception as exc:  # malformed multipart, client disconnect, ...
        _cleanup(state, result)
        raise bad_request(f"could not read the multipart upload: {exc}") from None
    if state["fh"] is not None:  # stream ended mid-part
        _cleanup(state, result)
        raise bad_request("the upload ended before the file was complete")
    return result


def _cleanup(state: dict, result: ParsedUpload) -> None:
    if state.get("fh") is not None:
        state["fh"].close()
    if state.get("path") is not None:
        try:
            os.unlink(state["path"])
        except FileNotFoundError:
            pass
    result.discard()
