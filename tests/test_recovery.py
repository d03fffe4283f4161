"""Crash recovery (issue 15, point 7): what a dead server process left reserved is refunded at the next start,
with a ledger note, and its temporary files are removed; what a live process holds (another server on the same
database, a queued subtitle job) is never touched. A damaged SQLite file stops the start with a clear message.

The "dead" and "live" processes are rows written as a server process writes them (fake engines, no model)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from server.db import server_processes, subtitle_jobs, usage
from server.settings import Settings
from tests.conftest import ADMIN_KEY, Api
from tests.fakes import fake_models, fake_settings

HOUR = 3600.0


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Api]:
    from server.app import create_app

    app = create_app(settings, manager=fake_models())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=30) as c:
            yield Api(app, c, settings)


def aged(path: Path, seconds: float, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


async def test_a_dead_process_s_reservations_and_files_are_recovered_at_start(tmp_path: Path) -> None:
    # No job workers: the hand-made queued job below has no upload, and a worker taking it would fail it and
    # refund its minutes, which is the job's business, not recovery's.
    settings = dataclasses.replace(fake_settings(tmp_path, ADMIN_KEY), job_workers=0)
    data = Path(settings.data_dir)
    async with running(settings) as api:
        acc = await api.account(startingMinutes=10)
        db = api.services.db
        now = time.time()
        pool = api.services.minutes
        dead, live = "crashed-host-1-aaaa", "other-host-2-bbbb"
        # What the processes held: a dead process's TTS and realtime reservations, a live one's /stt, a queued
        # job's reservation, one a crash left between reserving and storing its job, and a legacy row.
        held = {name: await pool.reserve(acc["id"], m, kind=kind) for name, m, kind in [
            ("dead_tts", 4.5, "tts"), ("dead_rt", 1.0, "realtime"), ("live_stt", 0.5, "stt"),
            ("job", 1.0, "subtitle_job"), ("orphan_job", 0.5, "subtitle_job"), ("legacy", 0.5, "stt"),
            ("legacy_recent", 0.5, "stt")]}
        owners = {"dead_tts": dead, "dead_rt": dead, "live_stt": live, "legacy": None, "legacy_recent": None}
        async with db.begin() as conn:
            for name, owner in owners.items():
                await conn.execute(update(usage).where(usage.c.id == held[name].usage_id).values(owner=owner))
            for name in ("orphan_job", "legacy"):
                await conn.execute(update(usage).where(usage.c.id == held[name].usage_id)
                                   .values(created_at=now - 25 * HOUR))
            await conn.execute(server_processes.insert().values(id=dead, started_at=now - HOUR, heartbeat_at=now - HOUR))
            await conn.execute(server_processes.insert().values(id=live, started_at=now, heartbeat_at=now + HOUR))
            await conn.execute(subtitle_jobs.insert().values(
                id="sub_queued", account_id=acc["id"], status="queued", options="{}", upload_file="sub_queued.media",
                usage_id=held["job"].usage_id, attempts=0, created_at=now, updated_at=now, expires_at=now + 24 * HOUR))
        assert await api.minutes(acc["apiKey"]) == 10 - 8.5
    files = {
        "dead": aged(data / "tmp" / dead / "up_0123", 60), "dead_pcm": aged(data / "tmp" / dead / "pcm_01.f32", 60),
        "live": aged(data / "tmp" / live / "up_4567", 2 * HOUR),
        "old_loose": aged(data / "tmp" / "up_legacy", 2 * HOUR), "new_loose": aged(data / "tmp" / "up_fresh", 60),
    }

    async with running(settings) as api:  # the next start
        rows = await ledger_rows(api, acc["id"])
        for name in ("dead_tts", "dead_rt"):
            status, note = rows[held[name].usage_id]
            assert status == "refunded" and note.startswith("refunded at start: the server process holding it died")
            assert dead in note
        assert rows[held["orphan_job"].usage_id][0] == "refunded"
        assert rows[held["legacy"].usage_id][0] == "refunded"
        for name in ("live_stt", "job", "legacy_recent"):  # a live process's, a queued job's, a recent legacy one
            assert rows[held[name].usage_id] == ("reserved", None), name
        assert await api.minutes(acc["apiKey"]) == 10 - 2.0
        gone = {k for k, p in files.items() if not p.exists()}
        assert gone == {"dead", "dead_pcm", "old_loose"}
        assert not (data / "tmp" / dead).exists()
        mine = api.services.lease.tmp_dir
        assert mine.is_dir() and mine.parent == data / "tmp"
        async with api.services.db.connect() as conn:
            processes = set((await conn.execute(select(server_processes.c.id))).scalars())
        assert processes == {live, mine.name}  # the dead one is forgotten once its minutes are back
    # A graceful stop ends the lease and removes the process's directory.
    async with services_of_db(settings) as conn:
        assert set((await conn.execute(select(server_processes.c.id))).scalars()) == {live}
    assert not mine.exists()


async def test_a_live_process_s_reservations_survive_another_s_start(tmp_path: Path) -> None:
    """Two servers on one database: the second's start (and its periodic recovery) leaves the first's alone;
    once the first stops heartbeating, the second's recovery gives its minutes back."""
    settings = fake_settings(tmp_path, ADMIN_KEY)
    async with running(settings) as first:
        acc = await first.account(startingMinutes=10)
        first_svc = first.services
        reservation = await first_svc.minutes.reserve(acc["id"], 2.0, kind="realtime")
        async with running(settings) as second:
            assert second.services.lease.tmp_dir != first_svc.lease.tmp_dir
            assert (await ledger_rows(second, acc["id"]))[reservation.usage_id][0] == "reserved"
            assert first_svc.lease.tmp_dir.is_dir()
            lease = second.services.lease
            later = time.time() + settings.job_stale_seconds + 1  # the first's heartbeat is now stale
            await lease.recover(second.services.minutes, note="refunded: the server process holding it died",
                                now=later)
            status, note = (await ledger_rows(second, acc["id"]))[reservation.usage_id]
            assert status == "refunded" and first_svc.lease.tmp_dir.name in note
            assert not first_svc.lease.tmp_dir.exists()
            assert await second.minutes(acc["apiKey"]) == 10


