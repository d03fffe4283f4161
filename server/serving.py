"""How uvicorn serves the app (`speech7 serve`): no secrets in its logs, and no connection held by a client
that sends its request headers slowly.

* Logs: uvicorn's access log prints every request line with its query string, and its error log the path of
  each WebSocket it accepts, so a key sent as `?apiKey=` (the Speech7 API allows it) would be written to the
  log. `RedactSecrets` rewrites `apiKey=...` (and `api_key`, `key`, `token`, `access_token`, their names
  matched percent-decoded and in any case, as Starlette reads them) to `apiKey=***`, and any other value
  shaped like a key to `s7_***`, in every record uvicorn's handlers write.
* Slow headers: uvicorn bounds the size of a request's headers (h11's 16 KB incomplete-event limit) and
  closes an idle keep-alive connection after `timeout_keep_alive`, but a client that sends one header byte
  every few seconds holds a connection forever. The protocol classes below close a connection whose request
  headers are not complete `S7_HEADER_TIMEOUT_S` after it opened (or after the previous response). A body
  that stalls is the app's to drop (server.uploads.body_chunks, 408).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
from typing import Any
from urllib.parse import unquote_plus

from server.settings import Settings

KEEP_ALIVE_S = 5  # uvicorn's default, stated: an idle keep-alive connection is closed after this
MAX_HEADER_BYTES = 16 * 1024  # h11's default incomplete-event limit, stated: larger headers get a 400
SECRET_NAMES = frozenset({"apikey", "api_key", "key", "token", "access_token"})
QUERY_PARAM = re.compile(r"([?&;])([^=&;\s\"']*)=([^&;\s\"']*)")
# An API key's shape (`s7_` + 43 base64url characters), also percent-encoded: whatever name it travels under
# (`?apiKey%3D=s7_...`, a typo, a path segment), the value itself is never written out.
KEY_SHAPE = re.compile(r"s7(?:_|%5[fF])[A-Za-z0-9_%-]{20,}")


def _redact_param(match: re.Match[str]) -> str:
    # Starlette percent-decodes names, so `?%61piKey=` authenticates like `?apiKey=`: match the decoded name.
    name = unquote_plus(match.group(2)).strip().lower()
    return f"{match.group(1)}{match.group(2)}=***" if name in SECRET_NAMES else match.group(0)


def redact_secrets(text: str) -> str:
    """`/stt?apiKey=s7_abc&x=1` -> `/stt?apiKey=***&x=1`; `%61piKey=` too; any `s7_...` key -> `s7_***`."""
    return KEY_SHAPE.sub("s7_***", QUERY_PARAM.sub(_redact_param, text))


class RedactSecrets(logging.Filter):
    """Rewrites the string arguments (the request line, the WebSocket path) and the message of a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_secrets(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_secrets(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact_secrets(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging configuration with `RedactSecrets` on both of its handlers."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_secrets"] = {"()": RedactSecrets}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_secrets")
    return config


class _HeaderDeadline:
    """Mixed into uvicorn's HTTP protocol classes: a connection gets `header_timeout_s` for each request's
    headers, counted from connecting or from the end of the previous response; then it is closed."""

    header_timeout_s: float = 20.0
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    _deadline: asyncio.TimerHandle | None = None
    _awaiting_headers: bool = False

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._awaiting_headers = True
        self._deadline = self.loop.call_later(self.header_timeout_s, self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        self._awaiting_headers = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _header_deadline_passed(self) -> None:
        self._deadline = None
        if self._awaiting_headers and not self.transport.is_closing():
            self.transport.close()


def _h11_class() -> type:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class H11WithHeaderDeadline(_HeaderDeadline, H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # a whole request line and headers have arrived
                self._disarm_header_deadline()

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            self._disarm_header_deadline()
            super().handle_websocket_upgrade(event)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            super().connection_lost(exc)

    return H11WithHeaderDeadline


def _httptools_class() -> type:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HttpToolsWithHeaderDeadline(_HeaderDeadline, HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_headers_complete(self) -> None:
            self._disarm_header_deadline()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)  # its headers are in already
            super().on_response_complete()
            if not pipelined and not self.transport.is_closing():
                self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            super().connection_lost(exc)

    return HttpToolsWithHeaderDeadline


def http_protocol(header_timeout_s: float) -> type:
    """The class uvicorn's `http="auto"` would pick (httptools when installed, else h11), with the deadline."""
    try:
        import httptools  # noqa: F401

        base = _httptools_class()
    except ImportError:
        base = _h11_class()
    return type(base.__name__, (base,), {"header_timeout_s": header_timeout_s})


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run / uvicorn.Config besides the app."""
    return {
        "host": settings.host, "port": settings.port, "log_level": settings.log_level, "ws": "websockets",
        "log_config": uvicorn_log_config(), "http": http_protocol(settings.header_timeout_s),
        "timeout_keep_alive": KEEP_ALIVE_S, "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        # WebSocket sessions carry audio (PCM, Opus, base64 of either), which deflate cannot shrink, and short
        # JSON events: inflating every frame was 3-6 % of the server's GIL time at 50 streams (py-spy) for no
        # gain. Declining the extension is always allowed; clients then send frames uncompressed.
        "ws_per_message_deflate": False,
    }
