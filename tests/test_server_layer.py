"""The server layer around the engines, with protocol-conforming fakes (tests/fakes.py) plugged in through
create_app(manager=...): routes, billing, refunds and error mapping in seconds. The real-model API tests
(test_stt_api, test_tts_api, test_subtitle_*, test_realtime_api) check the same paths with real engines."""

from __future__ import annotations

import inspect
import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf

from engines.batching import WorkerClosedError
from engines.mp3 import decode_mp3
from engines.types import (
    SAMPLE_RATE,
    Diarizer,
    EngineError,
    ModelProvider,
    SpeakerEncoder,
    StreamOptions,
    SttEngine,
    SttStream,
    Translator,
    TtsEngine,
)
from tests.conftest import ADMIN_KEY, Api
from tests.fake_stream import FakeStream
from tests.fakes import (
    TTS_SECONDS_PER_CHAR,
    FakeDiarizer,
    FakeModels,
    FakeSpeakerEncoder,
    FakeStt,
    FakeTranslator,
    FakeTts,
    fake_models,
    fake_settings,
    silence,
    tone,
)


@pytest_asyncio.fixture(loop_scope="function")  # the test's loop, which must run the job workers too
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    from server.app import create_app

    models = fake_models()
    settings = fake_settings(tmp_path, ADMIN_KEY)
    app = create_app(settings, manager=models)
    async with app.router.lifespan_context(app):
        # raise_app_exceptions=False: a bug answers 500 as under uvicorn, instead of raising into the test.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:
            yield Api(app, c, settings)
    assert models.closed  # the lifespan closes the models it was given


def models_of(api: Api) -> FakeModels:
    models = api.services.models
    assert isinstance(models, FakeModels)
    return models


def wav(*parts: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.concatenate(parts), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


async def post(api: Api, key: str, data: bytes, path: str = "/stt", **fields: str) -> httpx.Response:
    return await api.client.post(path, headers={"x-api-key": key}, files={"audio": ("a.wav", data, "audio/wav")},
                                 data=fields)


async def ledger(api: Api, account_id: str) -> list[tuple[str, str, float]]:
    r = await api.client.get(f"/accounts/{account_id}/usage", headers={"x-api-key": ADMIN_KEY})
    return [(u["kind"], u["status"], u["minutes"]) for u in r.json()["usage"] if u["kind"] != "credit"]


def leftovers(api: Api, sub: str) -> list[str]:
    """Files left under data/<sub> (tmp/ holds one directory per server process)."""
    d = Path(api.settings.data_dir) / sub
    return sorted(p.name for p in d.rglob("*") if p.is_file())


def test_fakes_implement_the_protocols() -> None:
    """Same methods, same parameters as the protocols (mypy checks the types: tests/fakes.py `_conforms`)."""
    pairs = [(SttEngine, FakeStt("x")), (SttStream, FakeStream(FakeStt("x"), StreamOptions(), None)),
             (TtsEngine, FakeTts("x")), (Diarizer, FakeDiarizer()),
             (SpeakerEncoder, FakeSpeakerEncoder()), (Translator, FakeTranslator()), (ModelProvider, FakeModels([], []))]
    for proto, fake in pairs:
        names = [n for n, v in vars(proto).items() if inspect.isfunction(v) and not n.startswith("_")]
        assert names, proto
        for name in names:
            want = [(p.name, p.kind) for p in inspect.signature(getattr(proto, name)).parameters.values()]
            got = [(p.name, p.kind) for p in inspect.signature(getattr(type(fake), name)).parameters.values()]
            assert got == want, (proto.__name__, name)


# ---------------------------------------------------------------- POST /stt


async def test_stt_returns_what_the_engine_heard_and_bills_it(api: Api) -> None:
    acc = await api.account()
    r = await post(api, acc["apiKey"], wav(tone(300, 2), silence(1), tone(1200, 1)), enableSpeakerDiarization="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [e["text"] for e in body["transcript"]] == ["tone300 tone300", "tone1200"]
    assert [(e["startMs"], e["endMs"]) for e in body["transcript"]] == [(0, 2000), (3000, 4000)]
    # The fake diarizer tells the tones apart: the words get its speakers, numbered by first appearance.
    assert body["text"] == "Speaker 1: tone300 tone300\nSpeaker 2: tone1200"
    assert [s["label"] for s in body["speakers"]] == ["Speaker 1", "Speaker 2"]
    assert (body["durationMs"], body["minutesUsed"]) == (4000, 0.5)
    assert await ledger(api, acc["id"]) == [("stt", "settled", 0.5)]
    assert await api.minutes(acc["apiKey"]) == 9.5
    assert leftovers(api, "tmp") == []


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (EngineError("the engine refused this audio"), 422, "engine_error"),
        (WorkerClosedError("the model was unloaded"), 503, "shutting_down"),
        (RuntimeError("a bug in the engine"), 500, "internal_error"),
    ],
)
async def test_stt_engine_failures_refund_the_reservation(
    api: Api, failure: BaseException, status: int, code: str
) -> None:
    acc = await api.account()
    models_of(api).stt_engines["fake"].fail = failure
    r = await post(api, acc["apiKey"], wav(tone(300, 2)))
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert "Traceback" not in r.text and "a bug" not in r.text  # our bugs stay in the log
    assert await ledger(api, acc["id"]) == [("stt", "refunded", 0.5)]
    assert await api.minutes(acc["apiKey"]) == 10
    assert leftovers(api, "tmp") == []


