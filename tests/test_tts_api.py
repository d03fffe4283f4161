"""POST /tts, GET /speeches and GET /speeches/:id through the HTTP API, with the real Piper voice.

Most tests run the app over httpx's ASGI transport (`api`). Streaming order and client disconnects need a
real socket, so those run against uvicorn (`live_server`) with an httpx streaming client; there the real
voice is wrapped by `GatedVoice`, which holds the second sentence back until the test says so. Questions of
"did the first bytes arrive before synthesis ended" then become questions of order, not of time.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from engines.mp3 import decode_mp3
from tests.conftest import ADMIN_KEY, VOICE_GATE_TIMEOUT_S

pytestmark = pytest.mark.slow

SLOW_VOICE = "en_US-joe-slowtest"  # the bundled voice with its config set to speak at half speed
HELLO = "Hello world from the API."  # the spec's quick test
THREE_SENTENCES = "The weather is sunny today. We will walk to the park after lunch. Please bring some water."



@pytest.fixture(scope="module")
def tts_models_dir(tmp_path_factory: pytest.TempPathFactory, models_root: Path) -> Path:
    """The bundled models plus a second voice, so the account's ttsApiKey and `voice` have a choice.

    The second voice is the same network with `length_scale` 2.0 in its config: whichever voice spoke is
    visible in the audio's duration.
    """
    root = tmp_path_factory.mktemp("tts-models")
    for entry in models_root.iterdir():
        if entry.name != "piper":
            (root / entry.name).symlink_to(entry)
    piper = root / "piper"
    piper.mkdir()
    onnx = models_root / "piper" / "en_US-joe-medium.onnx"
    (piper / onnx.name).symlink_to(onnx)
    shutil.copy(onnx.with_name(onnx.name + ".json"), piper / (onnx.name + ".json"))
    (piper / f"{SLOW_VOICE}.onnx").symlink_to(onnx)
    cfg = json.loads(onnx.with_name(onnx.name + ".json").read_text("utf-8"))
    cfg["inference"]["length_scale"] = 2.0
    (piper / f"{SLOW_VOICE}.onnx.json").write_text(json.dumps(cfg), "utf-8")
    return root


@pytest.fixture
def api_settings(tmp_path: Path, tts_models_dir: Path):  # type: ignore[no-untyped-def]
    from server.settings import Settings

    return Settings(warmup=False, data_dir=tmp_path / "data", admin_key=ADMIN_KEY, models_dir=tts_models_dir, job_poll_seconds=0.2)


def duration_s(mp3: bytes) -> float:
    pcm, rate = decode_mp3(mp3)
    return pcm.size / rate


def rms(mp3: bytes) -> float:
    pcm, _ = decode_mp3(mp3)
    return float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64))))


def billed(seconds: float) -> float:
    """What the README promises: generated duration rounded up to 0.5 min, at least one quantum."""
    return max(1, math.ceil(seconds / 30.0)) * 0.5


def words(n: int) -> str:
    pool = "the quick brown fox jumps over a lazy dog near our quiet river bank".split()
    return " ".join(pool[i % len(pool)] for i in range(n))


async def tts(api, key: str, **body):  # type: ignore[no-untyped-def]
    return await api.client.post("/tts", json={"apiKey": key, **body})


async def ledger(api, account_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    r = await api.client.get(f"/accounts/{account_id}/usage", headers={"x-api-key": ADMIN_KEY})
    assert r.status_code == 200, r.text
    return [u for u in r.json()["usage"] if u["kind"] == "tts"]


def speech_files(data_dir: Path) -> list[str]:
    d = Path(data_dir) / "speeches"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


# ---------------------------------------------------------------- POST /tts over ASGI


async def test_tts_streams_mp3_of_speech_stored_and_billed_once(api):
    acc = await api.account()
    r = await tts(api, acc["apiKey"], text=HELLO)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/mpeg"
    audio = r.content
    seconds = duration_s(audio)
    assert 0.8 < seconds < 5.0, seconds  # five words of speech
    assert rms(audio) > 0.02  # speech, not silence
    speech_id = r.headers["x-speech-id"]

    # The stored file is byte for byte what was streamed, offered as a download with a filename.
    d = await api.client.get(f"/speeches/{speech_id}?download=1", headers={"x-api-key": acc["apiKey"]})
    assert d.status_code == 200
    assert d.headers["content-type"] == "audio/mpeg"
    assert f'filename="speech-{speech_id}.mp3"' in d.headers["content-disposition"]
    assert d.content == audio

    # Minutes: one 0.5-min quantum for a few seconds of audio, settled once, against this speech.
    assert await api.minutes(acc["apiKey"]) == pytest.approx(9.5)
    rows = await ledger(api, acc["id"])
    assert [(u["status"], u["minutes"], u["reference"]) for u in rows] == [("settled", 0.5, speech_id)]
    assert rows[0]["audioSeconds"] == pytest.approx(seconds, abs=0.15)  # MP3 adds only encoder padding
    detail = (await api.client.get(f"/speeches/{speech_id}", headers={"x-api-key": acc["apiKey"]})).json()
    assert detail["minutesUsed"] == 0.5
    assert detail["durationMs"] == pytest.approx(seconds * 1000, abs=150)


async def test_missing_or_wrong_key_is_401(api):
    assert (await api.client.post("/tts", json={"text": HELLO})).status_code == 401
    r = await api.client.post("/tts", json={"text": HELLO, "apiKey": "s7_not_a_key"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert (await api.client.get("/speeches")).status_code == 401


async def test_text_limits_refuse_before_anything_is_charged(api):
    acc = await api.account()
    key = acc["apiKey"]
    for text in ("", "   \n\t ", None, 42):
        r = await tts(api, key, text=text)
        assert r.status_code == 400, (text, r.text)
        assert r.json()["error"]["code"] == "invalid_text"
    r = await tts(api, key, text=words(501))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "text_too_long"
    assert "501 words" in err["message"] and "500 words" in err["message"]
    r = await tts(api, key, text="?! ... --")  # nothing a voice could say
    assert r.status_code == 400
    assert await api.minutes(key) == 10
    assert await ledger(api, acc["id"]) == []
    assert (await api.client.get("/speeches", headers={"x-api-key": key})).json()["speeches"] == []

    # Exactly 500 words passes the limit: this account has no minutes, so the next refusal is the pool's.
    broke = await api.account(startingMinutes=0)
    r = await tts(api, broke["apiKey"], text=words(500))
    assert r.status_code == 402
    assert r.json()["error"]["code"] == "insufficient_minutes"


async def test_empty_pool_is_402_and_nothing_is_stored(api):
    acc = await api.account(startingMinutes=0.5)
    key = acc["apiKey"]
    assert (await tts(api, key, text=HELLO)).status_code == 200  # the last quantum is spendable
    assert await api.minutes(key) == 0
    r = await tts(api, key, text=HELLO)
    assert r.status_code == 402
    err = r.json()["error"]
    assert err["code"] == "insufficient_minutes"
    assert "0.5 min" in err["message"] and "0 min left" in err["message"]
    listed = (await api.client.get("/speeches", headers={"x-api-key": key})).json()["speeches"]
    assert len(listed) == 1
    assert speech_files(api.settings.data_dir) == [f"{listed[0]['id']}.mp3"]
    assert [u["status"] for u in await ledger(api, acc["id"])] == ["settled"]


async def test_long_speech_is_billed_by_generated_duration_in_half_minutes(api):
    acc = await api.account()
    text = " ".join(["The committee met on Tuesday to review the budget for the coming year."] * 11)  # ~36 s
    r = await tts(api, acc["apiKey"], text=text, json=True)
    assert r.status_code == 200, r.text
    meta = r.json()
    seconds = meta["durationMs"] / 1000
    assert seconds > 30  # so the charge must be more than one quantum
    assert meta["minutesUsed"] == billed(seconds) >= 1.0
    assert await api.minutes(acc["apiKey"]) == pytest.approx(10 - meta["minutesUsed"])
    assert [(u["status"], u["minutes"]) for u in await ledger(api, acc["id"])] == [("settled", meta["minutesUsed"])]


PROSE_26S = (  # 520 characters of ordinary prose: about 26 s with the bundled voice, so one 0.5-min quantum
    "The committee met on Tuesday morning to review the budget for the coming year. Several members raised "
    "concerns about the rising cost of maintenance, especially for the older buildings near the river. After a "
    "long discussion, they agreed to postpone the decision until the engineers had finished their inspection. "
    "Meanwhile, the library will extend its opening hours during the exam period, and the sports center will "
    "offer free classes for residents over sixty. Questions can be sent to the town office."
)


async def test_text_whose_audio_the_balance_covers_is_never_refused(api):
    """Issue 17: 0.5 min left and a text of 520 characters. A character-based worst case (52 s) refused it;
    its audio costs 0.5 min, so it is served and charged exactly that."""
    acc = await api.account(startingMinutes=0.5)
    r = await tts(api, acc["apiKey"], text=PROSE_26S, json=True)
    assert r.status_code == 200, r.text
    seconds = r.json()["durationMs"] / 1000
    assert 20 < seconds < 30, seconds
    assert r.json()["minutesUsed"] == 0.5 and await api.minutes(acc["apiKey"]) == 0
    assert [(u["status"], u["minutes"]) for u in await ledger(api, acc["id"])] == [("settled", 0.5)]


async def test_digits_are_charged_their_real_duration_or_refused(api):
    """Issue 17/15: 240 digits read as numbers ("one hundred twenty-three thousand ...") are 68 s of audio
    in 280 characters. From a 1-minute account, two such texts must each be charged their real duration
    (1.5 min, which the account cannot pay) or refused with nothing charged; never 0.5 min each for 68 s."""
    acc = await api.account(startingMinutes=1)
    key = acc["apiKey"]
    text = "123456 " * 40
    answers = [await tts(api, key, text=text, json=True), await tts(api, key, text=text)]
    served = []
    for r in answers:
        if r.status_code == 200:
            meta = r.json() if r.headers["content-type"].startswith("application/json") else (
                await api.client.get(f"/speeches/{r.headers['x-speech-id']}", headers={"x-api-key": key})).json()
            assert meta["minutesUsed"] == billed(meta["durationMs"] / 1000), meta
            served.append(meta["minutesUsed"])
        else:
            assert (r.status_code, r.json()["error"]["code"]) == (402, "insufficient_minutes"), r.text
    assert await api.minutes(key) == pytest.approx(1 - sum(served))
    rows = await ledger(api, acc["id"])
    assert sorted(u["minutes"] for u in rows if u["status"] == "settled") == sorted(served)
    assert all(u["status"] in ("settled", "refunded") for u in rows)
    listed = (await api.client.get("/speeches", headers={"x-api-key": key})).json()["speeches"]
    assert len(listed) == len(served) and speech_files(api.settings.data_dir) == sorted(f"{s['id']}.mp3" for s in listed)


async def test_json_mode_returns_metadata_and_a_working_audio_path(api):
    key = (await api.account())["apiKey"]
    r = await tts(api, key, text=THREE_SENTENCES, json="true")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    meta = r.json()
    assert meta["id"].startswith("sp_")
    assert meta["audioPath"] == f"/speeches/{meta['id']}?download=1"
    assert meta["text"] == THREE_SENTENCES
    assert meta["characters"] == len(THREE_SENTENCES)
    assert meta["words"] == len(THREE_SENTENCES.split())
    assert meta["minutesUsed"] == 0.5
    assert meta["engine"] == "piper:en_US-joe-medium"
    audio = (await api.client.get(meta["audioPath"], headers={"x-api-key": key})).content
    assert duration_s(audio) == pytest.approx(meta["durationMs"] / 1000, abs=0.15)
    assert meta["sizeBytes"] == len(audio)


async def test_speed_voice_override_and_the_accounts_tts_key_choose_how_it_sounds(api):
    normal = (await api.account())["apiKey"]
    text = "We will walk to the park after lunch."

    async def spoken_ms(key: str, **extra) -> tuple[int, str]:  # type: ignore[no-untyped-def]
        r = await tts(api, key, text=text, json=True, **extra)
        assert r.status_code == 200, r.text
        return r.json()["durationMs"], r.json()["engine"]

    base_ms, base_engine = await spoken_ms(normal)
    assert base_engine == "piper:en_US-joe-medium"
    slow_ms, _ = await spoken_ms(normal, speed=0.5)
    assert slow_ms > 1.5 * base_ms
    fast_ms, _ = await spoken_ms(normal, speed=2)
    assert fast_ms < 0.7 * base_ms
    for bad in (0.1, 5, "fast", True):
        r = await tts(api, normal, text=text, speed=bad)
        assert r.status_code == 400 and "speed" in r.json()["error"]["message"]

    # `voice` overrides the account's engine choice.
    over_ms, over_engine = await spoken_ms(normal, voice=SLOW_VOICE)
    assert over_engine == f"piper:{SLOW_VOICE}"
    assert over_ms > 1.5 * base_ms

    # The account's ttsApiKey picks the voice when the request names none.
    chosen = (await api.account(ttsApiKey=f"piper:{SLOW_VOICE}"))["apiKey"]
    acc_ms, acc_engine = await spoken_ms(chosen)
    assert acc_engine == f"piper:{SLOW_VOICE}" and acc_ms > 1.5 * base_ms

    # Unknown voices are refused clearly, whatever they look like; nothing is charged.
    for voice in ("xx_XX-nobody-low", "../../speech7.db", "piper:en_US-missing"):
        r = await tts(api, normal, text=text, voice=voice)
        assert r.status_code == 400, (voice, r.text)
        err = r.json()["error"]
        assert err["code"] == "unknown_voice"
        assert "not installed" in err["message"] and "en_US-joe-medium" in err["message"]
    assert (await tts(api, normal, text=text, voice=7)).status_code == 400

    # An account with TTS switched off gets 403, with or without a voice.
    off = (await api.account(ttsApiKey="off"))["apiKey"]
    for extra in ({}, {"voice": "en_US-joe-medium"}):
        r = await tts(api, off, text=text, **extra)
        assert r.status_code == 403 and r.json()["error"]["code"] == "tts_not_configured"
    assert await api.minutes(off) == 10


async def test_client_gone_before_the_audio_starts_gets_its_minutes_back(api):
    """A server that reports the lost client when the response starts (ASGI 2.4 servers raise OSError from
    send): the audio stream never begins, so only the response's own cleanup can return the reservation."""
    acc = await api.account()
    body = json.dumps({"apiKey": acc["apiKey"], "text": HELLO}).encode()
    requests = [{"type": "http.request", "body": body, "more_body": False}]
    never = asyncio.Event()

    async def receive() -> dict:
        if requests:
            return requests.pop()
        await never.wait()  # the client says nothing more; the app learns of its loss from send()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        raise OSError("connection reset by peer")

    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": "/tts", "raw_path": b"/tts", "root_path": "",
        "query_string": b"", "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 50000), "server": ("test", 80),
    }
    with pytest.raises(OSError):
        await api.app(scope, receive, send)
    assert [u["status"] for u in await ledger(api, acc["id"])] == ["refunded"]
    assert await api.minutes(acc["apiKey"]) == 10
    assert speech_files(api.settings.data_dir) == []


