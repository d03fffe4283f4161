"""WS /stt/realtime's server layer with fake engines (tests/fakes.py) under a live uvicorn: the stream opens
through SttEngine.open_stream with the session's speaker function, sessions are billed and their slots
freed, and refusals and engine failures end in one error message and a 4000 + status close, authenticated
as the HTTP routes are. test_realtime_api runs the same paths with real models and speech."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
import soundfile as sf

from engines.types import SAMPLE_RATE, EngineError
from server.services import services_of
from tests.fakes import FakeModels, fake_models, fake_settings, silence, tone
from tests.realtime_helpers import ADMIN_KEY, Server, assert_finished, frames, run_session, s16

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

PCM = {"audio_format": "pcm_s16le", "sample_rate": SAMPLE_RATE}
IDLE_S = 1.5  # this module's S7_REALTIME_IDLE_S
PER_ACCOUNT = 2  # S7_REALTIME_MAX_SESSIONS_PER_ACCOUNT
MAX_LAG_S = 0.3  # S7_REALTIME_MAX_LAG_S


@pytest.fixture(scope="module")
def models() -> FakeModels:
    return fake_models()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models: FakeModels) -> Iterator[Server]:
    from server.app import create_app
    from server.launcher import serve_in_thread

    settings = fake_settings(tmp_path_factory.mktemp("realtime-fakes"), ADMIN_KEY).with_(
        realtime_idle_s=IDLE_S, realtime_max_sessions_per_account=PER_ACCOUNT, realtime_max_lag_s=MAX_LAG_S)
    app = create_app(settings, manager=models)
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


# ---------------------------------------------------------------- control messages and limits


@contextmanager
def live(server: Server, key: str, config: dict | None = PCM) -> Iterator[ClientConnection]:
    """An open session (its config sent unless None) for a test to talk to message by message."""
    from websockets.sync.client import connect

    with connect(f"{server.ws_url}?apiKey={key}", proxy=None, max_queue=None, open_timeout=30) as ws:
        if config is not None:
            ws.send(json.dumps(config))
        yield ws


def until(ws: ClientConnection, done: Callable[[dict], bool]) -> list[dict]:
    """Messages up to and including the first that `done` accepts."""
    out: list[dict] = []
    while not out or not done(out[-1]):
        out.append(json.loads(ws.recv(timeout=60)))
    return out


def kept_alive(ws: ClientConnection, done: Callable[[dict], bool]) -> list[dict]:
    """`until`, sending keepalives while the server is silent (the session sends no audio meanwhile)."""
    out: list[dict] = []
    while not out or not done(out[-1]):
        try:
            out.append(json.loads(ws.recv(timeout=IDLE_S / 3)))
        except TimeoutError:
            ws.send(json.dumps({"type": "keepalive"}))
    return out


def rest(ws: ClientConnection) -> list[dict]:
    """Every message until the server closes the connection."""
    from websockets.exceptions import ConnectionClosed

    out: list[dict] = []
    try:
        while True:
            out.append(json.loads(ws.recv(timeout=60)))
    except ConnectionClosed:
        return out


def has_token(text: str) -> Callable[[dict], bool]:
    return lambda m: any(t["text"] == text for t in m.get("tokens", []))


def finals_of(messages: list[dict]) -> list[tuple[str, int]]:
    return [(t["text"], t["start_ms"]) for m in messages for t in m.get("tokens", [])
            if t["is_final"] and t["text"] not in ("<fin>", "<end>")]


def refused_handshake(server: Server, key: str) -> tuple[int, dict[str, str], dict]:
    """(status, headers, JSON body) of a connection the server refuses before the upgrade."""
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused, live(server, key, config=None):
        pass
    response = refused.value.response
    return response.status_code, dict(response.headers), json.loads(response.body or b"{}")


def usage_rows(server: Server, key: str) -> list[dict]:
    acct = httpx.get(f"{server.url}/account", headers={"x-api-key": key}, timeout=30).json()
    usage = httpx.get(f"{server.url}/accounts/{acct['id']}/usage", headers={"x-api-key": ADMIN_KEY}, timeout=30)
    return [u for u in usage.json()["usage"] if u["kind"] == "realtime"]


def settled(server: Server, key: str, sessions: int) -> list[dict]:
    """The account's realtime ledger rows once `sessions` of them are settled or refunded (a bounded wait:
    the server settles just after the client saw the close)."""
    pause = threading.Event()
    for _ in range(200):
        rows = usage_rows(server, key)
        if sum(r["status"] != "reserved" for r in rows) >= sessions:
            return rows
        pause.wait(0.05)
    raise AssertionError(usage_rows(server, key))


def test_finalize_makes_pending_words_final_and_the_session_goes_on(server: Server) -> None:
    key = server.account()
    with live(server, key) as ws:
        ws.send(s16(tone(300, 2)))  # the engine holds the second word pending, as a real one holds its last
        ws.send(json.dumps({"type": "finalize"}))
        before = until(ws, has_token("<fin>"))
        fin = before[-1]["tokens"]
        assert fin[-1] == {"text": "<fin>", "start_ms": 2000, "end_ms": 2000, "confidence": 1.0, "is_final": True}
        assert all(t["is_final"] for t in fin), "nothing stays pending after a finalize"
        assert finals_of(before) == [(" tone300", 0), (" tone300", 1000)]
        ws.send(s16(tone(1200, 1)))  # the session goes on
        ws.send(b"")
        after = rest(ws)
    assert after[-1]["finished"] is True and ws.close_code == 1000
    assert finals_of(after) == [(" tone1200", 2000)]
    assert not any(has_token("<fin>")(m) for m in after)  # the end of the stream is no finalize
    assert settled(server, key, 1)[0]["minutes"] == 0.5


def test_keepalive_keeps_a_silent_session_open_and_idle_sessions_are_closed(server: Server) -> None:
    kept_key, quiet_key = server.account(), server.account()
    began = time.monotonic()
    # Alongside: two sessions that go quiet, one after a second of audio, one without any.
    with live(server, kept_key) as kept, live(server, quiet_key) as spoke, live(server, quiet_key) as silent:
        spoke.send(s16(tone(300, 1)))
        for _ in range(4):  # keepalives alone, for longer than the idle limit
            kept.send(json.dumps({"type": "keepalive"}))
            with pytest.raises(TimeoutError):  # a keepalive is answered with nothing
                kept.recv(timeout=IDLE_S / 3)
        kept.send(s16(tone(300, 1)))
        kept.send(b"")
        kept_msgs, spoke_msgs, silent_msgs = rest(kept), rest(spoke), rest(silent)
    assert time.monotonic() - began >= IDLE_S
    assert kept_msgs[-1]["finished"] is True and kept.close_code == 1000
    assert finals_of(kept_msgs) == [(" tone300", 0)]
    for msgs, conn in ((spoke_msgs, spoke), (silent_msgs, silent)):
        assert msgs[-1]["error_code"] == 408 and "keepalive" in msgs[-1]["error_message"], msgs
        assert conn.close_code == 4408
    # The audio that was processed is billed; the silent session's reservation is refunded.
    assert sorted((r["status"], r["minutes"], r["audioSeconds"]) for r in settled(server, quiet_key, 2)) == [
        ("refunded", 0.5, 0.0), ("settled", 0.5, 1.0)]


def test_unknown_messages_get_an_error_and_the_session_goes_on(server: Server) -> None:
    with live(server, server.account()) as ws:
        ws.send(json.dumps({"type": "bogus"}))
        bogus = json.loads(ws.recv(timeout=30))
        ws.send("hello")
        hello = json.loads(ws.recv(timeout=30))
        ws.send(s16(tone(300, 1)))
        ws.send(b"")
        done = rest(ws)
    for msg in (bogus, hello):
        assert set(msg) == {"error_code", "error_message", "fatal"} and msg["error_code"] == 400
        assert msg["fatal"] is False and "finalize" in msg["error_message"]
    assert "'bogus'" in bogus["error_message"]
    assert done[-1]["finished"] is True and ws.close_code == 1000
    assert finals_of(done) == [(" tone300", 0)]


@pytest.mark.parametrize("value", [499, 3001, "800", True, 800.5])
def test_max_endpoint_delay_out_of_range_is_refused(server: Server, value: object) -> None:
    session = run_session(server, server.account(), {**PCM, "max_endpoint_delay_ms": value}, [])
    assert session.close_code == 4400 and len(session.messages) == 1
    assert "max_endpoint_delay_ms" in session.messages[0]["error_message"]


def test_config_reaches_the_engine(server: Server, models: FakeModels) -> None:
    """max_endpoint_delay_ms goes to the stream; hints stay preferences (detection runs) while `language`
    forces one."""
    opened = models.stt_engines["fake"].streams.opened
    key = server.account()
    hinted = run_session(server, key, {**PCM, "max_endpoint_delay_ms": 800, "language_hints": ["de", "en"]},
                         frames(s16(tone(300, 1)), 3200))
    assert_finished(hinted)
    assert opened[-1].max_endpoint_delay_ms == 800 and opened[-1].language_hints == ("de", "en")
    assert opened[-1].language is None
    forced = run_session(server, key, {**PCM, "language": "sl", "enable_language_identification": True},
                         frames(s16(tone(300, 1)), 3200))
    assert_finished(forced)
    assert opened[-1].language == "sl" and opened[-1].max_endpoint_delay_ms is None
    assert [t["language"] for t in forced.finals()] == ["sl"]


def test_sessions_per_account_are_capped(server: Server) -> None:
    key = server.account()
    with live(server, key, config=None), live(server, key, config=None):  # the cap: PER_ACCOUNT sessions
        # A key in the URL: refused before the upgrade.
        status, headers, body = refused_handshake(server, key)
        assert status == 429 and headers["retry-after"] == "5"
        assert body["error"]["code"] == "too_many_sessions" and str(PER_ACCOUNT) in body["error"]["message"]
        # The key in the config message (what the web page does): refused with one message, close 4429.
        in_config = run_session(server, key, {**PCM, "apiKey": key}, [], key_in_url=False)
        assert [m["error_code"] for m in in_config.messages] == [429] and in_config.close_code == 4429
        # Another account is not held back.
        assert_finished(run_session(server, server.account(), PCM, frames(s16(tone(300, 1)), 3200)))
    assert sessions_closed(server)
    assert_finished(run_session(server, key, PCM, frames(s16(tone(300, 1)), 3200)))  # free again
    assert metric(server, 's7_realtime_refusals_total{reason="account"}') >= 2


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", headers={"x-api-key": ADMIN_KEY}, timeout=30).text
    [line] = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(line.rsplit(" ", 1)[1])


def test_an_overloaded_server_refuses_new_sessions_before_the_upgrade(server: Server, models: FakeModels) -> None:
    """Live sessions' final words lag behind their audio while the model reports itself saturated: a new
    session gets 503 with Retry-After. The same lag on a model with capacity left is not overload."""
    load = models.stt_engines["fake"].streams
    try:
        load.delay_s, load.busy_ratio = 1.0 + 2 * MAX_LAG_S, 1.0  # every decode takes longer than its audio
        with live(server, server.account()) as ws:
            ws.send(s16(tone(300, 2)))  # the first word final 1.6 s after the audio started, 0.6 s after it ended
            kept_alive(ws, lambda m: any(t["is_final"] for t in m["tokens"]))
            assert metric(server, 's7_realtime_session_lag_p95_seconds{quantile="0.5"}') > MAX_LAG_S
            status, headers, body = refused_handshake(server, server.account())
            assert status == 503 and headers["retry-after"] == "5"
            assert body["error"]["code"] == "server_overloaded" and "lag" in body["error"]["message"]
            load.delay_s, load.busy_ratio = 0.0, 0.2
            ws.send(json.dumps({"type": "keepalive"}))
            assert_finished(run_session(server, server.account(), PCM, frames(s16(tone(300, 1)), 3200)))
            assert metric(server, "s7_realtime_sessions") >= 1
    finally:
        load.reset()
    assert metric(server, 's7_realtime_refusals_total{reason="overload"}') >= 1
    assert metric(server, "s7_realtime_final_lag_seconds_count") >= 1


def test_billing_stops_where_the_balance_does(server: Server) -> None:
    """40 s streamed on half a minute: the first 30 s are processed (their words made final), then 402; the
    charge is those 30 s."""
    key = server.account(startingMinutes=0.5)
    session = run_session(server, key, PCM, frames(s16(tone(300, 40)), 2 * SAMPLE_RATE))
    assert [m["error_code"] for m in session.messages if "error_code" in m] == [402]
    assert "error_code" in session.messages[-1] and session.close_code == 4402
    assert finals_of(session.updates) == [(" tone300", s * 1000) for s in range(30)]
    [row] = settled(server, key, 1)
    assert (row["status"], row["minutes"], row["audioSeconds"]) == ("settled", 0.5, 30.0)


def test_audio_received_but_not_processed_is_not_billed(server: Server, models: FakeModels) -> None:
    """29 s processed, then 5 s more sent while the model is busy elsewhere, and the client leaves: the
    charge is the 29.5 s handed to the engine (0.5 min), not the 34 s received (1.0)."""
    load = models.stt_engines["fake"].streams
    key = server.account()
    try:
        with live(server, key) as ws:
            ws.send(s16(tone(300, 29)))
            ws.send(json.dumps({"type": "finalize"}))
            until(ws, has_token("<fin>"))
            load.gate.clear()
            calls = load.calls
            for _ in range(10):  # a finalize after each half second: the engine is handed one at a time
                ws.send(s16(tone(300, 0.5)))
                ws.send(json.dumps({"type": "finalize"}))
            pause = threading.Event()
            while load.calls == calls and not pause.wait(0.02):  # the engine holds the first half second
                pass
        [row] = settled(server, key, 1)
    finally:
        load.gate.set()
    assert (row["status"], row["minutes"], row["audioSeconds"]) == ("settled", 0.5, 29.5)


def test_frames_are_bounded_before_and_while_they_decode(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    from server.realtime import MAX_FRAME_AUDIO_S, MAX_FRAME_BYTES

    caplog.set_level(logging.INFO, logger="speech7.realtime")
    key = server.account()
    big = run_session(server, key, PCM, [b"\x00" * (MAX_FRAME_BYTES + 2)])
    assert [m["error_code"] for m in big.messages] == [413] and big.close_code == 4413
    # Five minutes of silence as FLAC is a few kB: one frame that would decode to 9.6 M samples.
    buf = io.BytesIO()
    sf.write(buf, np.zeros(300 * SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE, format="FLAC")
    assert len(buf.getvalue()) < MAX_FRAME_BYTES // 10
    bomb = run_session(server, key, {"audio_format": "auto"}, [buf.getvalue()])
    errors = [m for m in bomb.messages if "error_code" in m]
    assert [m["error_code"] for m in errors] == [413] and bomb.close_code == 4413
    assert f"{MAX_FRAME_AUDIO_S:g} s" in errors[0]["error_message"]
    assert all(r["audioSeconds"] <= MAX_FRAME_AUDIO_S for r in settled(server, key, 2))
    # The client's mistake is refused, not logged as the server's failure with a traceback.
    records = [r for r in caplog.records if r.name == "speech7.realtime"]
    assert records and all(r.levelno < logging.WARNING and r.exc_info is None for r in records), records


def test_two_way_serves_the_direction_it_can(server: Server, models: FakeModels) -> None:
    """en/de with only de->en installed (the fake CT2 translator): the session is accepted, its first message
    names the missing direction, German speech lands on pane B and its translation on pane A."""
    key = server.account()
    config = {**PCM, "language_hints": ["de"], "languageA": "en", "languageB": "de"}
    session = run_session(server, key, config, frames(s16(tone(300, 2)), 3200))
    first, done = session.messages[0], session.messages[-1]
    assert first["tokens"] == [] and first["missingDirections"] == ["en->de"]
    assert "en->de" in first["message"] and "install" in first["message"]
    assert first["languageA"] == {"code": "en", "finalText": "", "nonFinalText": ""}
    opened = models.stt_engines["fake"].streams.opened[-1]
    assert opened.language_hints == ("de", "en") and opened.enable_language_identification
    assert done["finished"] is True and session.close_code == 1000
    assert all(m["type"] == "two_way_transcription" for m in session.messages)
    assert done["languageB"] == {"code": "de", "finalText": "tone300 tone300", "nonFinalText": ""}
    assert done["languageA"] == {"code": "en", "finalText": "[en] tone300 tone300", "nonFinalText": ""}
