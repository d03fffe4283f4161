"""Async subtitle jobs through the HTTP API: lifecycle, failure and refund, restart recovery (a cancelled
worker and a SIGKILLed server process), the 24 h purge, and two workers sharing one PostgreSQL database.

Whisper tiny.en and short clips keep this fast; waiting on background workers is a bounded poll on status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from server.db import subtitle_jobs as jobs_t
from server.db import usage as usage_t
from server.launcher import running_process
from server.settings import Settings
from tests.conftest import ADMIN_KEY, Api
from tests.pg import PgCluster, pg_cluster
from tests.test_subtitle_api import check_cues, parse_subtitles, words_of

pytestmark = pytest.mark.slow
TIMEOUT_S = 240.0


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[Api]:
    from server.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=300) as c:
            yield Api(app, c, settings)


def base_settings(data_dir: Path, models_root: Path, **over: object) -> Settings:
    return Settings(warmup=False, data_dir=data_dir, admin_key=ADMIN_KEY, models_dir=models_root, job_poll_seconds=0.1, **over)  # type: ignore[arg-type]


async def submit(client: httpx.AsyncClient, key: str, path: Path, ctype: str = "audio/wav", **fields: str) -> dict:
    with open(path, "rb") as fh:
        r = await client.post(
            "/subtitle/jobs", headers={"x-api-key": key}, files={"audio": (path.name, fh, ctype)}, data=fields
        )
    assert r.status_code == 200, r.text
    return r.json()


async def status(client: httpx.AsyncClient, key: str, job_id: str) -> dict:
    r = await client.get(f"/subtitle/jobs/{job_id}", headers={"x-api-key": key})
    assert r.status_code == 200, r.text
    return r.json()


async def wait_for(client: httpx.AsyncClient, key: str, job_id: str, states: set[str]) -> dict:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        view = await status(client, key, job_id)
        if view["status"] in states:
            return view
        await asyncio.sleep(0.02)
    pytest.fail(f"job {job_id} never reached {states}: {view}")


async def job_rows(api: Api) -> dict[str, dict]:
    async with api.services.db.connect() as conn:
        rows = (await conn.execute(select(jobs_t))).mappings().all()
    return {r["id"]: dict(r) for r in rows}


async def ledger(api: Api, reference: str) -> list[tuple[str, float]]:
    async with api.services.db.connect() as conn:
        rows = (
            await conn.execute(select(usage_t.c.status, usage_t.c.minutes).where(usage_t.c.reference == reference).order_by(usage_t.c.id))
        ).all()
    return [(r[0], float(r[1])) for r in rows]


# ---------------------------------------------------------------------- lifecycle


async def test_job_lifecycle(tmp_path: Path, models_root: Path, testdata: Path) -> None:
    """queued -> processing -> completed with progress, minutes and the file; other accounts see nothing.

    The worker is driven by hand (no background workers) so every state can be observed deterministically."""
    async with running_app(base_settings(tmp_path / "data", models_root, job_workers=0)) as api:
        c = api.client
        key = (await api.account(sttApiKey="whisper:tiny.en"))["apiKey"]
        other = (await api.account(sttApiKey="whisper:tiny.en"))["apiKey"]
        video = testdata / "video" / "nasa_13013.mp4"
        created = await submit(c, key, video, "video/mp4", maxCharsPerLine="40")
        job_id = created["id"]
        assert job_id.startswith("sub_")
        assert created == {"id": job_id, "status": "queued", "statusUrl": f"/subtitle/jobs/{job_id}"}

        view = await status(c, key, job_id)
        assert (view["status"], view["progress"], view["minutesUsed"]) == ("queued", 0.0, None)
        assert "downloadUrl" not in view
        assert 12_900 < view["durationMs"] < 13_200
        assert (await c.get(f"/subtitle/jobs/{job_id}/file", headers={"x-api-key": key})).status_code == 409
        assert await api.minutes(key) == pytest.approx(9.5)  # reserved when accepted
        for url in (f"/subtitle/jobs/{job_id}", f"/subtitle/jobs/{job_id}/file"):
            r = await c.get(url, headers={"x-api-key": other})
            assert r.status_code == 404, r.text
        assert (await c.get("/subtitle/jobs/sub_nope", headers={"x-api-key": key})).status_code == 404
        assert (await c.get(f"/subtitle/jobs/{job_id}")).status_code == 401

        jobs = api.services.subtitle_jobs
        row = await jobs.claim()
        assert row is not None and row["id"] == job_id
        assert await jobs.claim() is None  # nothing else to take: a claimed job is not handed out twice
        assert (await status(c, key, job_id))["status"] == "processing"
        run = asyncio.ensure_future(jobs.run_one(row))
        seen = []
        while not run.done():
            v = await status(c, key, job_id)
            seen.append((v["status"], v["progress"]))
            await asyncio.sleep(0.05)
        await run
        assert all(s == "processing" for s, _ in seen[:-1]), seen
        progress = [p for _, p in seen]
        assert progress == sorted(progress) and all(0.0 <= p <= 1.0 for p in progress), progress

        view = await status(c, key, job_id)
        assert view["status"] == "completed", view
        assert view["progress"] == 1.0 and view["error"] is None
        assert view["minutesUsed"] == 0.5 and 12_900 < view["durationMs"] < 13_200
        assert view["downloadUrl"] == f"/subtitle/jobs/{job_id}/file"
        r = await c.get(view["downloadUrl"], headers={"x-api-key": key})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-subrip")
        assert 'filename="nasa_13013.srt"' in r.headers["content-disposition"]
        cues = parse_subtitles(r.text)
        check_cues(cues, 40, 2)
        assert "telescope" in words_of(cues)
        # ?apiKey= works for the download too (a plain link), and another account still gets 404.
        assert (await c.get(f"{view['downloadUrl']}?apiKey={key}")).text == r.text
        assert (await c.get(f"{view['downloadUrl']}?apiKey={other}")).status_code == 404

        assert await api.minutes(key) == pytest.approx(9.5)  # charged once, like /stt
        assert await ledger(api, job_id) == [("settled", 0.5)]
        # The upload is gone once the job is done; only the subtitle file is kept.
        assert sorted(p.name for p in (tmp_path / "data" / "jobs").iterdir()) == [f"{job_id}.srt"]


async def test_background_worker_and_webvtt(tmp_path: Path, models_root: Path, testdata: Path) -> None:
    async with running_app(base_settings(tmp_path / "data", models_root)) as api:
        key = (await api.account(sttApiKey="whisper:tiny.en"))["apiKey"]
        a = await submit(api.client, key, testdata / "en" / "LJ001-0002.wav", format="vtt")
        b = await submit(api.client, key, testdata / "en" / "LJ001-0008.wav", maxLines="1")
        for job, fmt, lines in ((a, "vtt", 2), (b, "srt", 1)):
            view = await wait_for(api.client, key, job["id"], {"completed", "failed"})
            assert view["status"] == "completed", view
            r = await api.client.get(view["downloadUrl"], headers={"x-api-key": key})
            assert r.headers["content-disposition"].endswith(f'.{fmt}"')
            check_cues(parse_subtitles(r.text, fmt), 70, lines, fmt)
        assert await api.minutes(key) == pytest.approx(9.0)


# ---------------------------------------------------------------------- failure


async def test_failed_job_reports_reason_and_refunds(tmp_path: Path, models_root: Path, testdata: Path) -> None:
    async with running_app(base_settings(tmp_path / "data", models_root, job_workers=0)) as api:
        c = api.client
        acct = await api.account(sttApiKey="whisper:tiny.en")
        key = acct["apiKey"]
        job_id = (await submit(c, key, testdata / "en" / "LJ001-0002.wav"))["id"]
        assert await api.minutes(key) == pytest.approx(9.5)
        # Between upload and processing the admin switches speech-to-text off for the account.
        r = await c.patch(f"/accounts/{acct['id']}", json={"apiKey": ADMIN_KEY, "sttApiKey": "off"})
        assert r.status_code == 200, r.text
        jobs = api.services.subtitle_jobs
        await jobs.run_one(await jobs.claim())
        view = await status(c, key, job_id)
        assert view["status"] == "failed", view
        assert "not configured" in view["error"]
        assert view["minutesUsed"] == 0.0 and "downloadUrl" not in view
        assert (await c.get(f"/subtitle/jobs/{job_id}/file", headers={"x-api-key": key})).status_code == 409
        assert await api.minutes(key) == pytest.approx(10.0)
        assert await ledger(api, job_id) == [("refunded", 0.5)]
        assert list((tmp_path / "data" / "jobs").iterdir()) == []
        assert await jobs.claim() is None  # a failed job is not retried


async def test_undecodable_upload_is_refused_at_once(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    key = (await api.account(sttApiKey="whisper:tiny.en"))["apiKey"]
    r = await api.client.post(
        "/subtitle/jobs", headers={"x-api-key": key}, files={"audio": ("x.mp3", b"\x00not audio" * 100, "audio/mpeg")}
    )
    assert r.status_code == 422, r.text
    assert await api.minutes(key) == 10.0
    assert (await job_rows(api)) == {}


async def test_job_refused_up_front_when_it_cannot_run(tmp_path: Path, models_root: Path, testdata: Path) -> None:
    async with running_app(base_settings(tmp_path / "data", models_root, default_diarizer="off")) as api:
        acct = await api.account(sttApiKey="whisper:tiny.en")
        clip = testdata / "en" / "LJ001-0002.wav"
        with open(clip, "rb") as fh:
            r = await api.client.post(
                "/subtitle/jobs", headers={"x-api-key": acct["apiKey"]},
                files={"audio": (clip.name, fh, "audio/wav")}, data={"enableSpeakerDiarization": "true"},
            )
        assert r.status_code == 400 and r.json()["error"]["code"] == "diarization_not_configured", r.text
        off = await api.account(sttApiKey="off")
        with open(clip, "rb") as fh:
            r = await api.client.post(
                "/subtitle/jobs", headers={"x-api-key": off["apiKey"]}, files={"audio": (clip.name, fh, "audio/wav")}
            )
        assert r.status_code == 403, r.text
        assert await job_rows(api) == {}
        assert list((tmp_path / "data" / "jobs").iterdir()) == []
        assert [p for p in (tmp_path / "data" / "tmp").rglob("*") if p.is_file()] == []


# ---------------------------------------------------------------------- restarts


async def test_restart_after_worker_is_stopped_mid_job(tmp_path: Path, models_root: Path, testdata: Path) -> None:
    """A server shut down while its worker is inside the transcription hands the job back; the next start
    completes it and bills it once (the interrupted run's refunded reservation is taken again)."""
    settings = base_settings(tmp_path / "data", models_root)
    inside, release = threading.Event(), threading.Event()
    async with running_app(settings) as api:
        models = api.services.models
        real_stt = models.stt

        def held_stt(*args, **kwargs):  # type: ignore[no-untyped-def]
            # Holds the first run inside the inference thread until the server has been stopped around it.
            inside.set()
            release.wait(60)
            raise RuntimeError("abandoned by the test")

        models.stt = held_stt
        key = (await api.account(sttApiKey="whisper:tiny.en"))["apiKey"]
        job_id = (await submit(api.client, key, testdata / "video" / "nasa_13013.mp4", "video/mp4"))["id"]
        deadline = time.monotonic() + TIMEOUT_S
        while not inside.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert inside.is_set()
        assert (await status(api.client, key, job_id))["status"] == "processing"
        models.stt = real_stt
    release.set()  # the server (and its worker) stopped while the job was in the middle of transcription
    async with running_app(settings.with_(job_workers=0)) as api:
        row = (await job_rows(api))[job_id]
        assert (row["status"], row["worker_id"], row["attempts"]) == ("queued", None, 0)
        assert await ledger(api, job_id) == [("refunded", 0.5)]
    async with running_app(settings) as api:
        view = await wait_for(api.client, key, job_id, {"completed", "failed"})
        assert view["status"] == "completed", view
        assert view["minutesUsed"] == 0.5
        r = await api.client.get(view["downloadUrl"], headers={"x-api-key": key})
        check_cues(parse_subtitles(r.text), 70, 2)
        assert "telescope" in words_of(parse_subtitles(r.text))
        assert await api.minutes(key) == pytest.approx(9.5)
        assert await ledger(api, job_id) == [("refunded", 0.5), ("settled", 0.5)]


async def test_restart_after_sigkill_mid_job(tmp_path: Path, models_root: Path, long_clip: Path) -> None:
    """The server process is killed with SIGKILL while a job runs: its heartbeat stops, and a new server on
    the same database and data directory takes the job over and completes it."""
    data_dir = tmp_path / "data"
    env = {
        "S7_DATA_DIR": str(data_dir), "S7_ADMIN_KEY": ADMIN_KEY, "S7_MODELS_DIR": str(models_root), "S7_DEVICE": "cpu",
        "S7_JOB_STALE_SECONDS": "2", "S7_JOB_POLL_SECONDS": "0.1", "S7_LOG_LEVEL": "warning",
    }
    with running_process(env) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            r = await c.post("/accounts", json={"apiKey": ADMIN_KEY, "startingMinutes": 10, "sttApiKey": "whisper:tiny.en"})
            key = r.json()["apiKey"]
            job_id = (await submit(c, key, long_clip))["id"]
            view = await wait_for(c, key, job_id, {"processing", "completed", "failed"})
            assert view["status"] == "processing", f"the job finished before the test could kill the server: {view}"
            server.kill()
    settings = base_settings(data_dir, models_root, job_stale_seconds=2.0)
    async with running_app(settings.with_(job_workers=0)) as api:
        row = (await job_rows(api))[job_id]
        assert row["status"] == "processing" and row["attempts"] == 1  # as the dead process left it
    async with running_app(settings) as api:
        view = await wait_for(api.client, key, job_id, {"completed", "failed"})
        assert view["status"] == "completed", view
        row = (await job_rows(api))[job_id]
        assert row["attempts"] == 2 and row["worker_id"] == api.services.subtitle_jobs.worker_id
        r = await api.client.get(view["downloadUrl"], headers={"x-api-key": key})
        check_cues(parse_subtitles(r.text), 70, 2)
        assert await api.minutes(key) == pytest.approx(9.0)  # the reservation taken at upload, settled once
        assert await ledger(api, job_id) == [("settled", 1.0)]


# ---------------------------------------------------------------------- purge


async def test_jobs_and_files_are_purged_after_24_hours(tmp_path: Path, models_root: Path, testdata: Path) -> None:
    async with running_app(base_settings(tmp_path / "data", models_root, job_workers=0)) as api:
        c = api.client
        key = (await api.account(sttApiKey="whisper:tiny.en"))["apiKey"]
        done = (await submit(c, key, testdata / "en" / "LJ001-0002.wav"))["id"]
        jobs = api.services.subtitle_jobs
        await jobs.run_one(await jobs.claim())
        waiting = (await submit(c, key, testdata / "en" / "LJ001-0008.wav"))["id"]
        assert (await status(c, key, done))["status"] == "completed"
        assert await api.minutes(key) == pytest.approx(9.0)
        jobs_dir = tmp_path / "data" / "jobs"
        orphan = jobs_dir / "sub_orphan.media"  # a crash between storing an upload and inserting its row
        orphan.write_bytes(b"x")
        day_ago = time.time() - 24 * 3600 - 60
        os.utime(orphan, (day_ago, day_ago))
        assert len(list(jobs_dir.iterdir())) == 3

        now = time.time()
        assert await jobs.purge(now=now + 23 * 3600) == 0  # kept for 24 h
        assert (await status(c, key, done))["status"] == "completed"
        assert (await c.get(f"/subtitle/jobs/{done}/file", headers={"x-api-key": key})).status_code == 200
        assert not orphan.exists()

        assert await jobs.purge(now=now + 24 * 3600 + 60) == 2
        for job_id in (done, waiting):
            assert (await c.get(f"/subtitle/jobs/{job_id}", headers={"x-api-key": key})).status_code == 404
            assert (await c.get(f"/subtitle/jobs/{job_id}/file", headers={"x-api-key": key})).status_code == 404
        assert list(jobs_dir.iterdir()) == []
        assert await job_rows(api) == {}
        # The job that never ran gives its reservation back; the completed one stays billed.
        assert await api.minutes(key) == pytest.approx(9.5)


# ---------------------------------------------------------------------- two workers, one PostgreSQL database


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgCluster]:
    with pg_cluster() as cluster:
        yield cluster


