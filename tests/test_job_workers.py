"""Subtitle job workers on fake engines (issue 15): a long job does not hold up a short one (two workers by
default), and a job whose account was disabled while it waited fails and is refunded instead of running."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest_asyncio

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
