"""Subtitle jobs on fake engines (issue 15): a long job does not hold up a short one (two workers by default),
a job whose account was disabled while it waited fails and is refunded instead of running, and media whose
header has no length costs a bounded probe at upload and is billed what it decodes to."""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import pytest_asyncio

from engines.types import SAMPLE_RATE
from tests.conftest import ADMIN_KEY, Api
from tests.fakes import FakeModels, fake_models, fake_settings, tone
from tests.test_server_layer import ledger, post, wav
from tests.test_subtitle_jobs import wait_for


@pytest_asyncio.fixture(loop_scope="function")
async def jobs_api(tmp_path: Path) -> AsyncIterator[tuple[Api, FakeModels]]:
    from server.app import create_app

    models = fake_models()
    settings = fake_settings(tmp_path, ADMIN_KEY)  # the default number of job workers
    app = create_app(settings, manager=models)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:
                yield Api(app, c, settings), models
    finally:
        models.stt_engines["fake"].release.set()


async def test_a_short_job_completes_while_a_long_one_runs(jobs_api: tuple[Api, FakeModels]) -> None:
    api, models = jobs_api
    engine = models.stt_engines["fake"]
    engine.hold_longer_than = 30.0
    key = (await api.account())["apiKey"]
    long_job = (await post(api, key, wav(tone(300, 40)), "/subtitle/jobs")).json()
    assert await _wait_thread(engine.holding)  # the long job has the engine
    short_job = (await post(api, key, wav(tone(500, 2)), "/subtitle/jobs")).json()
    short = await wait_for(api.client, key, short_job["id"], {"completed", "failed"})
    assert (short["status"], short["minutesUsed"]) == ("completed", 0.5)
    assert (await _status(api, key, long_job["id"]))["status"] == "processing"
    engine.release.set()
    done = await wait_for(api.client, key, long_job["id"], {"completed", "failed"})
    assert (done["status"], done["minutesUsed"]) == ("completed", 1.0)


async def test_a_queued_job_of_a_disabled_account_fails_and_is_refunded(tmp_path: Path) -> None:
    from server.app import create_app

    settings = fake_settings(tmp_path, ADMIN_KEY).with_(job_workers=0)  # the job waits in the queue
    app = create_app(settings, manager=fake_models())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=30) as c:
            api = Api(app, c, settings)
            acc = await api.account()
            job = (await post(api, acc["apiKey"], wav(tone(300, 2)), "/subtitle/jobs")).json()
            r = await c.patch(f"/accounts/{acc['id']}", json={"apiKey": ADMIN_KEY, "disabled": True})
            assert r.status_code == 200, r.text
            jobs = api.services.subtitle_jobs
            await jobs.run_one(await jobs.claim())  # what a worker does next
            await c.patch(f"/accounts/{acc['id']}", json={"apiKey": ADMIN_KEY, "disabled": False})
            view = await _status(api, acc["apiKey"], job["id"])
            assert (view["status"], view["error"], view["minutesUsed"]) == ("failed", "This account is disabled", 0.0)
            assert await ledger(api, acc["id"]) == [("subtitle_job", "refunded", 0.5)]
            assert await api.minutes(acc["apiKey"]) == 10


async def _status(api: Api, key: str, job_id: str) -> dict:
    r = await api.client.get(f"/subtitle/jobs/{job_id}", headers={"x-api-key": key})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _wait_thread(event: object) -> bool:
    import asyncio
    import threading

    assert isinstance(event, threading.Event)
    return await asyncio.to_thread(event.wait, 30)


