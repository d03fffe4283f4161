"""The web UI: `GET /` serves the single page (demo cards + admin area), `/static/...` its files.

Plain HTML/CSS/JS with no build step and nothing from a CDN, so the page works air-gapped; the strict
Content-Security-Policy below only allows this origin (plus `ws:`/`wss:` for the realtime card and `blob:` media
for streamed TTS playback), which keeps a pasted API key out of reach of injected scripts.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "connect-src 'self' ws: wss:",
        "worker-src 'self' blob:",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
}


async def index(request: Request) -> Response:
    # no-cache: the page is tiny and must pick up a new app.js after an upgrade.
    return FileResponse(STATIC_DIR / "index.html", headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


class _StaticWithHeaders(StaticFiles):
    """StaticFiles that also sends nosniff and no-cache (revalidate via ETag), so upgrades show at once."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"cache-control", b"no-cache"))
                message = {**message, "headers": headers}
            await send(message)

        await super().__call__(scope, receive, send_with_headers)


routes = [
    Route("/", index, methods=["GET", "HEAD"]),
    Mount("/static", app=_StaticWithHeaders(directory=STATIC_DIR), name="static"),
]
