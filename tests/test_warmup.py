"""Warm-up at start (server/warmup.py): /healthz says 503 "starting" until the default models are loaded and
run once, so a balancer sends no traffic to a node still compiling kernels; then 200 "ok"."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx

from tests.conftest import ADMIN_KEY
from tests.fakes import FakeModels, FakeStt, fake_models, fake_settings

WAIT = 30.0  # seconds; a safety net so a broken warm-up fails the test instead of hanging it


class SlowToLoad(FakeModels):
    """Loading the STT model blocks until the test releases it (a model that takes long to load)."""

    def __init__(self) -> None:
        base = fake_models()
        super().__init__(list(base.stt_engines.values()), list(base.tts_engines.values()))
        self.release = threading.Event()
        self.loading = threading.Event()

    def stt(self, model: str) -> FakeStt:
        self.loading.set()
        assert self.release.wait(WAIT)
        return super().stt(model)


async def test_healthz_says_starting_until_the_models_are_warm(tmp_path: Path) -> None:
    from server.app import create_app

    models = SlowToLoad()
    app = create_app(fake_settings(tmp_path, ADMIN_KEY), manager=models)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            assert await asyncio.to_thread(models.loading.wait, WAIT)
            r = await c.get("/healthz")
            assert r.status_code == 503 and r.json()["status"] == "starting"
            models.release.set()
            for _ in range(int(WAIT * 100)):  # until the warm-up thread has finished
                r = await c.get("/healthz")
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.01)
            assert r.status_code == 200 and r.json()["status"] == "ok", r.text
            assert r.json()["warmupErrors"] == []
            assert "whisper:fake" in r.json()["loadedModels"] and "piper:voice-a" in r.json()["loadedModels"]


async def test_a_missing_default_model_is_reported_but_does_not_keep_the_node_down(tmp_path: Path) -> None:
    from server.app import create_app

    settings = fake_settings(tmp_path, ADMIN_KEY).with_(default_stt="whisper:broken")
    app = create_app(settings, manager=fake_models())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            for _ in range(int(WAIT * 100)):
                r = await c.get("/healthz")
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.01)
            assert r.status_code == 200
            assert any("whisper:broken" in e for e in r.json()["warmupErrors"])
