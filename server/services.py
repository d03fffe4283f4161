"""The services a running app serves with, built once by the lifespan in `server.app` and reached by the routes
through `services(request)`: one typed object instead of attributes scattered on `app.state`, so a reader
(and mypy) can follow a request from its route into the service and on to the engine protocols."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import HTTPConnection

if TYPE_CHECKING:  # the services import this module's accessor through server.auth
    from sqlalchemy.ext.asyncio import AsyncEngine

    from engines.types import ModelProvider
    from models.catalog import Catalog
    from server.accounts import AccountService
    from server.auth import AdminSessions
    from server.capabilities import Capabilities
    from server.leases import ProcessLease
    from server.metrics import Metrics
    from server.minutes import MinutesPool
    from server.realtime import RealtimeService
    from server.settings import Settings
    from server.storage import BlobStore
    from server.subtitle_jobs import SubtitleJobs
    from server.transcription import TranscriptionService
    from server.tts_service import TtsService
    from server.upload_slots import UploadSlots
    from server.warmup import Readiness


@dataclass(frozen=True)
class Services:
    settings: Settings
    device: str  # resolved: cpu | cuda
    lease: ProcessLease  # this process: its temporary files (`lease.tmp_dir`), its minutes reservations
    db: AsyncEngine
    catalog: Catalog
    models: ModelProvider
    metrics: Metrics
    blobs: BlobStore  # stored speeches and subtitle job files (local files, or the shared database)
    accounts: AccountService
    minutes: MinutesPool
    admin_sessions: AdminSessions
    capabilities: Capabilities
    transcription: TranscriptionService
    tts: TtsService
    subtitle_jobs: SubtitleJobs
    realtime: RealtimeService
    upload_slots: UploadSlots  # per-account cap on uploads in progress
    readiness: Readiness  # /healthz says ready once the warm-up is done


def services_of(app: Starlette) -> Services:
    """The services of a Starlette app whose lifespan is running (tests reach them this way too)."""
    found = getattr(app.state, "services", None)
    if not isinstance(found, Services):
        raise RuntimeError("the app's lifespan has not started: no services yet")
    return found


def services(conn: HTTPConnection) -> Services:
    """For routes: the services of the app serving this request or WebSocket."""
    return services_of(conn.app)