async def test_stt_missing_model_is_503_and_refunded(api: Api) -> None:
    acc = await api.account(sttApiKey="whisper:broken")  # installed as far as the catalog knows
    r = await post(api, acc["apiKey"], wav(tone(300, 1)))
    assert (r.status_code, r.json()["error"]["code"]) == (503, "model_missing")
    assert await ledger(api, acc["id"]) == [("stt", "refunded", 0.5)]


async def test_stt_language_the_model_cannot_serve_is_422(api: Api) -> None:
    acc = await api.account(sttApiKey="whisper:fake.en")
    r = await post(api, acc["apiKey"], wav(tone(300, 1)), languageHints="de")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "engine_error")
    assert "English-only" in r.json()["error"]["message"]
    assert await api.minutes(acc["apiKey"]) == 10


@pytest.mark.parametrize(("data", "code"), [(b"RIFF" + bytes(range(256)) * 40, "undecodable_media"),
                                            (wav(np.zeros(0, np.float32)), "empty_media")])
async def test_stt_media_errors_are_422_before_any_charge(api: Api, data: bytes, code: str) -> None:
    acc = await api.account()
    r = await post(api, acc["apiKey"], data)
    assert (r.status_code, r.json()["error"]["code"]) == (422, code), r.text
    assert await ledger(api, acc["id"]) == []
    assert leftovers(api, "tmp") == []


async def test_the_key_may_come_as_header_form_field_or_query(api: Api) -> None:
    data = wav(tone(300, 1))
    for key in (None, "s7_not_a_key"):
        r = await api.client.post("/stt", headers={"x-api-key": key} if key else {}, files={"audio": ("a.wav", data)})
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
    key = (await api.account())["apiKey"]
    by_field = await api.client.post("/stt", data={"apiKey": key}, files={"audio": ("a.wav", data, "audio/wav")})
    by_query = await api.client.post(f"/stt?apiKey={key}", files={"audio": ("a.wav", data, "audio/wav")})
    assert [r.json()["text"] for r in (by_field, by_query)] == ["tone300", "tone300"]
    assert leftovers(api, "tmp") == []


# ---------------------------------------------------------------- subtitles


async def test_subtitle_layout_options_are_clamped_and_non_numbers_refused(api: Api) -> None:
    """README: out-of-range maxCharsPerLine/maxLines are clamped into 30-120 / 1-4; a non-number is a 400."""
    from tests.test_subtitle_api import check_cues, parse_subtitles

    key = (await api.account())["apiKey"]
    data = wav(*(tone(300 + 100 * (i % 9), 1) for i in range(24)))  # 24 words, no pause

    async def srt(**fields: str) -> str:
        r = await post(api, key, data, "/subtitle", **fields)
        assert r.status_code == 200, r.text
        return r.text

    low = await srt(maxCharsPerLine="5", maxLines="0")
    assert low == await srt(maxCharsPerLine="30", maxLines="1")
    check_cues(parse_subtitles(low), 30, 1)
    high = await srt(maxCharsPerLine="1000", maxLines="99")
    assert high == await srt(maxCharsPerLine="120", maxLines="4")
    check_cues(parse_subtitles(high), 120, 4)
    assert max(len(line) for c in parse_subtitles(high) for line in c.lines) > 30  # wider than the low clamp
    before = await api.minutes(key)
    for bad in ({"maxCharsPerLine": "wide"}, {"maxLines": "two"}, {"maxLines": "1.5"}, {"format": "ass"}):
        r = await post(api, key, data, "/subtitle", **bad)
        assert r.status_code == 400 and r.json()["error"]["code"], (bad, r.text)
    assert await api.minutes(key) == before  # refused requests cost nothing


