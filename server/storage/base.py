"""The blob store contract: named objects (stored speeches, subtitle job uploads and results) written and read
as streams of chunks, so an upload of hundreds of MB never sits whole in memory.

Two implementations: `LocalBlobStore` (files under the data directory: one node, or nodes sharing a disk) and
`DatabaseBlobStore` (rows in the shared database: any node reads what any other node wrote). A write becomes
visible only when it is committed; an aborted write, or one whose writer died, leaves nothing a reader can
see, and `sweep_orphans` removes its remains once they are older than the writer could still be alive.

Names are chosen by the server, never by a user: `<namespace>/<file name>`, e.g. `speeches/sp_....mp3`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

CHUNK_BYTES = 1 << 20  # bytes per read and per database row: small enough to hold, big enough to be cheap
NAMESPACES = ("speeches", "jobs")  # the only places the server stores objects (the local store's folders)
_NAME_RE = re.compile("^(?:" + "|".join(NAMESPACES) + r")/[A-Za-z0-9_][A-Za-z0-9_.-]{0,150}$")


class BlobNotFoundError(Exception):
    """No committed object of that name (or it was deleted while it was being read)."""


def check_name(name: str) -> str:
    """A name the stores accept: a known namespace, one path component, no `..`, no hidden files."""
    if not _NAME_RE.match(name) or ".." in name:
        raise ValueError(f"not a blob name: {name!r}")
    return name


@dataclass(frozen=True)
class BlobInfo:
    name: str
    size: int
    modified: float  # when the object was written (epoch seconds)


class OpenBlob(Protocol):
    """A committed object found by `BlobStore.open`, read lazily."""

    @property
    def size(self) -> int: ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The bytes in order, at most CHUNK_BYTES at a time. Raises BlobNotFoundError if the object is
        deleted before the end (only the database store can notice: a local file stays readable)."""
        ...


class BlobWriter(Protocol):
    """One write in progress: invisible to readers until `commit`, gone after `abort`."""

    async def write(self, data: bytes) -> None: ...

    async def commit(self) -> int:
        """Makes the object visible under its name, replacing one of the same name; returns its size."""
        ...

    async def abort(self) -> None:
        """Drops what was written (safe to call after a failed commit, and more than once)."""
        ...


class BlobStore(Protocol):
    kind: str  # "local" | "database"

    def create(self, name: str) -> BlobWriter: ...

    async def put_file(self, name: str, path: Path) -> int:
        """Stores a local file under `name` and removes the file (moved when it can be); returns the size."""
        ...

    async def open(self, name: str) -> OpenBlob | None: ...

    def local_file(self, name: str) -> AbstractAsyncContextManager[Path]:
        """The object as a file on this node's disk for as long as the context lasts (what tools that read a
        path need, e.g. the STT front end's decoder). The database store copies it to the temp directory
        chunk by chunk and removes the copy at the end. Raises BlobNotFoundError."""
        ...

    async def delete(self, names: Sequence[str], conn: AsyncConnection | None = None) -> None:
        """Deletes the objects (missing ones are ignored). With `conn`, the database store deletes inside
        that transaction, so rows and their objects go together or not at all."""
        ...

    async def listing(self, prefix: str) -> list[BlobInfo]:
        """Committed objects whose name starts with `prefix` (e.g. "jobs/")."""
        ...

    async def sweep_orphans(self, older_than_s: float, now: float | None = None) -> int:
        """Removes unfinished writes untouched for `older_than_s` (their writer crashed); returns how many.
        Never touches a committed object."""
        ...


async def copy_file_in(writer: BlobWriter, path: Path, chunk_bytes: int) -> int:
    """Feeds a local file to a writer chunk by chunk and commits (aborts on any failure)."""
    try:
        fh = await asyncio.to_thread(open, path, "rb")
        try:
            while chunk := await asyncio.to_thread(fh.read, chunk_bytes):
                await writer.write(chunk)
        finally:
            fh.close()
        return await writer.commit()
    except BaseException:
        await writer.abort()
        raise


def blob_backend(requested: str, database_url: str) -> str:
    """S7_BLOB_STORE: `local` or `database`; empty means database when the server shares a PostgreSQL
    database with other nodes (they have no common disk), else local files."""
    choice = requested.strip().lower()
    if choice in {"local", "database"}:
        return choice
    if choice:
        raise ValueError(f"S7_BLOB_STORE must be local or database, not {requested!r}")
    return "database" if database_url.startswith("postgresql") else "local"
