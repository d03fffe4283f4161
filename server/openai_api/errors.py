"""OpenAI's error shape for every /v1 failure: `{"error": {"message", "type", "param", "code"}}`.

The services raise the server's own `ApiError`s; this module translates them at the /v1 boundary so the
Speech7 routes keep their shape. One deliberate status change: the Speech7 API's 402 (no minutes left)
becomes OpenAI's 429 `insufficient_quota`, because that is what OpenAI sends when the balance is exhausted and
what clients built for it recognise (the `openai` SDK raises `RateLimitError` whose `code` says
insufficient_quota). The response carries `x-should-retry: false`: the SDKs retry 429s by default, and
retrying an empty balance only wastes the client's time.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.errors import ApiError

log = logging.getLogger("speech7.openai")

Endpoint = Callable[[Request], Awaitable[Response]]


class OpenAIError(ApiError):
    """An ApiError that also names the request parameter at fault (OpenAI's `param`)."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(status, code, message)
        self.param = param


def invalid(message: str, param: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, code, message, param=param)


def _type_for(status: int) -> str:
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"  # 401 included, as OpenAI does


def error_body(exc: ApiError) -> dict:
    """The body (also used for an error event inside an event stream)."""
    param = exc.param if isinstance(exc, OpenAIError) else None
    if exc.status == 402:
        return {"error": {"message": exc.message, "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}
    return {"error": {"message": exc.message, "type": _type_for(exc.status), "param": param, "code": exc.code}}


def as_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, HTTPException):
        return ApiError(exc.status_code, "not_found" if exc.status_code == 404 else "http_error", str(exc.detail))
    # The traceback goes to the server log, never to the client.
    log.error("unhandled error in an OpenAI-compatible endpoint", exc_info=exc)
    return ApiError(500, "internal_error", "Internal server error")


def error_response(exc: Exception) -> JSONResponse:
    err = as_api_error(exc)
    if err.status == 402:
        return JSONResponse(error_body(err), status_code=429, headers={"x-should-retry": "false"})
    return JSONResponse(error_body(err), status_code=err.status, headers=err.headers or None)


def openai_endpoint(fn: Endpoint) -> Endpoint:
    """Wraps a /v1 endpoint so any failure before its response starts is answered in OpenAI's shape."""

    @functools.wraps(fn)
    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except Exception as exc:
            return error_response(exc)

    return wrapper


@openai_endpoint
async def unknown_endpoint(request: Request) -> Response:
    raise OpenAIError(404, "unknown_url", f"Unrecognized request URL ({request.method} {request.url.path})")