async def test_concurrent_claims_on_postgres_take_each_job_once(tmp_path: Path, models_root: Path, testdata: Path, postgres: PgCluster) -> None:
    """Two servers' job services race to claim 40 queued jobs with 6 claimers each: every job is handed out
    exactly once."""
    db_url = postgres.create_database()
    shared = tmp_path / "shared"
    one = base_settings(shared, models_root, database_url=db_url, job_workers=0)
    async with running_app(one) as a, running_app(one) as b:
        key = (await a.account(sttApiKey="whisper:tiny.en", startingMinutes=100))["apiKey"]
        clip = testdata / "en" / "LJ001-0008.wav"
        ids = {(await submit(a.client if i % 2 else b.client, key, clip))["id"] for i in range(40)}
        assert len(ids) == 40
        claimed: list[tuple[str, str]] = []

        async def claimer(api: Api) -> None:
            jobs = api.services.subtitle_jobs
            while (row := await jobs.claim()) is not None:
                claimed.append((row["id"], jobs.worker_id))

        await asyncio.gather(*(claimer(api) for api in (a, b) for _ in range(6)))
        assert sorted(j for j, _ in claimed) == sorted(ids)
        rows = await job_rows(a)
        assert all(r["status"] == "processing" and r["attempts"] == 1 for r in rows.values())
        assert all(rows[j]["worker_id"] == w for j, w in claimed)