# ---------------------------------------------------------------- GET /speeches


async def test_history_newest_first_with_limit_fields_and_isolation(api):
    alice, bob = await api.account(), await api.account()
    ak, bk = alice["apiKey"], bob["apiKey"]
    long_text = "This sentence is here to make the text long. " * 6  # > 200 characters
    texts = ["First speech.", "Second speech.", long_text.strip()]
    ids = []
    for text in texts:
        r = await tts(api, ak, text=text, json=True)
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])

    listed = (await api.client.get("/speeches", headers={"x-api-key": ak})).json()["speeches"]
    assert [s["id"] for s in listed] == ids[::-1]
    newest = listed[0]
    assert newest["text"].startswith("This sentence is here") and len(newest["text"]) < len(texts[2])
    assert newest["characters"] == len(texts[2])
    assert newest["words"] == len(texts[2].split())
    for s in listed:
        assert s["durationMs"] > 500 and s["minutesUsed"] == 0.5
        assert s["audioPath"] == f"/speeches/{s['id']}?download=1"
        assert s["createdAt"].endswith("Z") and isinstance(s["timestamp"], int)
    assert [s["timestamp"] for s in listed] == sorted((s["timestamp"] for s in listed), reverse=True)

    limited = await api.client.get("/speeches", params={"limit": 2, "apiKey": ak})
    assert [s["id"] for s in limited.json()["speeches"]] == ids[:0:-1]
    assert (await api.client.get("/speeches?limit=many", headers={"x-api-key": ak})).status_code == 400

    detail = (await api.client.get(f"/speeches/{ids[2]}", params={"apiKey": ak})).json()
    assert detail["text"] == texts[2]  # the details carry the whole text

    # Bob sees none of it: his list is empty and Alice's ids are unknown to him.
    assert (await api.client.get("/speeches", headers={"x-api-key": bk})).json()["speeches"] == []
    for suffix in ("", "?download=1"):
        r = await api.client.get(f"/speeches/{ids[0]}{suffix}", headers={"x-api-key": bk})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "path",
    [
        "/speeches/sp_00000000000000000000",
        "/speeches/sp_00000000000000000000?download=1",
        "/speeches/..%2Fspeech7.db?download=1",
        "/speeches/%2e%2e?download=1",
        "/speeches/speech7.db?download=1",
        "/speeches/sp_..%2F..%2Fspeech7?download=1",
    ],
)
async def test_unknown_ids_and_path_tricks_are_404(api, path):
    key = (await api.account())["apiKey"]
    assert (await tts(api, key, text=HELLO)).status_code == 200
    r = await api.client.get(path, headers={"x-api-key": key})
    assert r.status_code == 404, r.text
    assert b"SQLite" not in r.content


