"""WS /stt/realtime: admission before the upgrade, then a JSON config first (it may carry the API key), then
binary audio frames and control messages, an empty frame to finish.

Messages after the config (Soniox's protocol):
- a binary frame: audio; an empty one (or an empty text message) ends the audio: the server finalizes
  everything, sends `"finished": true` and closes;
- `{"type": "keepalive"}`: nothing is answered; it keeps a session without audio open;
- `{"type": "finalize"}`: every word heard so far becomes final at once, followed by a "<fin>" token; the
  session goes on;
- anything else: an error message `{"error_code": 400, "error_message", "fatal": false}`; the session goes on.
A session that receives no audio (nor keepalive) for S7_REALTIME_IDLE_S is closed with error 408 (close 4408).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse
from starlette.routing import WebSocketRoute
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from server.accounts import Account
from server.auth import key_from_request, require_account
from server.engine_errors import ws_error
from server.errors import ApiError, error_body, unauthorized
from server.realtime import RealtimeService, RealtimeSession
from server.realtime_admission import Refusal, Ticket
from server.realtime_config import ConfigError, parse_config
from server.services import services

log = logging.getLogger("speech7.realtime")
CONFIG_TIMEOUT_S = 30
MISSING_KEY = "Missing or invalid API key (send x-api-key, ?apiKey=..., or apiKey in the config message)"


async def realtime(ws: WebSocket) -> None:
    svc = services(ws).realtime
    try:
        ticket = svc.admission.admit()  # first: a full or overloaded server refuses without any other work
    except Refusal as refusal:
        await _deny(ws, refusal)
        return
    try:
        # A key in the header or the URL is checked before the upgrade, so that an account over its session
        # cap is refused there; a bad key is still answered after it, as one error message (what clients
        # expect).
        account: Account | None = None
        auth_error: ApiError | None = None
        if key_from_request(ws):
            try:
                account = await require_account(ws)
                ticket.bind(account.id)
            except Refusal as refusal:
                await _deny(ws, refusal)
                return
            except ApiError as exc:
                auth_error = exc
        await _serve(ws, svc, ticket, account, auth_error)
    finally:
        ticket.release()


async def _serve(
    ws: WebSocket, svc: RealtimeService, ticket: Ticket, account: Account | None, auth_error: ApiError | None
) -> None:
    await ws.accept()
    session: RealtimeSession | None = None
    processor: asyncio.Task | None = None
    try:
        if auth_error is not None:
            raise auth_error
        try:
            first = await asyncio.wait_for(ws.receive(), timeout=CONFIG_TIMEOUT_S)
        except TimeoutError:
            raise ApiError(408, "config_timeout", "no config message received") from None
        if first["type"] == "websocket.disconnect":
            return
        text = first.get("text")
        raw: str = text if text is not None else (first.get("bytes") or b"").decode("utf-8", "replace")
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            if account is None:
                raise unauthorized(MISSING_KEY) from None
            raise ConfigError("the first message must be JSON") from None
        message_key = body.pop("apiKey", None) if isinstance(body, dict) else None
        if account is None:
            # Without a key in the URL the config carries it, keeping it out of URLs, proxy logs and history.
            if not isinstance(message_key, str) or not message_key:
                raise unauthorized(MISSING_KEY)
            account = await require_account(ws, {"apiKey": message_key})  # the HTTP routes' checks
        config = parse_config(body)

        async def send(msg: dict) -> None:
            await ws.send_text(json.dumps(msg, ensure_ascii=False))

        session = svc.session(account, config, send, ticket)
        await session.open()
        processor = asyncio.ensure_future(session.process())
        if await _relay(ws, session, processor, svc.idle_s):
            await ws.close()
    except WebSocketDisconnect:
        pass
    except Exception as exc:
        error = ws_error(exc)
        if error["error_code"] >= 500:  # our bug: its traceback belongs in the log
            log.exception("realtime session failed")
        elif not isinstance(exc, ApiError):
            # What the client sent was refused (a frame that decodes to minutes, undecodable audio): one line,
            # no traceback, so a client cannot fill the error log by sending bad frames.
            log.info("realtime session refused: %s", exc)
        await _fail(ws, error)
    finally:
        if processor is not None and not processor.done():
            processor.cancel()
            try:
                await processor
            except BaseException:
                pass
        if session is not None:
            await session.close()


async def _relay(ws: WebSocket, session: RealtimeSession, processor: asyncio.Task, idle_s: float) -> bool:
    """Hands the client's messages to the session until the stream is finished (True) or the client left
    (False). The idle clock runs only while the server waits for the client."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + idle_s if idle_s > 0 else None
    while True:
        if processor.done():
            processor.result()  # raises the processor's error (e.g. minutes ran out)
            return True
        try:
            msg = await _receive(ws, processor, deadline)
        except TimeoutError:
            raise ApiError(408, "idle_timeout",
                           f"No audio for {idle_s:g} s: the session is closed (send {{\"type\": \"keepalive\"}} "
                           "to keep a session without audio open)") from None
        if msg is None:
            continue  # the processor ended first: its outcome is read above
        if msg["type"] == "websocket.disconnect":
            return False
        kind, payload = classify(msg)
        if kind == "audio":
            assert isinstance(payload, bytes)
            await session.feed(payload)
        elif kind == "end":
            await session.end()
            await processor
            return True
        elif kind == "finalize":
            session.request_finalize()
        elif kind == "unknown":
            await session.send({"error_code": 400, "error_message": payload, "fatal": False})
        if kind in ("audio", "keepalive") and deadline is not None:
            deadline = loop.time() + idle_s


