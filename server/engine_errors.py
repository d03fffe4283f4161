"""The one place where engine failures become what a client sees: an `ApiError` (the HTTP JSON error) or the
realtime WebSocket's `{"error_code", "error_message"}` message.

Engines raise `EngineError` subclasses with messages written for the user (engines.types, engines.audio,
engines.batching); the status depends on the kind of failure, and for a plain refusal on what was refused
(a media file is unprocessable, a TTS text or a realtime config is a bad request), which the caller names.
"""

from __future__ import annotations

from typing import Any

from engines.types import EngineError, ModelMissingError
from server.errors import ApiError

ENGINE_REFUSAL = (422, "engine_error")  # the engine could not process this (valid) request's input


def api_error(exc: EngineError, refusal: tuple[int, str] = ENGINE_REFUSAL) -> ApiError:
    """The HTTP error for an engine failure; `refusal` is (status, code) for a plain EngineError."""
    # Imported here: engines.audio loads PyAV, which a server that never fails needs no sooner.
    from engines.audio import EmptyMediaError, MediaError
    from engines.batching import WorkerClosedError
    from engines.stream_decode import FrameTooLongError

    if isinstance(exc, ModelMissingError):
        return ApiError(503, "model_missing", str(exc))
    if isinstance(exc, WorkerClosedError):
        return ApiError(503, "shutting_down", "The server is shutting down; retry the request")
    if isinstance(exc, FrameTooLongError):
        return ApiError(413, "frame_too_long", str(exc))
    if isinstance(exc, EmptyMediaError):
        return ApiError(422, "empty_media", str(exc))
    if isinstance(exc, MediaError):
        return ApiError(422, "undecodable_media", str(exc))
    status, code = refusal
    return ApiError(status, code, str(exc))


def ws_error(exc: BaseException) -> dict[str, Any]:
    """The realtime session's last message before it closes with 4000 + error_code.

    A plain EngineError there refuses what the client sent (its config or audio), hence 400; anything that
    is neither an ApiError nor an EngineError is our bug and stays unexplained to the client (it is logged).
    """
    if isinstance(exc, EngineError):
        exc = api_error(exc, (400, "bad_request"))
    if isinstance(exc, ApiError):
        return {"error_code": exc.status, "error_message": exc.message}
    return {"error_code": 500, "error_message": "internal error"}
