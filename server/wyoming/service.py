"""The Wyoming server as one of this process's services: started in the app's lifespan beside uvicorn when
S7_WYOMING_URI is set, stopped with it.

Why in the same process and not a second one: the point is one set of loaded models and one batch queue per
model. A separate Wyoming process on the same database would share accounts, keys and minutes, but load its
own copy of every model and batch only its own requests; here a Home Assistant command and an HTTP upload that
arrive together are decoded in the same batch by the same engine instance.
"""

from __future__ import annotations

import functools
import logging

from wyoming.server import AsyncServer

from server.wyoming.handler import WyomingContext, WyomingHandler

log = logging.getLogger("speech7.wyoming")


class WyomingService:
    def __init__(self, uri: str, context: WyomingContext) -> None:
        self.uri = uri
        self._ctx = context
        self._server: AsyncServer | None = None

    async def start(self) -> None:
        """Refuses to start (RuntimeError, so the whole server does not come up half-configured) without a
        key that belongs to an account: the protocol itself carries no credentials."""
        if not self._ctx.api_key:
            raise RuntimeError(
                "S7_WYOMING_URI is set but S7_WYOMING_API_KEY is not: set it to the API key of the account "
                "that Wyoming requests are billed to"
            )
        if await self._ctx.accounts.authenticate(self._ctx.api_key) is None:
            raise RuntimeError("S7_WYOMING_API_KEY is not the API key of any account")
        try:
            server = AsyncServer.from_uri(self.uri)
        except ValueError as exc:
            raise RuntimeError(f"S7_WYOMING_URI={self.uri!r}: {exc}") from None
        await server.start(functools.partial(WyomingHandler, self._ctx))
        self._server = server
        log.info("serving Wyoming on %s", self.uri)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None
