"""GET /account/capabilities: what the caller's key can do here, and GET /healthz, GET /metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from server.auth import require_account, require_metrics_reader
from server.services import services


async def capabilities(request: Request) -> JSONResponse:
    account = await require_account(request)
    return JSONResponse(services(request).capabilities.for_account(account))


async def healthz(request: Request) -> JSONResponse:
    svc = services(request)
    readiness = svc.readiness
    return JSONResponse(
        {
            "status": "ok" if readiness.ready else "starting",
            "warmupSeconds": round(readiness.seconds, 2),
            "warmupErrors": readiness.errors,
            "device": svc.device,
            "loadedModels": svc.models.loaded(),
            "installedModels": {
                "whisper": svc.catalog.whisper_models(),
                "piper": svc.catalog.piper_voices(),
                "pyannote": svc.catalog.pyannote_pipelines(),
            },
        },
        status_code=200 if readiness.ready else 503,
    )


async def metrics(request: Request) -> PlainTextResponse:
    await require_metrics_reader(request)
    svc = services(request)
    text = svc.metrics.render(svc.models.instances(), await svc.subtitle_jobs.counts())
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


routes = [
    Route("/account/capabilities", capabilities, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