async def test_subtitle_job_failure_is_recorded_and_refunded(api: Api) -> None:
    from tests.test_subtitle_jobs import wait_for

    acc = await api.account()
    ok = (await post(api, acc["apiKey"], wav(tone(300, 1)), "/subtitle/jobs")).json()
    view = await wait_for(api.client, acc["apiKey"], ok["id"], {"completed", "failed"})
    assert view["status"] == "completed"
    srt = (await api.client.get(view["downloadUrl"], headers={"x-api-key": acc["apiKey"]})).text
    assert srt == "1\n00:00:00,000 --> 00:00:01,000\ntone300\n"
    models_of(api).stt_engines["fake"].fail = EngineError("the engine refused this audio")
    bad = (await post(api, acc["apiKey"], wav(tone(300, 1)), "/subtitle/jobs")).json()
    view = await wait_for(api.client, acc["apiKey"], bad["id"], {"completed", "failed"})
    assert (view["status"], view["error"], view["minutesUsed"]) == ("failed", "the engine refused this audio", 0.0)
    assert await ledger(api, acc["id"]) == [("subtitle_job", "refunded", 0.5), ("subtitle_job", "settled", 0.5)]
    assert leftovers(api, "jobs") == [f"{ok['id']}.srt"]  # the failed job's upload is gone


# ---------------------------------------------------------------- POST /tts

TEXT = "One short sentence. And a second one here."


async def test_tts_streams_what_the_voice_made_stores_and_bills_it(api: Api) -> None:
    acc = await api.account()
    r = await api.client.post("/tts", json={"apiKey": acc["apiKey"], "text": TEXT})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/mpeg"
    pcm, rate = decode_mp3(r.content)
    expected = sum(len(s) for s in ("One short sentence.", "And a second one here.")) * TTS_SECONDS_PER_CHAR
    assert rate == 22050 and abs(pcm.size / rate - expected) < 0.1
    speech_id = r.headers["x-speech-id"]
    listed = (await api.client.get("/speeches", headers={"x-api-key": acc["apiKey"]})).json()["speeches"]
    assert [(s["id"], s["minutesUsed"], s["engine"]) for s in listed] == [(speech_id, 0.5, "piper:voice-a")]
    stored = await api.client.get(f"/speeches/{speech_id}?download=1", headers={"x-api-key": acc["apiKey"]})
    assert stored.content == r.content
    assert await ledger(api, acc["id"]) == [("tts", "settled", 0.5)]


@pytest.mark.parametrize("how", ["body", "header", "query"])
async def test_tts_key_in_body_header_or_query(api: Api, how: str) -> None:
    key = (await api.account())["apiKey"]
    body = {"text": "Keys work three ways.", "json": True}
    if how == "body":
        r = await api.client.post("/tts", json={**body, "apiKey": key})
    elif how == "header":
        r = await api.client.post("/tts", json=body, headers={"x-api-key": key})
    else:
        r = await api.client.post("/tts", json=body, params={"apiKey": key})
    assert r.status_code == 200, r.text
    assert r.json()["minutesUsed"] == 0.5


@pytest.mark.parametrize(("body", "status", "code"), [({"text": "... !!"}, 400, "invalid_text"),
                                                      ({"text": TEXT, "voice": "broken-voice"}, 503, "model_missing"),
                                                      ({"text": TEXT, "voice": "nobody"}, 400, "unknown_voice")])
async def test_tts_refusals_come_before_any_charge(api: Api, body: dict, status: int, code: str) -> None:
    acc = await api.account()
    r = await api.client.post("/tts", json={"apiKey": acc["apiKey"], **body})
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert await ledger(api, acc["id"]) == [] and leftovers(api, "speeches") == []


async def test_tts_failure_mid_text_refunds_and_stores_nothing(api: Api) -> None:
    acc = await api.account()
    models_of(api).tts_engines["voice-a"].fail_after = 1
    r = await api.client.post("/tts", json={"apiKey": acc["apiKey"], "text": TEXT, "json": True})
    assert (r.status_code, r.json()["error"]["code"]) == (500, "synthesis_failed")
    await api.services.tts.stop()  # awaits the clean-up the failed stream left behind
    assert await ledger(api, acc["id"]) == [("tts", "refunded", 0.5)]
    assert leftovers(api, "speeches") == []
    assert (await api.client.get("/speeches", headers={"x-api-key": acc["apiKey"]})).json()["speeches"] == []