async def test_a_damaged_sqlite_database_stops_the_start(tmp_path: Path) -> None:
    from server.db import DatabaseCorruptError

    settings = fake_settings(tmp_path, ADMIN_KEY)
    async with running(settings) as api:
        for i in range(30):  # a few pages of accounts and ledger
            await api.account(companyName=f"Company {i}" * 10)
    db_file = Path(settings.data_dir) / "speech7.db"
    raw = bytearray(db_file.read_bytes())
    page = int.from_bytes(raw[16:18], "big")
    assert len(raw) >= 4 * page
    raw[2 * page : len(raw)] = bytes([0x5A]) * (len(raw) - 2 * page)  # every page after the schema's: garbage
    db_file.write_bytes(bytes(raw))
    with pytest.raises(DatabaseCorruptError, match="is damaged") as info:
        async with running(settings):
            pass
    assert "restore it from a backup" in str(info.value) and str(db_file) in str(info.value)


async def ledger_rows(api: Api, account_id: str) -> dict[int, tuple[str, str | None]]:
    async with api.services.db.connect() as conn:
        rows = await conn.execute(select(usage.c.id, usage.c.status, usage.c.note).where(usage.c.account_id == account_id))
        return {int(r[0]): (r[1], r[2]) for r in rows}


@contextlib.asynccontextmanager
async def services_of_db(settings: Settings) -> AsyncIterator:  # type: ignore[type-arg]
    from server.db import make_engine

    engine = make_engine(settings.resolved_database_url)
    try:
        async with engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()



async def test_a_database_from_before_leases_is_upgraded_in_place(tmp_path: Path) -> None:
    """usage.owner and server_processes are new: an older database gets them at start, its open reservations
    (no owner) are refunded once they are a day old, and its data stays."""
    import sqlite3

    settings = fake_settings(tmp_path, ADMIN_KEY)
    async with running(settings) as api:
        acc = await api.account(startingMinutes=10)
        old = await api.services.minutes.reserve(acc["id"], 2.0, kind="tts")
    db_file = Path(settings.data_dir) / "speech7.db"
    with sqlite3.connect(db_file) as conn:  # what the previous version's schema looked like
        conn.execute("DROP INDEX ix_usage_status")
        conn.execute("ALTER TABLE usage DROP COLUMN owner")
        conn.execute("DROP TABLE server_processes")
        conn.execute("UPDATE usage SET created_at = created_at - 90000 WHERE id = ?", (old.usage_id,))
    async with running(settings) as api:
        status, note = (await ledger_rows(api, acc["id"]))[old.usage_id]
        assert status == "refunded" and "without crash recovery" in note
        assert await api.minutes(acc["apiKey"]) == 10
        fresh = await api.services.minutes.reserve(acc["id"], 0.5, kind="stt")
        async with api.services.db.connect() as conn:
            owner = (await conn.execute(select(usage.c.owner).where(usage.c.id == fresh.usage_id))).scalar_one()
        assert owner == api.services.lease.id
    with sqlite3.connect(db_file) as conn:
        assert "ix_usage_status" in {r[1] for r in conn.execute("PRAGMA index_list(usage)")}