async def _receive(ws: WebSocket, processor: asyncio.Task, deadline: float | None) -> Message | None:
    """The client's next message, or None once the processor has ended first; TimeoutError at `deadline`
    (loop time; None: none). One receive, cut short by the deadline or by the processor ending (which moves
    the deadline to now): cheaper than a task and asyncio.wait per message, which hundreds of streams sending
    ten frames a second pay on the one event loop (bench_realtime --free-model)."""
    loop = asyncio.get_running_loop()
    waiting = True

    def wake(_: object) -> None:
        if waiting:  # a callback already scheduled when the receive ended must not touch the spent timeout
            limit.reschedule(loop.time())

    try:
        async with asyncio.timeout_at(deadline) as limit:
            processor.add_done_callback(wake)
            try:
                return await ws.receive()
            finally:
                waiting = False
                processor.remove_done_callback(wake)
    except TimeoutError:
        if processor.done():
            return None
        raise


def classify(msg: Mapping[str, Any]) -> tuple[str, bytes | str]:
    """A client message after the config: ("audio", bytes), ("end", b""), ("keepalive" | "finalize", ""),
    or ("unknown", what the error message says)."""
    data = msg.get("bytes")
    if data is not None:
        return ("audio", data) if data else ("end", b"")
    text = msg.get("text") or ""
    if not text.strip():
        return "end", b""
    try:
        control = json.loads(text)
    except ValueError:
        control = None
    kind = control.get("type") if isinstance(control, dict) else None
    if kind in ("keepalive", "finalize"):
        return kind, ""
    if kind == "close":  # accepted by earlier versions of this server: the end of the audio
        return "end", b""
    what = f"unknown message type {kind!r}" if isinstance(kind, str) else "a text message that is not a control message"
    return "unknown", (f"{what} (ignored): send audio as binary frames, {{\"type\": \"keepalive\"}}, "
                       "{\"type\": \"finalize\"}, or an empty frame to end the audio")


async def _deny(ws: WebSocket, refusal: Refusal) -> None:
    """Refuses the handshake with an HTTP response (503/429 and Retry-After), before any upgrade."""
    headers = {"Retry-After": str(refusal.retry_after_s)}
    try:
        await ws.send_denial_response(
            JSONResponse(error_body(refusal.code, refusal.message), status_code=refusal.status, headers=headers))
    except RuntimeError:  # a server without the ASGI denial extension: refuse after the upgrade instead
        await ws.accept()
        await _fail(ws, ws_error(refusal))


async def _fail(ws: WebSocket, body: dict) -> None:
    try:
        await ws.send_text(json.dumps(body))
        # Application close codes 4000 + HTTP status (4401, 4402, 4400 ...), so clients can branch on them.
        await ws.close(code=4000 + int(body["error_code"]))
    except Exception:
        pass  # the client is already gone


routes = [WebSocketRoute("/stt/realtime", realtime)]