def streamed_mkv(pcm: np.ndarray) -> bytes:
    """Matroska written to a pipe, as a live recorder writes it: no length in the header."""

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def write(self, b) -> int:  # type: ignore[no-untyped-def,override]
            self.data += bytes(b)
            return len(b)

    pipe = Pipe()
    with av.open(pipe, "w", format="matroska") as out:
        stream = out.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray((pcm * 32767).astype(np.int16)[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:  # type: ignore[attr-defined]
            out.mux(packet)
    return bytes(pipe.data)


def test_probing_media_without_a_length_decodes_a_bounded_prefix(tmp_path: Path) -> None:
    from engines.audio import probe_duration

    path = tmp_path / "live.mkv"
    path.write_bytes(streamed_mkv(np.zeros(SAMPLE_RATE * 600, np.float32)))  # 10 minutes in ~170 KB
    assert av.open(str(path)).duration is None
    assert probe_duration(path, decode_limit_s=30) == 30.0
    assert probe_duration(path) == 600.0


async def test_a_job_whose_media_has_no_length_is_billed_what_it_decodes_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload probes at most PROBE_DECODE_S (5 s here) and reserves that; the worker extends the
    reservation to the real 40 s before transcribing, or fails the job (refunded) when the balance is short."""
    from server import subtitle_jobs

    monkeypatch.setattr(subtitle_jobs, "PROBE_DECODE_S", 5.0)
    media = streamed_mkv(np.concatenate([tone(300, 20), tone(600, 20)]))
    async with running_fake(tmp_path) as api:
        rich, poor = await api.account(startingMinutes=10), await api.account(startingMinutes=0.5)
        views = []
        for acc in (rich, poor):
            r = await api.client.post("/subtitle/jobs", headers={"x-api-key": acc["apiKey"]},
                                      files={"audio": ("live.mkv", media, "video/x-matroska")})
            assert r.status_code == 200, r.text
            views.append(await wait_for(api.client, acc["apiKey"], r.json()["id"], {"completed", "failed"}))
        assert (views[0]["status"], views[0]["minutesUsed"], views[0]["durationMs"]) == ("completed", 1.0, 40000)
        assert await ledger(api, rich["id"]) == [("subtitle_job", "settled", 1.0)]
        assert views[1]["status"] == "failed" and "Not enough minutes" in views[1]["error"]
        assert await ledger(api, poor["id"]) == [("subtitle_job", "refunded", 0.5)]
        assert await api.minutes(poor["apiKey"]) == 0.5


@contextlib.asynccontextmanager
async def running_fake(tmp_path: Path) -> AsyncIterator[Api]:
    from server.app import create_app

    settings = fake_settings(tmp_path, ADMIN_KEY)
    app = create_app(settings, manager=fake_models())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=30) as c:
            yield Api(app, c, settings)


async def test_stopping_never_cancels_a_worker_inside_a_database_call(tmp_path: Path) -> None:
    """Shutdown waits for a job worker's claim (an UPDATE) to end instead of cancelling it halfway, which could
    leave its write unfinished while the rest of the shutdown writes to the same database; a job the claim took
    after the shutdown began goes back to the queue untouched, not run and not counted as an attempt."""
    import asyncio

    from server.app import create_app

    settings = fake_settings(tmp_path, ADMIN_KEY).with_(job_workers=1)
    app = create_app(settings, manager=fake_models())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as client:
            api = Api(app, client, settings)
            jobs = app.state.services.subtitle_jobs
            inside, release, finished = asyncio.Event(), asyncio.Event(), []
            claim = jobs.claim

            async def held_claim(now: float | None = None) -> object:
                inside.set()
                await release.wait()  # the worker is in its claim when the server stops
                row = await claim(now)
                finished.append(row)
                return row

            jobs.claim = held_claim
            await asyncio.wait_for(inside.wait(), 30)  # the worker polls every 50 ms
            key = (await api.account())["apiKey"]
            job = (await post(api, key, wav(tone(300, 2)), "/subtitle/jobs")).json()
            stopping = asyncio.ensure_future(jobs.stop())
            release.set()
            await asyncio.wait_for(stopping, 30)
            assert [row["id"] for row in finished] == [job["id"]]  # the claim ran to its end and took the job
            view = await _status(api, key, job["id"])
            assert (view["status"], view["progress"]) == ("queued", 0.0)  # handed back, not run
            async with app.state.services.db.connect() as conn:
                from sqlalchemy import select

                from server.db import subtitle_jobs

                row = (await conn.execute(select(subtitle_jobs).where(subtitle_jobs.c.id == job["id"]))).mappings().one()
            assert (row["attempts"], row["worker_id"]) == (0, None)
