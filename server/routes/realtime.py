"""WS /stt/realtime: JSON config first (it may carry the API key), then binary audio frames, an empty frame
to finalize."""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from server.auth import key_from_request, require_account
from server.engine_errors import ws_error
from server.errors import ApiError, unauthorized
from server.realtime import RealtimeSession
from server.realtime_config import ConfigError, parse_config
from server.services import services

log = logging.getLogger("speech7.realtime")
CONFIG_TIMEOUT_S = 30


async def realtime(ws: WebSocket) -> None:
    await ws.accept()
    session: RealtimeSession | None = None
    processor: asyncio.Task | None = None
    try:
        # A key in the header or the URL is checked before the config arrives; without one, the config
        # message must carry it (`apiKey`), which keeps it out of URLs, proxy logs and browser history.
        account = await require_account(ws) if key_from_request(ws) else None
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
            if not isinstance(message_key, str) or not message_key:
                raise unauthorized(MISSING_KEY)
            account = await require_account(ws, {"apiKey": message_key})  # the HTTP routes' checks
        config = parse_config(body)

        async def send(msg: dict) -> None:
            await ws.send_text(json.dumps(msg, ensure_ascii=False))

        session = services(ws).realtime.session(account, config, send)
        await session.open()
        processor = asyncio.ensure_future(session.process())
        while True:
            recv = asyncio.ensure_future(ws.receive())
            done, _ = await asyncio.wait({recv, processor}, return_when=asyncio.FIRST_COMPLETED)
            if processor in done:
                recv.cancel()
                processor.result()  # raises the processor's error (e.g. minutes ran out)
                break
            msg = recv.result()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data is None:
                text = msg.get("text") or ""
                if text.strip() == "":
                    data = b""
                else:  # a JSON control message: only {"type": "finalize"} is understood
                    try:
                        ctl = json.loads(text)
                    except ValueError:
                        ctl = None
                    if isinstance(ctl, dict) and ctl.get("type") in {"finalize", "close"}:
                        data = b""
                    else:
                        raise ApiError(400, "bad_message", "send audio as binary frames, an empty frame to finalize")
            if len(data) == 0:
                await session.finalize()
                await processor
                break
            await session.feed(data)
        await ws.close()
    except WebSocketDisconnect:
        pass
    except Exception as exc:
        if not isinstance(exc, ApiError):
            log.exception("realtime session failed")
        await _fail(ws, ws_error(exc))
    finally:
        if processor is not None and not processor.done():
            processor.cancel()
            try:
                await processor
            except BaseException:
                pass
        if session is not None:
            await session.close()


MISSING_KEY = "Missing or invalid API key (send x-api-key, ?apiKey=..., or apiKey in the config message)"


async def _fail(ws: WebSocket, body: dict) -> None:
    try:
        await ws.send_text(json.dumps(body))
        # Application close codes 4000 + HTTP status (4401, 4402, 4400 ...), so clients can branch on them.
        await ws.close(code=4000 + int(body["error_code"]))
    except Exception:
        pass  # the client is already gone


routes = [WebSocketRoute("/stt/realtime", realtime)]
