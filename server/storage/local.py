"""Blobs as files under the data directory (`<data_dir>/speeches/...`, `<data_dir>/jobs/...`): the default for
one node. A write goes to a uniquely named `<name>.<random>.part` beside its target and is renamed over it on
commit, so a download never sees half a file and two writers of one name never collide. A `.part` file
left by a crashed process is an orphan: `sweep_orphans` owns that rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.ext.asyncio import AsyncConnection

from server.storage.base import CHUNK_BYTES, NAMESPACES, BlobInfo, BlobNotFoundError, check_name, copy_file_in

PART_SUFFIX = ".part"


class _LocalWriter:
    def __init__(self, target: Path) -> None:
        self._target = target
        self._part = target.with_name(f"{target.name}.{secrets.token_hex(4)}{PART_SUFFIX}")
        self._fh: BinaryIO | None = None
        self._size = 0

    def _open(self) -> BinaryIO:
        if self._fh is None:
            self._part.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self._part, "wb")  # noqa: SIM115 - closed by commit or abort
        return self._fh

    def _write(self, data: bytes) -> None:
        self._open().write(data)
        self._size += len(data)

    def _commit(self) -> int:
        self._open().close()
        try:
            os.replace(self._part, self._target)
        except FileNotFoundError:
            raise BlobNotFoundError(f"{self._target.name}: the unfinished write was swept as an orphan") from None
        return self._size

    def _abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._part.unlink(missing_ok=True)

    async def write(self, data: bytes) -> None:
        if data:
            await asyncio.to_thread(self._write, data)  # disk I/O stays off the event loop

    async def commit(self) -> int:
        return await asyncio.to_thread(self._commit)

    async def abort(self) -> None:
        await asyncio.to_thread(self._abort)


class _LocalBlob:
    def __init__(self, path: Path, size: int) -> None:
        self._path = path
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            fh = await asyncio.to_thread(open, self._path, "rb")
        except FileNotFoundError:
            raise BlobNotFoundError(self._path.name) from None
        try:
            while chunk := await asyncio.to_thread(fh.read, CHUNK_BYTES):
                yield chunk
        finally:
            fh.close()


class LocalBlobStore:
    kind = "local"

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        for namespace in NAMESPACES:
            (self._root / namespace).mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self._root / check_name(name)

    def create(self, name: str) -> _LocalWriter:
        return _LocalWriter(self.path(name))

    async def put_file(self, name: str, path: Path) -> int:
        target = self.path(name)
        try:  # a rename when the file is on the same file system (data/tmp is): no copy at all
            await asyncio.to_thread(os.replace, path, target)
        except OSError:
            size = await copy_file_in(self.create(name), path, CHUNK_BYTES)
            path.unlink(missing_ok=True)
            return size
        return target.stat().st_size

    async def open(self, name: str) -> _LocalBlob | None:
        path = self.path(name)
        try:
            return _LocalBlob(path, (await asyncio.to_thread(path.stat)).st_size)
        except FileNotFoundError:
            return None

    @contextlib.asynccontextmanager
    async def local_file(self, name: str) -> AsyncIterator[Path]:
        path = self.path(name)
        if not path.is_file():
            raise BlobNotFoundError(name)
        yield path  # already on this disk; a reader's open descriptor outlives a purge

    async def delete(self, names: Sequence[str], conn: AsyncConnection | None = None) -> None:
        paths = [self.path(n) for n in names]  # `conn` is for the database store: files are not transactional
        for path in paths:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def listing(self, prefix: str) -> list[BlobInfo]:
        namespace, _, start = prefix.partition("/")
        if namespace not in NAMESPACES:
            raise ValueError(f"not a blob namespace: {prefix!r}")
        return await asyncio.to_thread(self._list, namespace, start)

    def _list(self, namespace: str, start: str) -> list[BlobInfo]:
        out = []
        for path in (self._root / namespace).iterdir():
            if path.name.startswith(start) and not path.name.endswith(PART_SUFFIX):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # deleted by another process meanwhile
                out.append(BlobInfo(f"{namespace}/{path.name}", st.st_size, st.st_mtime))
        return out

    async def sweep_orphans(self, older_than_s: float, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - older_than_s
        return await asyncio.to_thread(self._sweep, cutoff)

    def _sweep(self, cutoff: float) -> int:
        removed = 0
        for namespace in NAMESPACES:
            for path in (self._root / namespace).glob(f"*{PART_SUFFIX}"):
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass  # its writer committed or aborted meanwhile, or another process swept it
        return removed