async def test_two_servers_on_postgres_run_every_job_exactly_once(tmp_path: Path, models_root: Path, testdata: Path, postgres: PgCluster) -> None:
    db_url = postgres.create_database()
    # No shared disk: each server its own data directory; the job files live in the database's blob store.
    settings = base_settings(tmp_path / "a", models_root, database_url=db_url, job_workers=2)
    runs: list[tuple[str, str]] = []
    async with running_app(settings) as a, running_app(settings.with_(data_dir=tmp_path / "b")) as b:
        for api, name in ((a, "a"), (b, "b")):
            service = api.services.transcription
            original = service.transcribe_file

            async def counted(*args, _orig=original, _name=name, **kw):  # type: ignore[no-untyped-def]
                runs.append((kw.get("reference"), _name))
                return await _orig(*args, **kw)

            service.transcribe_file = counted
        key = (await a.account(sttApiKey="whisper:tiny.en", startingMinutes=20))["apiKey"]
        clips = [testdata / "en" / f"LJ001-000{i}.wav" for i in (2, 8)]
        ids = [(await submit((a, b)[i % 2].client, key, clips[i % 2]))["id"] for i in range(6)]
        for job_id in ids:
            view = await wait_for(a.client, key, job_id, {"completed", "failed"})
            assert view["status"] == "completed", view
            r = await b.client.get(view["downloadUrl"], headers={"x-api-key": key})
            check_cues(parse_subtitles(r.text), 70, 2)
        assert sorted(ref for ref, _ in runs) == sorted(ids)  # each job transcribed once, by one server
        rows = await job_rows(b)
        assert all(rows[j]["attempts"] == 1 for j in ids)
        for job_id in ids:
            assert await ledger(a, job_id) == [("settled", 0.5)]
        assert await a.minutes(key) == pytest.approx(17.0)
