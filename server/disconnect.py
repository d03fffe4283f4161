"""Stop a request's work when its client goes away.

A plain ASGI handler keeps running after the client disconnects: an upload that decodes for minutes (or a
transcription holding the model) would go on for nobody. `unless_disconnected` races the work against the
connection's `http.disconnect` and cancels the work when the client leaves first; the work's own cleanup
(refunds, removing files, stopping the decoder) runs on cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from server.errors import ApiError

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    # Called after the body has been read whole: the next message is the disconnect (ASGI servers send it
    # when the client closes; test transports send it once the response is complete).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ApiError(499, "client_closed_request", "The client closed the connection before the result was ready")
