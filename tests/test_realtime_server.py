"""WS /stt/realtime's server layer with fake engines (tests/fakes.py) under a live uvicorn: the stream opens
through SttEngine.open_stream with the session's speaker function, sessions are billed and their slots
freed, and refusals and engine failures end in one error message and a 4000 + status close, authenticated
as the HTTP routes are. test_realtime_api runs the same paths with real models and speech."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from engines.types import SAMPLE_RATE, EngineError
from server.services import services_of
from tests.fakes import FakeModels, fake_models, fake_settings, silence, tone
from tests.realtime_helpers import ADMIN_KEY, Server, assert_finished, frames, run_session, s16

PCM = {"audio_format": "pcm_s16le", "sample_rate": SAMPLE_RATE}


@pytest.fixture(scope="module")
def models() -> FakeModels:
    return fake_models()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models: FakeModels) -> Iterator[Server]:
    from server.app import create_app
    from server.launcher import serve_in_thread

    app = create_app(fake_settings(tmp_path_factory.mktemp("realtime-fakes"), ADMIN_KEY), manager=models)
    with serve_in_thread(app) as live:
        yield Server(app, live.url)


def ledger(server: Server, key: str) -> list[tuple[str, float]]:
    acct = httpx.get(f"{server.url}/account", headers={"x-api-key": key}, timeout=30).json()
    usage = httpx.get(f"{server.url}/accounts/{acct['id']}/usage", headers={"x-api-key": ADMIN_KEY}, timeout=30)
    return [(u["status"], u["minutes"]) for u in usage.json()["usage"] if u["kind"] == "realtime"]


def sessions_closed(server: Server) -> bool:
    """The server frees a session's slot just after the client saw it close: a bounded wait for that."""
    realtime = services_of(server.app).realtime
    pause = threading.Event()
    for _ in range(200):
        if realtime.active_sessions == 0:
            return True
        pause.wait(0.05)
    return False


def test_tokens_speakers_and_billing_come_through(server: Server) -> None:
    key = server.account()
    audio = np.concatenate([tone(300, 2), silence(1), tone(1200, 1)])
    session = run_session(server, key, {**PCM, "enable_speaker_diarization": True}, frames(s16(audio), 3200))
    assert_finished(session)
    # The engine's tokens, in order, each once; the speaker function the server passed to open_stream tells
    # the two tones apart (the fake encoder embeds by frequency; the server's OnlineSpeakers clusters).
    assert [(t["text"], t["start_ms"], t["speaker"]) for t in session.finals()] == [
        (" tone300", 0, "1"), (" tone300", 1000, "1"), (" tone1200", 3000, "2")]
    assert ledger(server, key) == [("settled", 0.5)]
    assert sessions_closed(server)


def test_without_diarization_no_speaker_function_reaches_the_engine(server: Server) -> None:
    session = run_session(server, server.account(), PCM, frames(s16(tone(300, 1)), 3200))
    assert_finished(session)
    assert [t["text"] for t in session.finals()] == [" tone300"] and "speaker" not in session.finals()[0]


@pytest.mark.parametrize(
    ("case", "status"),
    [("bad_key", 401), ("disabled", 403), ("missing_model", 503), ("engine_error", 400), ("engine_bug", 500)],
)
def test_refusals_and_failures_end_in_one_error(server: Server, models: FakeModels, case: str, status: int) -> None:
    acc = None if case == "bad_key" else httpx.post(
        f"{server.url}/accounts", timeout=30,
        json={"apiKey": ADMIN_KEY, "startingMinutes": 10, "disabled": case == "disabled",
              "sttApiKey": "whisper:broken" if case == "missing_model" else None},
    ).json()
    key = "s7_not_a_key" if acc is None else acc["apiKey"]
    fake = models.stt_engines["fake"]
    fake.fail = {"engine_error": EngineError("cannot decode this"), "engine_bug": RuntimeError("bug")}.get(case)
    try:
        session = run_session(server, key, PCM, frames(s16(tone(300, 1)), 3200))
    finally:
        fake.fail = None
    [msg] = [m for m in session.messages if "error_code" in m]
    assert session.messages[-1] is msg and msg["error_code"] == status and session.close_code == 4000 + status
    assert "bug" not in msg["error_message"] and "Traceback" not in msg["error_message"]
    if case == "disabled":
        assert msg["error_message"] == "This account is disabled"  # the HTTP routes' own check and words
    if case == "missing_model":
        assert ledger(server, key) == []  # refused before anything was reserved
    assert sessions_closed(server)
