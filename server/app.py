"""The application factory: `create_app(settings)` wires settings, database, engines, services and routes.

Everything is built here, in the lifespan, with its collaborators passed in: one typed `Services` object
(server.services) that the routes reach through `services(request)`. Tests and servers each get their own;
nothing is held in module globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from engines.frontend import MediaFrontend
from engines.manager import EngineConfig, ModelManager, cuda_available
from engines.types import ModelProvider
from models.catalog import Catalog
from server.accounts import AccountService
from server.auth import AdminSessions
from server.capabilities import Capabilities
from server.db import check_database, create_schema, make_engine, startup_lock
from server.engine_specs import EngineSpecs
from server.errors import ApiError, api_error_handler, http_error_handler, unhandled_error_handler
from server.inference import Inference, inference_threads
from server.leases import ProcessLease, new_lease_id
from server.metrics import Metrics, MetricsMiddleware
from server.minutes import MinutesPool
from server.realtime import RealtimeService
from server.realtime_admission import AdmissionLimits
from server.realtime_config import decode_interval
from server.routes import build_routes
from server.services import Services
from server.settings import Settings, resolve_device
from server.storage import make_blob_store
from server.subtitle_jobs import SubtitleJobs
from server.transcription import SttPipeline, TranscriptionService
from server.tts_service import TtsService
from server.upload_slots import UploadSlots
from server.warmup import Readiness, warm_up

if TYPE_CHECKING:
    from server.wyoming.service import WyomingService

log = logging.getLogger("speech7")


def engine_config(settings: Settings, device: str, metrics: Metrics) -> EngineConfig:
    return EngineConfig(
        models_dir=settings.resolved_models_dir, device=device, compute_type=settings.compute_type,
        cpu_threads=settings.cpu_threads, max_batch_size=settings.max_batch_size,
        batch_window_ms=settings.batch_window_ms, device_index=settings.device_index,
        diarizer=settings.default_diarizer, stt_workers_per_device=settings.stt_workers_per_device,
        on_stage=metrics.observe_stage,
    )


def wyoming_service(services: Services) -> WyomingService | None:
    """The Wyoming server beside HTTP when S7_WYOMING_URI is set (same engines, batching and minutes)."""
    settings = services.settings
    if not settings.wyoming_uri:
        return None
    from server.wyoming.handler import WyomingContext
    from server.wyoming.service import WyomingService

    context = WyomingContext(
        settings, services.accounts, services.capabilities, services.catalog, services.transcription, services.tts,
        settings.wyoming_api_key,
    )
    return WyomingService(settings.wyoming_uri, context)


def create_app(settings: Settings, *, manager: ModelProvider | None = None) -> Starlette:
    """`manager` lets the server-layer tests plug in fake engines; production always builds the real one."""
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        data_dir = Path(settings.data_dir)
        (data_dir / "tmp").mkdir(parents=True, exist_ok=True)  # this node's own scratch space
        db = make_engine(settings.resolved_database_url)
        await check_database(db)  # a damaged SQLite file stops the start with a clear message
        await create_schema(db)
        # Crash recovery first: refunds what a dead process left reserved, removes its files (server.leases).
        lease = ProcessLease(db, lease_id=new_lease_id(), data_dir=data_dir, stale_s=settings.job_stale_seconds)
        minutes = MinutesPool(db, owner=lease.id)
        await lease.start(minutes)
        # Stored speeches and job files: local, or shared in the database.
        blobs = make_blob_store(settings, db, tmp_dir=lease.tmp_dir)
        device = resolve_device(settings.device, cuda_available() if settings.device != "cpu" else False)
        models = manager or ModelManager(engine_config(settings, device, metrics))
        inference = Inference(inference_threads(settings))
        frontend = MediaFrontend(lease.tmp_dir, settings.frontend_workers, on_stage=metrics.observe_stage)
        catalog = Catalog(settings.resolved_models_dir)
        specs = EngineSpecs(catalog, default_stt=settings.default_stt, default_tts=settings.default_tts)
        accounts = AccountService(db, specs)
        capabilities = Capabilities(settings, catalog, specs, models, device)
        transcription = TranscriptionService(
            minutes=minutes, capabilities=capabilities, pipeline=SttPipeline(models, metrics), inference=inference,
            metrics=metrics, frontend=frontend, max_audio_hours=settings.max_audio_hours,
        )
        readiness = Readiness(ready=not settings.warmup)
        services = Services(
            settings=settings, device=device, db=db, catalog=catalog, models=models, metrics=metrics,
            lease=lease, blobs=blobs, accounts=accounts, minutes=minutes,
            admin_sessions=AdminSessions(settings.session_secret),
            capabilities=capabilities, transcription=transcription, readiness=readiness,
            tts=TtsService(
                store=blobs, db=db, minutes=minutes, capabilities=capabilities,
                models=models, inference=inference, metrics=metrics,
            ),
            subtitle_jobs=SubtitleJobs(
                settings=settings, store=blobs, db=db, minutes=minutes, accounts=accounts,
                capabilities=capabilities, transcription=transcription,
            ),
            realtime=RealtimeService(
                capabilities=capabilities, models=models, minutes=minutes, inference=inference, metrics=metrics,
                limits=AdmissionLimits(settings.realtime_max_sessions, settings.realtime_max_sessions_per_account,
                                       settings.realtime_max_lag_s),
                decode_interval_s=decode_interval(settings.realtime_decode_interval_s, device),
                idle_s=settings.realtime_idle_s,
            ),
            upload_slots=UploadSlots(settings.max_uploads_per_account),
        )
        app.state.services = services  # the one thing on app.state: read through server.services
        async with startup_lock(db):  # nodes starting at once on a new database make one admin account
            await accounts.ensure_admin(settings.admin_key or None, lambda m: print(f"[speech7] {m}", flush=True))
        wyoming = wyoming_service(services)
        if wyoming is not None:  # first: its start refuses a missing key before any worker has started
            await wyoming.start()
        await services.subtitle_jobs.start()
        warming = asyncio.ensure_future(warm_up(models, settings, readiness)) if settings.warmup else None
        try:
            yield
        finally:
            if warming is not None:
                warming.cancel()
            if wyoming is not None:
                await wyoming.stop()
            await services.subtitle_jobs.stop()
            await services.tts.stop()
            frontend.close()
            models.close()  # fails queued engine work, so no inference thread waits on a closed model
            inference.shutdown()
            await lease.stop()
            await db.dispose()

    return Starlette(
        routes=build_routes(),
        lifespan=lifespan,
        middleware=[Middleware(MetricsMiddleware, metrics=metrics)],
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            Exception: unhandled_error_handler,
        },
    )
