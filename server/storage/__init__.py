"""Blob storage for stored speeches and subtitle job files: local files or the shared database, one interface
(server/storage/base.py). `make_blob_store` picks the backend from the settings."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from server.settings import Settings
from server.storage.base import (
    CHUNK_BYTES,
    BlobInfo,
    BlobNotFoundError,
    BlobStore,
    BlobWriter,
    OpenBlob,
    blob_backend,
    check_name,
)
from server.storage.database import DatabaseBlobStore
from server.storage.local import LocalBlobStore

__all__ = [
    "CHUNK_BYTES", "BlobInfo", "BlobNotFoundError", "BlobStore", "BlobWriter", "DatabaseBlobStore",
    "LocalBlobStore", "OpenBlob", "blob_backend", "check_name", "make_blob_store",
]


def make_blob_store(settings: Settings, db: AsyncEngine, tmp_dir: Path | None = None) -> BlobStore:
    """`tmp_dir`: where the database store materialises blobs as files (the process's own, server.leases)."""
    data_dir = Path(settings.data_dir)
    if blob_backend(settings.blob_store, settings.resolved_database_url) == "database":
        return DatabaseBlobStore(db, tmp_dir or data_dir / "tmp", settings.blob_chunk_kb * 1024)
    return LocalBlobStore(data_dir)
