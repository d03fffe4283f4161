"""Crash recovery: what a server process holds, and what the next process gives back when one dies.

Each process registers a lease (a `server_processes` row with its id) and heartbeats it. Its minutes
reservations carry that id (`usage.owner`, written by MinutesPool) and its temporary files live in its own
directory, `<data_dir>/tmp/<lease id>/` (uploads, decoded PCM, cancel flags). When a process is killed
(kill -9, OOM, power loss) its reservations stay `reserved` and its files stay on disk; a process whose
heartbeat is older than `S7_JOB_STALE_SECONDS` is dead, and any live process sharing the database (the
next one to start at once, the others every minute) refunds its reservations with a ledger note and
removes its directory. A live process's reservations, a running realtime session's or a long /stt's
included, are never touched, whichever process (or host, on PostgreSQL) looks.

Subtitle jobs' reservations are not held by a process (a queued job keeps its minutes across restarts and
is resumed by any worker; see server.subtitle_jobs): only one that no queued or running job refers to any
more (a crash between reserving and storing the job) is refunded. Loose files directly under tmp/ (older
versions, the Wyoming handler's audio) are removed once they are an hour old, far longer than any live writer
leaves them untouched; unfinished writes of stored speeches and job files are the blob store's to sweep
(server.storage, `sweep_orphans`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import and_, delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db import server_processes, subtitle_jobs, usage
from server.minutes import DURABLE_KINDS, MinutesPool, Reservation

log = logging.getLogger("speech7.leases")
# Reservations written by a version without leases have no owner: refunded once they are older than any
# request of that version could still be running.
LEGACY_RESERVATION_S = 24 * 3600.0
# Files no lease owns are removed at this age: a live writer writes its file far more often.
ORPHAN_FILE_AGE_S = 3600.0
RECOVER_EVERY_S = 60.0


def new_lease_id() -> str:
    """host-pid-random: readable in the ledger, unique across restarts and hosts, safe as a directory name."""
    host = re.sub(r"[^A-Za-z0-9.-]", "", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Recovered:
    refunded: int  # reservations given back
    removed: int  # temporary directories and files deleted


class ProcessLease:
    """This process's lease: `start` registers it and recovers what dead processes left, `stop` ends it."""

    def __init__(self, db: AsyncEngine, *, lease_id: str, data_dir: Path, stale_s: float) -> None:
        self.id = lease_id
        self._db = db
        self._data_dir = Path(data_dir)
        self._stale_s = stale_s
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def tmp_root(self) -> Path:
        return self._data_dir / "tmp"

    @property
    def tmp_dir(self) -> Path:
        """This process's temporary files: removed whole once the process is gone."""
        return self.tmp_root / self.id

    async def start(self, minutes: MinutesPool) -> Recovered:
        now = time.time()
        async with self._db.begin() as conn:
            await conn.execute(server_processes.insert().values(id=self.id, started_at=now, heartbeat_at=now))
        self.tmp_dir.mkdir(parents=True, exist_ok=True)  # after registering: see _sweep
        recovered = await self.recover(minutes, note="refunded at start: the server process holding it died")
        if recovered.refunded or recovered.removed:
            log.warning("crash recovery: refunded %d reservation(s), removed %d orphaned temporary file(s)",
                        recovered.refunded, recovered.removed)
        self._task = asyncio.ensure_future(self._beat(minutes))
        return recovered

    async def stop(self) -> None:
        """Graceful end (after every reservation of this process is settled or refunded)."""
        if self._task is not None:
            # Stopped, not cancelled: a heartbeat cancelled inside its UPDATE could leave the write unfinished.
            self._stopping.set()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        async with self._db.begin() as conn:
            await conn.execute(delete(server_processes).where(server_processes.c.id == self.id))
        await asyncio.to_thread(shutil.rmtree, self.tmp_dir, True)

    async def recover(self, minutes: MinutesPool, *, note: str, now: float | None = None) -> Recovered:
        """Refunds the reservations of dead processes and removes their files. `now` moves the clock (tests)."""
        now = time.time() if now is None else now
        # Directories first, then the live leases: a process registers before it makes its directory, so a
        # directory listed here belongs to a process that the query below already sees if it is alive.
        dirs = await asyncio.to_thread(self._lease_dirs)
        live = await self._live(now)
        refunded = 0
        for usage_id, account_id, minutes_held, owner in await self._orphaned_reservations(live, now):
            reason = note if owner is not None else "refunded: left open by a version without crash recovery"
            await minutes.refund(Reservation(usage_id, account_id, minutes_held), note=f"{reason} ({owner or '?'})")
            refunded += 1
        async with self._db.begin() as conn:  # the dead processes' reservations are back: forget them
            await conn.execute(
                delete(server_processes).where(server_processes.c.heartbeat_at < now - self._stale_s)
            )
        removed = await asyncio.to_thread(self._sweep, dirs, live, now)
        return Recovered(refunded, removed)

    async def _live(self, now: float) -> set[str]:
        async with self._db.connect() as conn:
            rows = await conn.execute(
                select(server_processes.c.id).where(server_processes.c.heartbeat_at >= now - self._stale_s)
            )
            return {str(r[0]) for r in rows}

    async def _orphaned_reservations(self, live: set[str], now: float) -> list[tuple[int, str, float, str | None]]:
        async with self._db.connect() as conn:
            rows = (
                await conn.execute(
                    select(usage.c.id, usage.c.account_id, usage.c.minutes, usage.c.owner, usage.c.kind,
                           usage.c.created_at).where(usage.c.status == "reserved")
                )
            ).all()
            job_held = set(
                (
                    await conn.execute(
                        select(subtitle_jobs.c.usage_id).where(
                            and_(subtitle_jobs.c.usage_id.is_not(None),
                                 subtitle_jobs.c.status.in_(("queued", "processing")))
                        )
                    )
                ).scalars().all()
            )
        out = []
        for usage_id, account_id, held, owner, kind, created_at in rows:
            if kind in DURABLE_KINDS:
                # A job's reservation lives as long as its job; a moment passes between reserving and storing
                # the job (or recording a re-taken reservation), hence the age.
                orphan = usage_id not in job_held and created_at < now - self._stale_s
            elif owner is None:
                orphan = created_at < now - LEGACY_RESERVATION_S
            else:
                orphan = owner not in live
            if orphan:
                out.append((int(usage_id), str(account_id), float(held), owner))
        return out

    def _lease_dirs(self) -> list[Path]:
        root = self.tmp_root
        return [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []

    def _sweep(self, dirs: list[Path], live: set[str], now: float) -> int:
        removed = 0
        for d in dirs:
            if d.name not in live and d.name != self.id:
                removed += sum(1 for p in d.rglob("*") if p.is_file())
                shutil.rmtree(d, ignore_errors=True)
        loose = [p for p in self.tmp_root.iterdir() if p.is_file()] if self.tmp_root.is_dir() else []
        for p in loose:
            try:
                if p.stat().st_mtime < now - ORPHAN_FILE_AGE_S:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                pass  # another process swept it first
        return removed

    async def _beat(self, minutes: MinutesPool) -> None:
        interval = max(0.2, min(10.0, self._stale_s / 4))
        last_recovery = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):  # the interval, cut short by stop()
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)
            if self._stopping.is_set():
                return
            try:
                await self._heartbeat()
                if time.monotonic() - last_recovery >= RECOVER_EVERY_S:
                    last_recovery = time.monotonic()
                    await self.recover(minutes, note="refunded: the server process holding it died")
            except Exception:
                log.exception("lease heartbeat failed")

    async def _heartbeat(self) -> None:
        now = time.time()
        async with self._db.begin() as conn:
            res = await conn.execute(
                update(server_processes).where(server_processes.c.id == self.id).values(heartbeat_at=now)
            )
            if res.rowcount == 0:
                # Another process took this one for dead (its event loop stalled past the stale limit) and
                # refunded its reservations: say so, and carry on under the same lease.
                log.error("this process's lease had expired; reservations it held may have been refunded")
                await conn.execute(server_processes.insert().values(id=self.id, started_at=now, heartbeat_at=now))
