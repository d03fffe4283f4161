"""Durable async subtitle jobs: rows in the database, the upload and the result in the blob store (files under
<data_dir>/jobs, or the shared database in a cluster), claimed atomically by workers (any number of server
processes sharing one database), heartbeated while they run, re-queued when a worker dies, failed (and
refunded) with a reason, purged with their files after the retention period.

Minutes are reserved when the job is accepted (so a client learns at once that its balance is too low) and
settled or refunded when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from engines.types import EngineError
from server.accounts import Account, AccountService, ensure_active
from server.capabilities import Capabilities
from server.db import subtitle_jobs as jobs_t
from server.db import usage as usage_t
from server.engine_errors import api_error
from server.errors import ApiError, not_found, unprocessable
from server.minutes import MinutesPool, quantize_minutes
from server.security import new_id
from server.settings import Settings
from server.storage import BlobNotFoundError, BlobStore, OpenBlob
from server.stt_options import SttOptions
from server.subtitle_render import SubtitleFormat, render
from server.transcription import TranscriptionService
from server.uploads import UploadedMedia

log = logging.getLogger("speech7.jobs")
MAX_ATTEMPTS = 3
# An unfinished blob write untouched this long has lost its writer (a TTS stream or an upload being stored
# takes seconds to minutes); sweeping it sooner could delete a live write of a slow client.
ORPHAN_WRITE_AGE_S = 3600.0
PROBE_DECODE_S = 600.0  # media whose header has no length: what the upload decodes to estimate it (~1 s of CPU)
# How long stop() waits for the worker loops to end between database calls before cancelling them.
STOP_WAIT_S = 10.0


def job_view(row: Any) -> dict[str, Any]:
    status = row["status"]
    out: dict[str, Any] = {
        "id": row["id"],
        "status": status,
        "progress": round(float(row["progress"] or 0.0), 3),
        "statusUrl": f"/subtitle/jobs/{row['id']}",
        "minutesUsed": row["minutes_used"],
        "durationMs": row["duration_ms"],
        "error": row["error"],
        "createdAt": _iso(row["created_at"]),
        "completedAt": _iso(row["completed_at"]),
        "expiresAt": _iso(row["expires_at"]),
    }
    if status == "completed":
        out["downloadUrl"] = f"/subtitle/jobs/{row['id']}/file"
    return out


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _blob(file_name: str) -> str:
    """The blob of a job file named in its row (upload_file, result_file)."""
    return f"jobs/{file_name}"


def claimable(now: float, stale_seconds: float) -> Any:
    """Queued jobs, and processing jobs whose worker stopped heartbeating (it died or was killed)."""
    return or_(
        jobs_t.c.status == "queued",
        and_(jobs_t.c.status == "processing", jobs_t.c.heartbeat_at < now - stale_seconds),
    )


class SubtitleJobs:
    def __init__(
        self, *, settings: Settings, store: BlobStore, db: AsyncEngine, minutes: MinutesPool, accounts: AccountService,
        capabilities: Capabilities, transcription: TranscriptionService,
    ) -> None:
        self._settings = settings
        self._store = store
        self.db = db
        self.minutes = minutes
        self._accounts = accounts
        self._capabilities = capabilities
        self._transcription = transcription
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._tasks: list[asyncio.Task] = []  # the worker and purger loops
        self._jobs: set[asyncio.Task] = set()  # the jobs running now
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ API side
    async def create(self, account: Account, media: UploadedMedia, options: SttOptions, fmt: SubtitleFormat) -> dict[str, Any]:
        from engines.audio import probe_duration

        # Refused now rather than failing later in the worker (the same checks /stt makes).
        self._capabilities.require_stt_options(account, diarize=options.diarize, model=options.model)
        try:
            # The header's length, or for media without one a decode of at most PROBE_DECODE_S: the upload
            # stays cheap, and the worker extends the reservation to the real length before the work.
            duration = await asyncio.to_thread(probe_duration, media.path, PROBE_DECODE_S)
        except EngineError as exc:
            raise api_error(exc, (422, "undecodable_media")) from None
        if duration <= 0:
            raise unprocessable("The media has no audio", code="empty_media")
        # A header may claim any length: the reservation is at most what one request may decode to.
        duration = min(duration, self._settings.max_audio_hours * 3600.0)
        job_id = new_id("sub")
        reservation = await self.minutes.reserve(account.id, quantize_minutes(duration), kind="subtitle_job", reference=job_id)
        upload_file = f"{job_id}.media"
        try:
            await self._store.put_file(_blob(upload_file), media.path)
            now = time.time()
            opts = json.loads(options.to_json())
            opts["format"] = {"max_chars_per_line": fmt.max_chars_per_line, "max_lines": fmt.max_lines, "fmt": fmt.fmt}
            async with self.db.begin() as conn:
                await conn.execute(
                    jobs_t.insert().values(
                        id=job_id, account_id=account.id, status="queued", progress=0.0, options=json.dumps(opts),
                        upload_name=media.filename[:300], upload_file=upload_file, usage_id=reservation.usage_id,
                        attempts=0, created_at=now, updated_at=now, duration_ms=int(duration * 1000),
                        expires_at=now + self._settings.job_retention_hours * 3600,
                    )
                )
        except BaseException:
            await self._store.delete([_blob(upload_file)])
            await self.minutes.refund(reservation, note="job could not be stored")
            raise
        self._wake.set()
        return {"id": job_id, "status": "queued", "statusUrl": f"/subtitle/jobs/{job_id}"}

    async def _row(self, account_id: str, job_id: str) -> Any:
        async with self.db.connect() as conn:
            row = (
                await conn.execute(select(jobs_t).where(jobs_t.c.id == job_id, jobs_t.c.account_id == account_id))
            ).mappings().first()
        if row is None:
            raise not_found("No such subtitle job")
        return row

    async def status(self, account_id: str, job_id: str) -> dict[str, Any]:
        return job_view(await self._row(account_id, job_id))

    async def result_file(self, account_id: str, job_id: str) -> tuple[OpenBlob, str, str | None]:
        row = await self._row(account_id, job_id)
        if row["status"] != "completed" or not row["result_file"]:
            raise ApiError(409, "not_ready", f"The job is {row['status']}; the file is available when it is completed")
        result = await self._store.open(_blob(row["result_file"]))
        if result is None:
            raise not_found("The subtitle file is gone")
        fmt = json.loads(row["options"]).get("format", {}).get("fmt", "srt")
        return result, fmt, row["upload_name"]

    async def counts(self) -> dict[str, int]:
        async with self.db.connect() as conn:
            rows = (await conn.execute(select(jobs_t.c.status, func.count()).group_by(jobs_t.c.status))).all()
        return {r[0]: int(r[1]) for r in rows}

    # ------------------------------------------------------------------ worker side
    async def claim(self, now: float | None = None) -> Any | None:
        """Atomically takes one job: a conditional UPDATE that only one worker can win, on SQLite and PostgreSQL.

        On PostgreSQL a second UPDATE of the same row waits for the first to commit and then re-checks the
        WHERE clause against the new row (status "processing", fresh heartbeat), so it matches nothing.
        `now` (for tests) moves the staleness clock.
        """
        now = time.time() if now is None else now
        stale = self._settings.job_stale_seconds
        async with self.db.connect() as conn:
            ids = (
                await conn.execute(
                    select(jobs_t.c.id).where(claimable(now, stale)).order_by(jobs_t.c.created_at).limit(5)
                )
            ).scalars().all()
        for job_id in ids:
            async with self.db.begin() as conn:
                res = await conn.execute(
                    update(jobs_t)
                    .where(and_(jobs_t.c.id == job_id, claimable(now, stale)))
                    .values(status="processing", worker_id=self.worker_id, heartbeat_at=time.time(), progress=0.0,
                            attempts=jobs_t.c.attempts + 1, updated_at=time.time())
                )
                if res.rowcount == 1:
                    row = (await conn.execute(select(jobs_t).where(jobs_t.c.id == job_id))).mappings().one()
                    return row
        return None

    async def _mine(self, job_id: str, **values: Any) -> bool:
        """Updates a job only while this worker still owns it (a stale owner must not overwrite a new one)."""
        async with self.db.begin() as conn:
            res = await conn.execute(
                update(jobs_t)
                .where(and_(jobs_t.c.id == job_id, jobs_t.c.worker_id == self.worker_id, jobs_t.c.status == "processing"))
                .values(updated_at=time.time(), **values)
            )
        return res.rowcount == 1

    async def run_one(self, row: Any) -> None:
        job_id = row["id"]
        if row["attempts"] > MAX_ATTEMPTS:
            await self._fail(row, f"gave up after {MAX_ATTEMPTS} attempts (the worker died each time)")
            return
        progress = {"value": 0.0}
        job_done = asyncio.Event()
        beat = asyncio.ensure_future(self._heartbeat(job_id, progress, job_done))
        try:
            account = await self._accounts.get(row["account_id"])
            ensure_active(account)  # disabled while queued: the job fails (refunded) instead of running
            opts = json.loads(row["options"])
            fmt = SubtitleFormat(**opts.pop("format"))
            options = SttOptions.from_json(json.dumps(opts))
            usage_id = await self._live_reservation(row)
            # The upload may have been stored by another node: the front end decodes a local file, so the
            # database store copies it here first (the local store hands over its own file).
            async with self._store.local_file(_blob(row["upload_file"])) as media:
                transcript = await self._transcription.transcribe_file(
                    account, media, options, kind="subtitle_job", reference=job_id,
                    progress=lambda f: progress.__setitem__("value", 0.05 + 0.9 * f), reservation_id=usage_id,
                )
            text = render(transcript, fmt, options.speaker_labels, options.diarize)
            result_file = f"{job_id}.{fmt.fmt}"
            await self._write_result(result_file, text)
            done = await self._mine(
                job_id, status="completed", progress=1.0, result_file=result_file, completed_at=time.time(),
                minutes_used=transcript.minutes_used, duration_ms=int(transcript.duration_s * 1000), error=None,
            )
            if done:
                await self._store.delete([_blob(row["upload_file"])])
        except asyncio.CancelledError:
            await self._hand_back(job_id)
            raise
        except ApiError as exc:
            await self._fail(row, exc.message)
        except BlobNotFoundError:
            await self._fail(row, "the uploaded media is gone")
        except Exception as exc:
            log.exception("subtitle job %s failed", job_id)
            await self._fail(row, f"internal error: {type(exc).__name__}")
        finally:
            # Stopped, not cancelled: a heartbeat cancelled inside its UPDATE could leave the write unfinished.
            job_done.set()
            await asyncio.gather(beat, return_exceptions=True)

    async def _hand_back(self, job_id: str) -> None:
        """Shutting down: the job goes back to the queue at once, so the next start (or another process)
        resumes it without waiting for its heartbeat to go stale. An interrupted run is not a failed attempt.
        A no-op once it is handed back (the job is no longer this worker's)."""
        await self._mine(job_id, status="queued", worker_id=None, heartbeat_at=None, attempts=jobs_t.c.attempts - 1)

    async def _write_result(self, name: str, text: str) -> None:
        # Visible only once committed: a download never sees half a file, and a worker that lost a stale job
        # writing at the same time as its new owner replaces an equal file instead of mixing with it.
        writer = self._store.create(_blob(name))
        try:
            await writer.write(text.encode("utf-8"))
            await writer.commit()
        except BaseException:
            await writer.abort()
            raise

    async def _live_reservation(self, row: Any) -> int:
        """The job's reservation, taken again if an interrupted run gave it back.

        The transcription service refunds its reservation when it is cancelled, which is right for a
        request but leaves a job that is resumed after a graceful shutdown with nothing reserved. A
        settled reservation (the previous run crashed after billing) is reused: settling twice charges once.
        """
        usage_id = row["usage_id"]
        if usage_id is not None:
            async with self.db.connect() as conn:
                state = (await conn.execute(select(usage_t.c.status).where(usage_t.c.id == usage_id))).scalar()
            if state in {"reserved", "settled"}:
                return int(usage_id)
        minutes = quantize_minutes((row["duration_ms"] or 0) / 1000) or quantize_minutes(1.0)
        reservation = await self.minutes.reserve(row["account_id"], minutes, kind="subtitle_job", reference=row["id"])
        if not await self._mine(row["id"], usage_id=reservation.usage_id):
            await self.minutes.refund(reservation, note="job taken over by another worker")
            raise ApiError(409, "job_taken", "the job was taken over by another worker")
        return reservation.usage_id

    async def _fail(self, row: Any, reason: str) -> None:
        """Marks the job failed and gives its minutes back (refunding twice is a no-op).

        The refund comes first: if the process dies in between, the job is re-run and reserves again,
        whereas the other order could leave a failed job holding minutes. Ownership is checked before, so a
        worker that lost a stale job never refunds the reservation its new owner is using.
        """
        if not await self._mine(row["id"]):
            return
        async with self.db.connect() as conn:
            usage_id = (await conn.execute(select(jobs_t.c.usage_id).where(jobs_t.c.id == row["id"]))).scalar()
        if usage_id is not None:
            await self.minutes.refund_by_id(int(usage_id), note=f"job failed: {reason}"[:500])
        if await self._mine(row["id"], status="failed", error=reason, completed_at=time.time(), minutes_used=0.0):
            await self._store.delete([_blob(row["upload_file"])])

    async def _heartbeat(self, job_id: str, progress: dict[str, float], done: asyncio.Event) -> None:
        # Often enough for a client's progress bar, and several beats inside the staleness window.
        interval = max(0.2, min(1.0, self._settings.job_stale_seconds / 4))
        while not done.is_set():
            await self._mine(job_id, heartbeat_at=time.time(), progress=progress["value"])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=interval)

    async def _worker(self) -> None:
        poll = self._settings.job_poll_seconds
        while not self._stopping.is_set():
            try:
                row = await self.claim()
                if row is not None:
                    # Its own task, so that stop() interrupts the job (which hands itself back) and never
                    # this loop's database calls: a claim cancelled mid-UPDATE could leave its write open.
                    if self._stopping.is_set():  # stop() began during the claim: the job was not started
                        await self._hand_back(row["id"])
                        break
                    job = asyncio.ensure_future(self.run_one(row))
                    self._jobs.add(job)
                    try:
                        await asyncio.wait([job])
                    finally:
                        self._jobs.discard(job)
                        if not job.done():  # this loop was cancelled (a stop that gave up waiting)
                            job.cancel()
                    if job.cancelled():  # also when it was cancelled before its first step ran
                        await self._hand_back(row["id"])
                    elif job.exception() is not None:
                        log.error("job worker error", exc_info=job.exception())
                    continue
            except Exception:
                log.exception("job worker error")
            self._wake.clear()
            if self._stopping.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=poll)

    async def purge(self, now: float | None = None) -> int:
        """Deletes expired jobs (rows and files); a job still holding a reservation is refunded first (a
        refund happens once, whoever tries). Returns how many jobs this call deleted.

        Any node may purge at any time: each row goes in a transaction that deletes it only if it is still
        there and, with the database store, deletes its files in the same transaction, so every job is purged
        exactly once, files included. `now` is a parameter so the retention can be tested without waiting a
        day. Files that no row owns (a crash between storing the upload and inserting its row) go once they
        are as old as the retention period, and unfinished writes once their writer is surely gone.
        """
        now = time.time() if now is None else now
        async with self.db.connect() as conn:
            rows = (await conn.execute(select(jobs_t).where(jobs_t.c.expires_at < now))).mappings().all()
        purged = 0
        for row in rows:
            if row["status"] in {"queued", "processing"} and row["usage_id"] is not None:
                await self.minutes.refund_by_id(int(row["usage_id"]), note="job expired")
            files = [_blob(name) for name in (row["upload_file"], row["result_file"]) if name]
            async with self.db.begin() as conn:
                gone = await conn.execute(delete(jobs_t).where(jobs_t.c.id == row["id"]))
                if gone.rowcount == 1:  # this node won the row: its files are this node's to delete
                    await self._store.delete(files, conn=conn)
                    purged += 1
        await self._sweep_orphans(now)
        return purged

    async def _sweep_orphans(self, now: float) -> None:
        cutoff = now - self._settings.job_retention_hours * 3600
        old = [b.name for b in await self._store.listing("jobs/") if b.modified < cutoff]
        if old:
            async with self.db.connect() as conn:
                known = set((await conn.execute(select(jobs_t.c.id))).scalars().all())
            await self._store.delete([n for n in old if n.split("/", 1)[1].split(".", 1)[0] not in known])
        await self._store.sweep_orphans(ORPHAN_WRITE_AGE_S, now=now)

    async def _purger(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.purge()
            except Exception:
                log.exception("purge failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=60)

    async def start(self) -> None:
        for _ in range(max(0, self._settings.job_workers)):
            self._tasks.append(asyncio.ensure_future(self._worker()))
        self._tasks.append(asyncio.ensure_future(self._purger()))

    async def stop(self) -> None:
        """Interrupts running jobs (each hands itself back to the queue) and lets the worker and purger loops
        end between their database calls, never inside one."""
        self._stopping.set()
        self._wake.set()
        for job in list(self._jobs):
            job.cancel()
        if self._tasks:
            _done, stuck = await asyncio.wait(self._tasks, timeout=STOP_WAIT_S)
            for t in stuck:  # a database that does not answer: give up on a clean end
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
