"""Blobs in the shared database (tables `blobs` and `blob_chunks`, server/db.py): what lets any node of a
cluster serve a file another node wrote, with no shared disk.

A write inserts its chunks (CHUNK_BYTES each, the last one shorter) as the bytes arrive, each in its own short
transaction, so no connection is held while a client is slow and no more than one chunk is in memory. Until
`commit` the object has no name: readers cannot see it, and a writer that dies leaves a nameless row that
`sweep_orphans` deletes. `commit` names it in one transaction that also deletes an older object of the same
name (the last writer wins, as a file rename would). Reads fetch one chunk per query.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.db import blob_chunks, blobs
from server.security import new_id
from server.storage.base import CHUNK_BYTES, BlobInfo, BlobNotFoundError, check_name, copy_file_in

COMMIT_ATTEMPTS = 8  # writers committing one name at once: each round one wins, the others retry and replace it


async def _delete_where(conn: AsyncConnection, condition: Any) -> int:
    """Deletes the matching objects and their chunks; the parent rows first, so a concurrent commit of one
    of them waits for this transaction and then finds its row gone instead of naming a chunkless object."""
    ids = (await conn.execute(delete(blobs).where(condition).returning(blobs.c.id))).scalars().all()
    if ids:  # (the foreign key cascades too; this holds even where SQLite's foreign keys are off)
        await conn.execute(delete(blob_chunks).where(blob_chunks.c.blob_id.in_(ids)))
    return len(ids)


class _DatabaseWriter:
    def __init__(self, db: AsyncEngine, name: str, chunk_bytes: int) -> None:
        self._db = db
        self._name = name
        self._chunk = chunk_bytes
        self._id = new_id("bl")
        self._buf = bytearray()
        self._seq = 0
        self._size = 0
        self._started = False  # the nameless `blobs` row exists

    async def _store(self, piece: bytes | None) -> None:
        now = time.time()
        grown = {"size": self._size + len(piece or b""), "chunks": self._seq + (1 if piece else 0), "updated_at": now}
        async with self._db.begin() as conn:
            if not self._started:
                await conn.execute(insert(blobs).values(id=self._id, name=None, created_at=now, **grown))
            else:  # the row first: it locks out a concurrent sweep, or shows that one already took it
                res = await conn.execute(update(blobs).where(blobs.c.id == self._id, blobs.c.name.is_(None))
                                         .values(**grown))
                if res.rowcount != 1:
                    raise BlobNotFoundError(f"{self._name}: the unfinished write was swept as an orphan")
            if piece:
                await conn.execute(insert(blob_chunks).values(blob_id=self._id, seq=self._seq, data=piece))
        self._started = True
        if piece:
            self._seq += 1
            self._size += len(piece)

    async def write(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= self._chunk:
            piece = bytes(self._buf[: self._chunk])
            del self._buf[: self._chunk]
            await self._store(piece)

    async def commit(self) -> int:
        if self._buf or not self._started:
            piece, self._buf = bytes(self._buf), bytearray()
            await self._store(piece)
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                async with self._db.begin() as conn:
                    await _delete_where(conn, blobs.c.name == self._name)
                    named = await conn.execute(update(blobs).where(blobs.c.id == self._id)
                                               .values(name=self._name, updated_at=time.time()))
                    if named.rowcount != 1:
                        raise BlobNotFoundError(f"{self._name}: the unfinished write was swept as an orphan")
                return self._size
            except IntegrityError:  # another writer named its object first (unique name): replace it
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def abort(self) -> None:
        self._buf = bytearray()
        if self._started:
            async with self._db.begin() as conn:
                await _delete_where(conn, (blobs.c.id == self._id) & blobs.c.name.is_(None))


class _DatabaseBlob:
    def __init__(self, db: AsyncEngine, blob_id: str, size: int, count: int) -> None:
        self._db = db
        self._id = blob_id
        self._size = size
        self._count = count

    @property
    def size(self) -> int:
        return self._size

    async def chunks(self) -> AsyncIterator[bytes]:
        for seq in range(self._count):
            async with self._db.connect() as conn:
                data = (await conn.execute(
                    select(blob_chunks.c.data).where(blob_chunks.c.blob_id == self._id, blob_chunks.c.seq == seq)
                )).scalar()
            if data is None:
                raise BlobNotFoundError(f"{self._id} was deleted while it was being read")
            yield bytes(data)


class DatabaseBlobStore:
    kind = "database"

    def __init__(self, db: AsyncEngine, tmp_dir: Path, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._db = db
        self._tmp = Path(tmp_dir)
        self._chunk = max(1, chunk_bytes)

    def create(self, name: str) -> _DatabaseWriter:
        return _DatabaseWriter(self._db, check_name(name), self._chunk)

    async def put_file(self, name: str, path: Path) -> int:
        size = await copy_file_in(self.create(name), path, self._chunk)
        path.unlink(missing_ok=True)
        return size

    async def open(self, name: str) -> _DatabaseBlob | None:
        async with self._db.connect() as conn:
            row = (await conn.execute(
                select(blobs.c.id, blobs.c.size, blobs.c.chunks).where(blobs.c.name == check_name(name))
            )).first()
        return None if row is None else _DatabaseBlob(self._db, row[0], int(row[1]), int(row[2]))

    @contextlib.asynccontextmanager
    async def local_file(self, name: str) -> AsyncIterator[Path]:
        blob = await self.open(name)
        if blob is None:
            raise BlobNotFoundError(name)
        self._tmp.mkdir(parents=True, exist_ok=True)
        # In the temp directory, which a restarted node sweeps: a crash here leaves nothing behind for good.
        path = self._tmp / f"blob_{secrets.token_hex(10)}"
        try:
            fh = await asyncio.to_thread(open, path, "wb")
            try:
                async for chunk in blob.chunks():
                    await asyncio.to_thread(fh.write, chunk)
            finally:
                fh.close()
            yield path
        finally:
            path.unlink(missing_ok=True)

    async def delete(self, names: Sequence[str], conn: AsyncConnection | None = None) -> None:
        checked = [check_name(n) for n in names]
        if not checked:
            return
        if conn is not None:
            await _delete_where(conn, blobs.c.name.in_(checked))
            return
        async with self._db.begin() as own:
            await _delete_where(own, blobs.c.name.in_(checked))

    async def listing(self, prefix: str) -> list[BlobInfo]:
        async with self._db.connect() as conn:
            rows = (await conn.execute(
                select(blobs.c.name, blobs.c.size, blobs.c.updated_at)
                .where(blobs.c.name.startswith(prefix, autoescape=True))
            )).all()
        return [BlobInfo(r[0], int(r[1]), float(r[2])) for r in rows]

    async def sweep_orphans(self, older_than_s: float, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - older_than_s
        async with self._db.begin() as conn:
            return await _delete_where(conn, blobs.c.name.is_(None) & (blobs.c.updated_at < cutoff))