async def test_stored_file_name_variants_of_a_real_id_are_404(api):
    key = (await api.account())["apiKey"]
    speech_id = (await tts(api, key, text=HELLO)).headers["x-speech-id"]
    for variant in (f"{speech_id}.mp3", f"{speech_id}.mp3.part", speech_id.upper(), f" {speech_id}"):
        r = await api.client.get(f"/speeches/{variant}", params={"download": 1}, headers={"x-api-key": key})
        assert r.status_code == 404, variant
    assert (await api.client.get(f"/speeches/{speech_id}", headers={"x-api-key": key})).status_code == 200


# ---------------------------------------------------------------- streaming over a real socket


def live_ledger(live_server, account_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{live_server.url}/accounts/{account_id}/usage", headers={"x-api-key": ADMIN_KEY}, timeout=30)
    return [u for u in r.json()["usage"] if u["kind"] == "tts"]


def wait_for(condition, what: str, attempts: int = 600) -> None:  # type: ignore[no-untyped-def]
    """Bounded polling on a condition (each attempt is a blocking HTTP call or a short event wait)."""
    pause = threading.Event()
    for _ in range(attempts):
        if condition():
            return
        pause.wait(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_first_bytes_arrive_while_later_sentences_are_not_synthesized(live_server, gated_voice):
    acc = live_server.account()
    key = acc["apiKey"]
    body = {"apiKey": key, "text": THREE_SENTENCES}
    received = bytearray()
    with httpx.Client(timeout=VOICE_GATE_TIMEOUT_S + 60) as client:
        with client.stream("POST", f"{live_server.url}/tts", json=body) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "audio/mpeg"
            speech_id = r.headers["x-speech-id"]
            chunks = r.iter_bytes()
            received += next(chunks)
            # The client holds audio while only the first sentence exists: the server streams per sentence.
            assert not gated_voice.gate_timed_out
            assert gated_voice.synthesized == ["The weather is sunny today."]
            # Minutes are reserved before synthesis ends; nothing is stored yet.
            assert [u["status"] for u in live_ledger(live_server, acc["id"])] == ["reserved"]
            assert live_server.minutes(key) < 10
            assert httpx.get(f"{live_server.url}/speeches", headers={"x-api-key": key}).json()["speeches"] == []
            gated_voice.gate.set()
            for chunk in chunks:
                received += chunk
    assert len(gated_voice.synthesized) == 3
    seconds = duration_s(bytes(received))
    assert 3.0 < seconds < 12.0

    stored = httpx.get(f"{live_server.url}/speeches/{speech_id}?download=1", headers={"x-api-key": key})
    assert stored.status_code == 200 and stored.content == bytes(received)
    rows = live_ledger(live_server, acc["id"])
    assert [(u["status"], u["minutes"]) for u in rows] == [("settled", 0.5)]
    assert live_server.minutes(key) == 9.5


def test_client_disconnect_mid_stream_stores_and_charges_nothing(live_server, gated_voice):
    acc = live_server.account()
    key = acc["apiKey"]
    tts_service = live_server.services.tts
    with httpx.Client(timeout=VOICE_GATE_TIMEOUT_S + 60) as client:
        with client.stream("POST", f"{live_server.url}/tts", json={"apiKey": key, "text": THREE_SENTENCES}) as r:
            assert r.status_code == 200
            speech_id = r.headers["x-speech-id"]
            assert next(r.iter_bytes())
            assert [u["status"] for u in live_ledger(live_server, acc["id"])] == ["reserved"]
        # Leaving the block mid-body closes the connection.
    # The server notices while synthesis is still held at the second sentence, then lets it go.
    wait_for(lambda: tts_service.streams_in_progress == 0, "the server to notice the disconnect")
    assert len(gated_voice.synthesized) == 1
    gated_voice.gate.set()
    wait_for(lambda: live_ledger(live_server, acc["id"])[0]["status"] != "reserved", "the refund")
    rows = live_ledger(live_server, acc["id"])
    assert [u["status"] for u in rows] == ["refunded"]
    assert live_server.minutes(key) == 10
    assert httpx.get(f"{live_server.url}/speeches", headers={"x-api-key": key}).json()["speeches"] == []
    r = httpx.get(f"{live_server.url}/speeches/{speech_id}?download=1", headers={"x-api-key": key})
    assert r.status_code == 404
    wait_for(
        lambda: not [n for n in speech_files(live_server.settings.data_dir) if n.startswith(speech_id)],
        "the partial file to be removed",
    )
    # The cancelled synthesis stops after the sentence in progress instead of running to the end.
    assert len(gated_voice.synthesized) <= 2
