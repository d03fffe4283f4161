"""Blob storage (server/storage): the local store and the database store (on SQLite here, on PostgreSQL as a
cluster runs it) keep the same contract: nothing visible before commit, nothing left after abort, chunked
reads and writes with bounded memory, a replaced name, orphans swept, deletes that follow their transaction.
Then the server with the database store: speeches and subtitle jobs stored as rows, not files."""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db import blob_chunks, blobs, create_schema, make_engine
from server.storage import (
    BlobNotFoundError,
    BlobStore,
    DatabaseBlobStore,
    LocalBlobStore,
    blob_backend,
    check_name,
)
from tests.conftest import ADMIN_KEY, Api
from tests.fakes import FakeModels, fake_models, fake_settings, tone
from tests.pg import PgCluster, pg_cluster

SMALL_CHUNK = 1000  # the database store's rows in these tests: many chunks from a few KB


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgCluster]:
    with pg_cluster() as cluster:
        yield cluster


@contextlib.asynccontextmanager
async def database(url: str) -> AsyncIterator[AsyncEngine]:
    db = make_engine(url)
    await create_schema(db)
    try:
        yield db
    finally:
        await db.dispose()


class Backend:
    """A store and, for the database store, its engine (to look at the rows)."""

    def __init__(self, store: BlobStore, db: AsyncEngine | None, root: Path) -> None:
        self.store, self.db, self.root = store, db, root

    async def rows(self) -> tuple[int, int]:
        """(blobs, blob_chunks) rows; for the local store, (files, .part files) in its folders."""
        if self.db is None:
            files = [p for ns in ("speeches", "jobs") for p in (self.root / ns).iterdir()]
            return len([p for p in files if not p.name.endswith(".part")]), len([p for p in files if p.name.endswith(".part")])
        async with self.db.connect() as conn:
            n_blobs = (await conn.execute(select(func.count()).select_from(blobs))).scalar_one()
            n_chunks = (await conn.execute(select(func.count()).select_from(blob_chunks))).scalar_one()
        return int(n_blobs), int(n_chunks)