def sentences(n: int, seconds: float) -> str:
    """n sentences the fake voice speaks for `seconds` each."""
    one = ("word " * int(seconds / TTS_SECONDS_PER_CHAR))[: int(seconds / TTS_SECONDS_PER_CHAR) - 1] + "."
    return " ".join([one] * n)


async def test_tts_reservation_grows_when_the_voice_runs_longer_than_estimated(api: Api) -> None:
    acc = await api.account()
    models_of(api).tts_engines["voice-a"].estimate_factor = 0.5  # 40 s of audio estimated at 20 s: 0.5 min
    r = await api.client.post("/tts", json={"apiKey": acc["apiKey"], "text": sentences(4, 10), "json": True})
    assert r.status_code == 200, r.text
    assert abs(r.json()["durationMs"] - 40_000) < 100 and r.json()["minutesUsed"] == 1.0
    assert await ledger(api, acc["id"]) == [("tts", "settled", 1.0)]
    assert await api.minutes(acc["apiKey"]) == 9.0


async def test_tts_never_synthesizes_past_what_the_balance_covers(api: Api) -> None:
    """Audio beyond the reservation, which the balance cannot extend, is never sent, stored or charged: JSON
    answers 402 (a stream that already answered 200 is cut: see the test under uvicorn below)."""
    acc = await api.account(startingMinutes=0.5)
    models_of(api).tts_engines["voice-a"].estimate_factor = 0.5
    r = await api.client.post("/tts", json={"apiKey": acc["apiKey"], "text": sentences(4, 10), "json": True})
    assert (r.status_code, r.json()["error"]["code"]) == (402, "insufficient_minutes")
    assert "nothing was stored or charged" in r.json()["error"]["message"]
    assert await ledger(api, acc["id"]) == [("tts", "refunded", 0.5)]
    assert await api.minutes(acc["apiKey"]) == 0.5
    assert leftovers(api, "speeches") == []
    # A first sentence that is already past the balance is refused before the stream commits to 200.
    r = await api.client.post("/tts", json={"apiKey": acc["apiKey"], "text": sentences(1, 40)})
    assert (r.status_code, r.json()["error"]["code"]) == (402, "insufficient_minutes")
    assert await api.minutes(acc["apiKey"]) == 0.5 and leftovers(api, "speeches") == []
    assert await ledger(api, acc["id"]) == [("tts", "refunded", 0.5)] * 2


def test_a_tts_stream_that_runs_out_of_minutes_ends_as_an_incomplete_transfer(tmp_path: Path) -> None:
    """Under uvicorn: a stream whose first sentence fits has answered 200; when a later one would go past what
    the balance covers it is not sent, and the client sees the transfer fail (not a complete, shorter MP3).
    Nothing is stored or charged."""
    from server.app import create_app
    from server.launcher import serve_in_thread

    models = fake_models()
    models.tts_engines["voice-a"].estimate_factor = 0.5
    app = create_app(fake_settings(tmp_path, ADMIN_KEY), manager=models)
    with serve_in_thread(app) as live:
        r = httpx.post(f"{live.url}/accounts", json={"apiKey": ADMIN_KEY, "startingMinutes": 0.5}, timeout=30)
        key = r.json()["apiKey"]
        received = bytearray()
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete"):
            with httpx.stream("POST", f"{live.url}/tts", json={"apiKey": key, "text": sentences(4, 10)},
                              timeout=60) as resp:
                assert resp.status_code == 200
                for data in resp.iter_bytes():
                    received += data
        pcm, rate = decode_mp3(bytes(received))
        assert 29.0 < pcm.size / rate <= 30.1  # three sentences fit in 0.5 min; the fourth was never sent
        caps = httpx.get(f"{live.url}/account/capabilities", headers={"x-api-key": key}, timeout=30).json()
        assert caps["minutesRemaining"] == 0.5  # refunded before the connection closed
        usage = httpx.get(f"{live.url}/accounts/{r.json()['id']}/usage", headers={"x-api-key": ADMIN_KEY}).json()
        assert [(u["kind"], u["status"]) for u in usage["usage"] if u["kind"] == "tts"] == [("tts", "refunded")]
        assert not list((tmp_path / "data" / "speeches").glob("*"))
