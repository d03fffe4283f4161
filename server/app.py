"""The application factory: `create_app(settings)` wires settings, database, services and routes.

Services live on `app.state` and are built in the lifespan, so tests and servers each get their own; nothing
is held in module globals.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from engines.manager import EngineConfig, ModelManager, cuda_available
from models.catalog import Catalog
from server.accounts import AccountService
from server.auth import AdminSessions
from server.db import create_schema, make_engine
from server.engine_specs import STT_ENGINES, TTS_ENGINES, SpecError, resolve
from server.errors import (
    ApiError,
    api_error_handler,
    bad_request,
    http_error_handler,
    unhandled_error_handler,
)
from server.metrics import Metrics, MetricsMiddleware
from server.minutes import MinutesPool
from server.routes import build_routes
from server.settings import Settings, resolve_device

log = logging.getLogger("speech7")


def create_app(settings: Settings, *, manager: ModelManager | None = None) -> Starlette:
    """`manager` lets the server-layer tests plug in fake engines; production always builds the real one."""
    catalog = Catalog(settings.resolved_models_dir)

    def validate_spec(kind: str, value: str | None) -> None:
        if value is None:
            return
        try:
            if kind == "stt":
                resolve(value, settings.default_stt, STT_ENGINES, catalog.whisper_models(), "STT")
            else:
                resolve(value, settings.default_tts, TTS_ENGINES, catalog.piper_voices(), "TTS")
        except SpecError as exc:
            raise bad_request(str(exc), code="unknown_engine") from None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Inference calls block a thread each while the engines batch them: the default pool (cores + 4)
        # would cap concurrent requests and realtime sessions far below what one batched model serves.
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=max(32, settings.realtime_max_sessions + 16), thread_name_prefix="s7")
        )
        data_dir = Path(settings.data_dir)
        for sub in ("tmp", "speeches", "jobs"):
            (data_dir / sub).mkdir(parents=True, exist_ok=True)
        db = make_engine(settings.resolved_database_url)
        await create_schema(db)
        device = resolve_device(settings.device, cuda_available() if settings.device != "cpu" else False)
        mgr = manager or ModelManager(
            EngineConfig(
                models_dir=settings.resolved_models_dir, device=device, compute_type=settings.compute_type,
                cpu_threads=settings.cpu_threads, max_batch_size=settings.max_batch_size,
                batch_window_ms=settings.batch_window_ms, device_index=settings.device_index,
                diarizer=settings.default_diarizer, stt_workers_per_device=settings.stt_workers_per_device,
                on_stage=metrics.observe_stage,
            )
        )
        from engines.frontend import MediaFrontend

        frontend = MediaFrontend(data_dir / "tmp", settings.frontend_workers, on_stage=metrics.observe_stage)
        app.state.settings = settings
        app.state.db = db
        app.state.catalog = catalog
        app.state.device = device
        app.state.realtime_sessions = 0  # open WS /stt/realtime sessions in this process (RealtimeSession)
        app.state.models = mgr
        app.state.frontend = frontend
        app.state.accounts = AccountService(db, validate_spec)
        app.state.minutes = MinutesPool(db)
        app.state.admin_sessions = AdminSessions(settings.session_secret)
        app.state.metrics = metrics
        from server.services import build_services

        services = build_services(app.state)
        await app.state.accounts.ensure_admin(settings.admin_key or None, lambda m: print(f"[speech7] {m}", flush=True))
        await services.start()
        from server.warmup import Readiness, warm_up

        app.state.readiness = Readiness(ready=not settings.warmup)
        warming = asyncio.ensure_future(warm_up(mgr, settings, app.state.readiness)) if settings.warmup else None
        try:
            yield
        finally:
            if warming is not None:
                warming.cancel()
            await services.stop()
            frontend.close()
            mgr.close()
            await db.dispose()

    metrics = Metrics()
    app = Starlette(
        routes=build_routes(),
        lifespan=lifespan,
        middleware=[Middleware(MetricsMiddleware, metrics=metrics)],
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            Exception: unhandled_error_handler,
        },
    )
    return app