@pytest_asyncio.fixture(loop_scope="function", params=["local", "sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "local":
        yield Backend(LocalBlobStore(tmp_path / "data"), None, tmp_path / "data")
        return
    url = (request.getfixturevalue("postgres").create_database() if request.param == "postgres"
           else f"sqlite+aiosqlite:///{tmp_path / 'blobs.db'}")
    async with database(url) as db:
        yield Backend(DatabaseBlobStore(db, tmp_path / "tmp", SMALL_CHUNK), db, tmp_path)


async def read_all(store: BlobStore, name: str) -> tuple[bytes, list[int]]:
    blob = await store.open(name)
    assert blob is not None
    sizes, out = [], bytearray()
    async for chunk in blob.chunks():
        sizes.append(len(chunk))
        out += chunk
    assert blob.size == len(out)
    return bytes(out), sizes


def payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


async def test_written_in_pieces_visible_only_when_committed(backend: Backend) -> None:
    store, data = backend.store, payload(10_500)
    writer = store.create("speeches/sp_a.mp3")
    for start in range(0, len(data), 777):  # pieces that straddle chunk boundaries
        await writer.write(data[start : start + 777])
        assert await store.open("speeches/sp_a.mp3") is None  # a reader never sees half an object
    assert await writer.commit() == len(data)
    got, sizes = await read_all(store, "speeches/sp_a.mp3")
    assert got == data
    if backend.db is not None:  # stored as it arrived, in rows of the chunk size, the last one shorter
        assert sizes == [SMALL_CHUNK] * 10 + [500]
        assert await backend.rows() == (1, 11)
    empty = store.create("jobs/sub_e.srt")
    assert await empty.commit() == 0
    assert await read_all(store, "jobs/sub_e.srt") == (b"", [])


async def test_abort_leaves_nothing(backend: Backend) -> None:
    writer = backend.store.create("jobs/sub_x.media")
    await writer.write(payload(4321))
    await writer.abort()
    await writer.abort()  # twice is harmless
    assert await backend.store.open("jobs/sub_x.media") is None
    assert await backend.rows() == (0, 0)


async def test_commit_replaces_an_object_of_the_same_name(backend: Backend) -> None:
    for seed in (1, 2):
        w = backend.store.create("jobs/sub_r.srt")
        await w.write(payload(2500, seed))
        await w.commit()
    assert (await read_all(backend.store, "jobs/sub_r.srt"))[0] == payload(2500, 2)
    if backend.db is not None:
        assert await backend.rows() == (1, 3)  # the first object's chunks went with it


async def test_concurrent_commits_of_one_name_leave_one_whole_object(backend: Backend) -> None:
    """A worker that lost a stale job and its new owner may write the same result at once: one wins whole."""
    writers = [backend.store.create("jobs/sub_c.srt") for _ in range(6)]
    for seed, w in enumerate(writers):
        await w.write(payload(3000, seed))
    await asyncio.gather(*(w.commit() for w in writers))
    got, _ = await read_all(backend.store, "jobs/sub_c.srt")
    assert got in [payload(3000, seed) for seed in range(6)]
    assert (await backend.rows())[0] == 1
    if backend.db is not None:
        assert await backend.rows() == (1, 3)


async def test_put_file_and_local_file(backend: Backend, tmp_path: Path) -> None:
    src = tmp_path / "upload.bin"
    src.write_bytes(payload(5555))
    assert await backend.store.put_file("jobs/sub_p.media", src) == 5555
    assert not src.exists()  # taken over by the store
    async with backend.store.local_file("jobs/sub_p.media") as path:
        assert path.read_bytes() == payload(5555)
    if backend.db is not None:
        assert not path.exists()  # the copy is this node's scratch, gone after use
        assert list((tmp_path / "tmp").iterdir()) == []
    with pytest.raises(BlobNotFoundError):
        async with backend.store.local_file("jobs/sub_missing.media"):
            pass


async def test_listing_and_delete(backend: Backend) -> None:
    for name in ("jobs/sub_1.media", "jobs/sub_1.srt", "jobs/sub_2.media", "speeches/sp_1.mp3"):
        w = backend.store.create(name)
        await w.write(b"x" * 10)
        await w.commit()
    unfinished = backend.store.create("jobs/sub_3.media")
    await unfinished.write(b"y" * 2000)
    listed = await backend.store.listing("jobs/sub_1")
    assert sorted(b.name for b in listed) == ["jobs/sub_1.media", "jobs/sub_1.srt"]
    assert all(b.size == 10 for b in listed)
    assert sorted(b.name for b in await backend.store.listing("jobs/")) == [
        "jobs/sub_1.media", "jobs/sub_1.srt", "jobs/sub_2.media"]  # not the unfinished write
    await backend.store.delete(["jobs/sub_1.media", "jobs/sub_1.srt", "jobs/nothing.here"])
    assert sorted(b.name for b in await backend.store.listing("jobs/")) == ["jobs/sub_2.media"]
    await unfinished.abort()


async def test_sweep_removes_only_unfinished_writes_older_than_asked(backend: Backend) -> None:
    done = backend.store.create("speeches/sp_done.mp3")
    await done.write(payload(1500))
    await done.commit()
    crashed = backend.store.create("speeches/sp_crashed.mp3")  # its writer "died" after some bytes
    await crashed.write(payload(2500))
    assert await backend.store.sweep_orphans(3600) == 0  # still fresh: it could be a live, slow writer
    assert await backend.store.sweep_orphans(3600, now=time.time() + 7200) == 1
    with pytest.raises(BlobNotFoundError):  # a writer that was not dead after all finds out at commit
        await crashed.commit()
    assert await backend.store.open("speeches/sp_crashed.mp3") is None
    assert (await read_all(backend.store, "speeches/sp_done.mp3"))[0] == payload(1500)
    assert (await backend.rows())[1] == (2 if backend.db is not None else 0)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_database_delete_follows_its_transaction(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = (request.getfixturevalue("postgres").create_database() if kind == "postgres"
           else f"sqlite+aiosqlite:///{tmp_path / 'blobs.db'}")
    async with database(url) as db:
        store = DatabaseBlobStore(db, tmp_path / "tmp", SMALL_CHUNK)
        w = store.create("jobs/sub_t.srt")
        await w.write(payload(2000))
        await w.commit()
        with pytest.raises(RuntimeError):
            async with db.begin() as conn:
                await store.delete(["jobs/sub_t.srt"], conn=conn)
                raise RuntimeError("the row delete failed after the blob delete")
        assert (await read_all(store, "jobs/sub_t.srt"))[0] == payload(2000)  # rolled back together
        async with db.begin() as conn:
            await store.delete(["jobs/sub_t.srt"], conn=conn)
        assert await store.open("jobs/sub_t.srt") is None


@pytest.mark.parametrize("kind", ["local", "sqlite", "postgres"])
async def test_a_large_object_never_sits_whole_in_memory(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """48 MB stored from a file and read back: the Python heap holds a few chunks at a time, not the object."""
    size = 48 << 20
    src = tmp_path / "big.media"
    with open(src, "wb") as fh:
        for i in range(48):
            fh.write(payload(1 << 20, i))
    async with contextlib.AsyncExitStack() as stack:
        if kind == "local":
            store: BlobStore = LocalBlobStore(tmp_path / "data")
        else:
            url = (request.getfixturevalue("postgres").create_database() if kind == "postgres"
                   else f"sqlite+aiosqlite:///{tmp_path / 'blobs.db'}")
            db = await stack.enter_async_context(database(url))
            store = DatabaseBlobStore(db, tmp_path / "tmp")
        tracemalloc.start()
        try:
            w = store.create("jobs/sub_big.media")
            with open(src, "rb") as fh:
                while piece := fh.read(256 << 10):  # as an upload arrives: small pieces
                    await w.write(piece)
            assert await w.commit() == size
            blob = await store.open("jobs/sub_big.media")
            assert blob is not None and blob.size == size
            total, first = 0, b""
            async for chunk in blob.chunks():
                first = first or chunk[:64]
                total += len(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert total == size and first == payload(1 << 20, 0)[:64]
        assert peak < 8 << 20, f"peak Python heap {peak / 2**20:.1f} MiB while moving a 48 MiB object"


def test_backend_choice_and_names() -> None:
    assert blob_backend("", "postgresql+asyncpg://u@h/db") == "database"  # nodes share no disk
    assert blob_backend("", "sqlite+aiosqlite:///x.db") == "local"
    assert blob_backend("", "") == "local"
    assert blob_backend("LOCAL", "postgresql+asyncpg://u@h/db") == "local"
    assert blob_backend("database", "sqlite+aiosqlite:///x.db") == "database"
    with pytest.raises(ValueError):
        blob_backend("s3", "")
    assert check_name("speeches/sp_0a.mp3") == "speeches/sp_0a.mp3"
    for bad in ("../etc/passwd", "jobs/../x", "jobs/.hidden", "jobs/a/b", "models/x.bin", "jobs/", "jobs/a b"):
        with pytest.raises(ValueError):
            check_name(bad)


# ---------------------------------------------------------------- the server on the database store (fake engines)


@pytest_asyncio.fixture(loop_scope="function")
async def db_api(tmp_path: Path) -> AsyncIterator[Api]:
    """The server layer with S7_BLOB_STORE=database and 1 KB chunks: every stored file spans many rows."""
    import httpx

    from server.app import create_app

    settings = fake_settings(tmp_path, ADMIN_KEY).with_(blob_store="database", blob_chunk_kb=1)
    app = create_app(settings, manager=fake_models())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:
            yield Api(app, c, settings)


async def stored_names(api: Api) -> list[str]:
    async with api.services.db.connect() as conn:
        return sorted((await conn.execute(select(blobs.c.name))).scalars().all())


async def test_speeches_are_rows_not_files_on_the_database_store(db_api: Api) -> None:
    key = (await db_api.account())["apiKey"]
    r = await db_api.client.post("/tts", json={"apiKey": key, "text": "One short sentence. And a second one."})
    assert r.status_code == 200 and len(r.content) > 4096
    speech_id = r.headers["x-speech-id"]
    d = await db_api.client.get(f"/speeches/{speech_id}?download=1", headers={"x-api-key": key})
    assert d.status_code == 200 and d.content == r.content  # streamed back from the rows, byte for byte
    assert d.headers["content-length"] == str(len(r.content))
    assert f'filename="speech-{speech_id}.mp3"' in d.headers["content-disposition"]
    assert await stored_names(db_api) == [f"speeches/{speech_id}.mp3"]
    async with db_api.services.db.connect() as conn:
        chunks = (await conn.execute(select(func.count()).select_from(blob_chunks))).scalar_one()
    assert chunks == -(-len(r.content) // 1024)
    assert not (Path(db_api.settings.data_dir) / "speeches").exists()  # nothing on this node's disk

    models = db_api.services.models
    assert isinstance(models, FakeModels)
    models.tts_engines["voice-a"].fail_after = 1  # a voice that fails mid-text stores nothing
    bad = await db_api.client.post("/tts", json={"apiKey": key, "text": "One. Two. Three.", "json": True})
    assert bad.status_code == 500
    await db_api.services.tts.stop()  # the failed stream's clean-up
    assert await stored_names(db_api) == [f"speeches/{speech_id}.mp3"]
    async with db_api.services.db.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(blob_chunks))).scalar_one() == chunks


async def test_subtitle_jobs_keep_upload_and_result_in_the_database(db_api: Api) -> None:
    from tests.test_server_layer import wav
    from tests.test_subtitle_jobs import wait_for

    key = (await db_api.account())["apiKey"]
    files = {"audio": ("a.wav", wav(tone(300, 2)), "audio/wav")}
    created = (await db_api.client.post("/subtitle/jobs", headers={"x-api-key": key}, files=files)).json()
    view = await wait_for(db_api.client, key, created["id"], {"completed", "failed"})
    assert view["status"] == "completed", view
    srt = await db_api.client.get(view["downloadUrl"], headers={"x-api-key": key})
    assert srt.text == "1\n00:00:00,000 --> 00:00:02,000\ntone300 tone300\n"
    assert 'filename="a.srt"' in srt.headers["content-disposition"]
    # The upload went once the job was done (the worker decoded a scratch copy, also gone); the result stays.
    assert await stored_names(db_api) == [f"jobs/{created['id']}.srt"]
    assert [p for p in (Path(db_api.settings.data_dir) / "tmp").rglob("*") if p.is_file()] == []
    # The purge deletes the job's files with its row.
    assert await db_api.services.subtitle_jobs.purge(now=time.time() + 25 * 3600) == 1
    assert await stored_names(db_api) == []
    assert (await db_api.client.get(view["downloadUrl"], headers={"x-api-key": key})).status_code == 404
