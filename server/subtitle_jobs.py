"""Durable async subtitle jobs: rows in the database, files under <data_dir>/jobs, claimed atomically by
workers (any number of server processes sharing one database), heartbeated while they run, re-queued when a
worker dies, failed (and refunded) with a reason, purged with their files after the retention period.

Minutes are reserved when the job is accepted (so a client learns at once that its balance is too low) and
settled or refunded when it ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from engines.types import EngineError
from server.accounts import Account, AccountService
from server.capabilities import Capabilities
from server.db import subtitle_jobs as jobs_t
from server.db import usage as usage_t
from server.engine_errors import api_error
from server.errors import ApiError, not_found, unprocessable
from server.minutes import MinutesPool, quantize_minutes
from server.security import new_id
from server.settings import Settings
from server.stt_options import SttOptions
from server.subtitle_render import SubtitleFormat, render
from server.transcription import TranscriptionService
from server.uploads import UploadedMedia

log = logging.getLogger("speech7.jobs")
MAX_ATTEMPTS = 3


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


def claimable(now: float, stale_seconds: float) -> Any:
    """Queued jobs, and processing jobs whose worker stopped heartbeating (it died or was killed)."""
    return or_(
        jobs_t.c.status == "queued",
        and_(jobs_t.c.status == "processing", jobs_t.c.heartbeat_at < now - stale_seconds),
    )


class SubtitleJobs:
    def __init__(
        self, *, settings: Settings, jobs_dir: Path, db: AsyncEngine, minutes: MinutesPool, accounts: AccountService,
        capabilities: Capabilities, transcription: TranscriptionService,
    ) -> None:
        self._settings = settings
        self._dir = jobs_dir
        self.db = db
        self.minutes = minutes
        self._accounts = accounts
        self._capabilities = capabilities
        self._transcription = transcription
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._tasks: list[asyncio.Task] = []
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ API side
    async def create(self, account: Account, media: UploadedMedia, options: SttOptions, fmt: SubtitleFormat) -> dict[str, Any]:
        from engines.audio import probe_duration

        # Refused now rather than failing later in the worker (the same checks /stt makes).
        self._capabilities.require_stt_options(account, diarize=options.diarize, model=options.model)
        try:
            duration = await asyncio.to_thread(probe_duration, media.path)
        except EngineError as exc:
            raise api_error(exc, (422, "undecodable_media")) from None
        if duration <= 0:
            raise unprocessable("The media has no audio", code="empty_media")
        job_id = new_id("sub")
        reservation = await self.minutes.reserve(account.id, quantize_minutes(duration), kind="subtitle_job", reference=job_id)
        self._dir.mkdir(parents=True, exist_ok=True)
        upload_file = f"{job_id}.media"
        try:
            shutil.move(str(media.path), self._dir / upload_file)
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
            (self._dir / upload_file).unlink(missing_ok=True)
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

    async def result_file(self, account_id: str, job_id: str) -> tuple[Path, str, str | None]:
        row = await self._row(account_id, job_id)
        if row["status"] != "completed" or not row["result_file"]:
            raise ApiError(409, "not_ready", f"The job is {row['status']}; the file is available when it is completed")
        path = self._dir / row["result_file"]
        if not path.is_file():
            raise not_found("The subtitle file is gone")
        fmt = json.loads(row["options"]).get("format", {}).get("fmt", "srt")
        return path, fmt, row["upload_name"]

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
        beat = asyncio.ensure_future(self._heartbeat(job_id, progress))
        try:
            account = await self._accounts.get(row["account_id"])
            opts = json.loads(row["options"])
            fmt = SubtitleFormat(**opts.pop("format"))
            options = SttOptions.from_json(json.dumps(opts))
            usage_id = await self._live_reservation(row)
            transcript = await self._transcription.transcribe_file(
                account, self._dir / row["upload_file"], options, kind="subtitle_job", reference=job_id,
                progress=lambda f: progress.__setitem__("value", 0.05 + 0.9 * f), reservation_id=usage_id,
            )
            text = render(transcript, fmt, options.speaker_labels, options.diarize)
            result_file = f"{job_id}.{fmt.fmt}"
            await asyncio.to_thread(self._write_result, result_file, text)
            done = await self._mine(
                job_id, status="completed", progress=1.0, result_file=result_file, completed_at=time.time(),
                minutes_used=transcript.minutes_used, duration_ms=int(transcript.duration_s * 1000), error=None,
            )
            if done:
                (self._dir / row["upload_file"]).unlink(missing_ok=True)
        except asyncio.CancelledError:
            # Shutting down: hand the job back at once so the next start (or another process) resumes it
            # without waiting for the heartbeat to go stale. An interrupted run is not a failed attempt.
            await self._mine(job_id, status="queued", worker_id=None, heartbeat_at=None,
                             attempts=jobs_t.c.attempts - 1)
            raise
        except ApiError as exc:
            await self._fail(row, exc.message)
        except Exception as exc:
            log.exception("subtitle job %s failed", job_id)
            await self._fail(row, f"internal error: {type(exc).__name__}")
        finally:
            beat.cancel()

    def _write_result(self, name: str, text: str) -> None:
        # Written whole, then renamed: a download never sees half a file. The temporary name is unique so a
        # worker that lost a stale job cannot collide with the job's new owner.
        tmp = self._dir / f"{name}.{secrets.token_hex(4)}.part"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self._dir / name)

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
            (self._dir / row["upload_file"]).unlink(missing_ok=True)

    async def _heartbeat(self, job_id: str, progress: dict[str, float]) -> None:
        # Often enough for a client's progress bar, and several beats inside the staleness window.
        interval = max(0.2, min(1.0, self._settings.job_stale_seconds / 4))
        while True:
            await self._mine(job_id, heartbeat_at=time.time(), progress=progress["value"])
            await asyncio.sleep(interval)

    async def _worker(self) -> None:
        poll = self._settings.job_poll_seconds
        while not self._stopping.is_set():
            try:
                row = await self.claim()
                if row is not None:
                    await self.run_one(row)
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job worker error")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=poll)
            except TimeoutError:
                pass

    async def purge(self, now: float | None = None) -> int:
        """Deletes expired jobs (rows and files); a job still holding a reservation is refunded first.

        `now` is a parameter so the retention can be tested without waiting a day. Files under jobs/ that
        no row owns (a crash between storing the upload and inserting its row) go once they are as old as
        the retention period.
        """
        now = time.time() if now is None else now
        async with self.db.connect() as conn:
            rows = (await conn.execute(select(jobs_t).where(jobs_t.c.expires_at < now))).mappings().all()
        for row in rows:
            if row["status"] in {"queued", "processing"} and row["usage_id"] is not None:
                await self.minutes.refund_by_id(int(row["usage_id"]), note="job expired")
            async with self.db.begin() as conn:
                await conn.execute(delete(jobs_t).where(jobs_t.c.id == row["id"]))
            for name in (row["upload_file"], row["result_file"]):
                if name:
                    (self._dir / name).unlink(missing_ok=True)
        await asyncio.to_thread(self._sweep_orphans, now, await self._job_ids())
        return len(rows)

    async def _job_ids(self) -> set[str]:
        async with self.db.connect() as conn:
            return set((await conn.execute(select(jobs_t.c.id))).scalars().all())

    def _sweep_orphans(self, now: float, known: set[str]) -> None:
        cutoff = now - self._settings.job_retention_hours * 3600
        if not self._dir.is_dir():
            return
        for path in self._dir.iterdir():
            try:
                if path.name.split(".", 1)[0] not in known and path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:
                pass  # another process purged it first

    async def _purger(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.purge()
            except Exception:
                log.exception("purge failed")
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=60)
            except TimeoutError:
                pass

    async def start(self) -> None:
        for _ in range(max(0, self._settings.job_workers)):
            self._tasks.append(asyncio.ensure_future(self._worker()))
        self._tasks.append(asyncio.ensure_future(self._purger()))

    async def stop(self) -> None:
        self._stopping.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except BaseException:
                pass
        self._tasks.clear()
