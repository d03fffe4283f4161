"""GET /account/capabilities: what the caller's key can do here, and GET /healthz, GET /metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from server.auth import require_account


async def capabilities(request: Request) -> JSONResponse:
    account = await require_account(request)
    return JSONResponse(request.app.state.capabilities.for_account(account))


async def healthz(request: Request) -> JSONResponse:
    state = request.app.state
    readiness = state.readiness
    return JSONResponse(
        {
            "status": "ok" if readiness.ready else "starting",
            "warmupSeconds": round(readiness.seconds, 2),
            "warmupErrors": readiness.errors,
            "device": state.device,
            "loadedModels": state.models.loaded(),
            "installedModels": {
                "whisper": state.catalog.whisper_models(),
                "piper": state.catalog.piper_voices(),
                "pyannote": state.catalog.pyannote_pipelines(),
            },
        },
        status_code=200 if readiness.ready else 503,
    )


async def metrics(request: Request) -> PlainTextResponse:
    state = request.app.state
    jobs = await state.subtitle_jobs.counts() if hasattr(state, "subtitle_jobs") else None
    text = state.metrics.render(state.models.instances(), jobs)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


routes = [
    Route("/account/capabilities", capabilities, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
