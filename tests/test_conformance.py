"""Conformance with the Speech7 API reference (../shared/spec/speech7-api-reference.txt): every request example
in it, sent as written against one live server (uvicorn, real models), with only the host and the keys
substituted; every response field it documents checked for name, type and presence. A comment above each case
quotes the section it comes from.

How curl sends what the examples say: `-d '...'` sends the body byte for byte with the header given; `-F
"audio=@sample.wav"` sends the file as `application/octet-stream` (curl types only a few extensions, none of
them media); `-F "name=value"` is a plain form field; `-L` follows redirects; `-o` keeps the body.

Keys: the reference's `POST /accounts` body creates the account whose key stands for `YOUR_KEY` /
`your_api_key` (its provider keys are placeholders, so the server's default engines serve it: Whisper base,
which the realtime example's `language_hints: ["sl"]` needs). File transcription examples run on an account
whose `sttApiKey` names Whisper tiny.en instead, to keep the module fast; nothing they check needs another
language.

The quick test `curl -X POST .../stt -F "audio=@sample.mp3" | jq .text` sends no key. The hosted API requires
one on every endpoint except account creation by an admin, so here as there it is refused: 401 with the JSON
error body `{"error": {"code": "unauthorized", "message"}}`, which has no `text` (jq prints `null`).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from scipy.signal import resample_poly

from engines.mp3 import decode_mp3
from tests.conftest import ADMIN_KEY, LiveServer
from tests.realtime_helpers import Server, encode, frames, load, run_session
from tests.test_subtitle_api import check_cues, parse_subtitles

pytestmark = pytest.mark.slow

CURL_FILE_TYPE = "application/octet-stream"  # what curl -F name=@file sends for .wav, .mp3, .mp4
POLL_TIMEOUT_S = 180.0

# Programmatic account creation: "POST /accounts { ... }" (the body as written; the admin key substituted).
REFERENCE_ACCOUNT = {
    "apiKey": "admin_api_key",
    "startingMinutes": 60,
    "minutes": 60,
    "isAdmin": True,
    "ttsApiKey": "your-tts-provider-key",
    "sttApiKey": "your-stt-provider-key",
    "companyId": "cmp_demo_123",
    "companyName": "Acme",
    "contactName": "Jane Doe",
    "contactPhone": "+1 555 555 5555",
    "companyAddress": "123 Example St",
    "companyVATId": "EU123456789",
    "companyRegistrationNumber": "HRB 98765",
    "dateAddedCompany": "2025-11-21",
    "timeAddedCompany": "09:00:00",
}

# Realtime STT (WebSocket): "// First message must be JSON config (no api_key needed)" (comments dropped).
REALTIME_CONFIG = {
    "audio_format": "auto",
    "language_hints": ["sl"],
    "enable_speaker_diarization": True,
    "enable_language_identification": True,
    "enable_endpoint_detection": True,
    "transcriptionTerms": ["Speech7", "Soniox"],
    "translationTerms": {"račun": "invoice"},
}
TWO_WAY = {"languageA": "en", "languageB": "sl"}  # "// Optional: turn on two-way translation ..."


class Conformance:
    """The live server, the admin key, and the keys the examples use (made once per module)."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=300)
        self.created: dict = {}
        self.key = ""  # YOUR_KEY: the account the reference body creates
        self.files_key = ""  # YOUR_API_KEY for the file transcription examples (Whisper tiny.en)

    def post(self, path: str, body: str) -> httpx.Response:
        """curl -X POST URL -H "Content-Type: application/json" -d 'BODY'"""
        return self.http.post(path, content=body.encode(), headers={"Content-Type": "application/json"})

    def form(self, path: str, key: str | None, media: Path | tuple[str, bytes], **fields: str) -> httpx.Response:
        """curl -X POST URL [-H "x-api-key: KEY"] -F "audio=@FILE" [-F "name=value" ...]"""
        name, data = (media.name, media.read_bytes()) if isinstance(media, Path) else media
        headers = {"x-api-key": key} if key else {}
        return self.http.post(path, headers=headers, files={"audio": (name, data, CURL_FILE_TYPE)}, data=fields)


@pytest.fixture(scope="module")
def ref(live_server: LiveServer) -> Iterator[Conformance]:
    c = Conformance(live_server)
    r = c.post("/accounts", json.dumps({**REFERENCE_ACCOUNT, "apiKey": ADMIN_KEY}))
    assert r.status_code == 201, r.text
    c.created, c.key = r.json(), r.json()["apiKey"]
    c.files_key = live_server.account(sttApiKey="whisper:tiny.en", startingMinutes=30)["apiKey"]
    yield c
    c.http.close()


def assert_fields(obj: dict, types: dict[str, type | tuple[type, ...]]) -> None:
    for name, kind in types.items():
        assert name in obj, (name, obj)
        assert isinstance(obj[name], kind), (name, obj[name])


def speech_seconds(mp3: bytes) -> float:
    pcm, rate = decode_mp3(mp3)
    return pcm.size / rate


# ---------------------------------------------------------------- accounts and capabilities


def test_create_account_with_the_reference_body(ref: Conformance) -> None:
    # Programmatic account creation: "If you have an API key flagged as admin (isAdmin=true), call:
    # POST /accounts { "apiKey": "admin_api_key", ..., "sttApiKey": "your-stt-provider-key", ... }"
    body = ref.created
    assert isinstance(body["apiKey"], str) and body["apiKey"]
    for name, value in REFERENCE_ACCOUNT.items():
        if name in ("apiKey", "ttsApiKey", "sttApiKey"):
            continue
        assert body[name] == value, name
    # Provider keys are kept but never shown back whole.
    assert body["sttApiKey"] == "your…" and body["ttsApiKey"] == "your…"
    listed = ref.http.get("/accounts", headers={"x-api-key": ADMIN_KEY}).text
    assert "your-stt-provider-key" not in listed and "your-tts-provider-key" not in listed
    # "Admin endpoints require ... an admin API key (set isAdmin=true when creating the account)."
    assert ref.http.get("/accounts", headers={"x-api-key": body["apiKey"]}).status_code == 200


def test_account_quick_test(ref: Conformance) -> None:
    # Programmatic account creation, "Quick test: curl -X POST https://app.speech7.com/accounts -H
    # "Content-Type: application/json" -d '{"apiKey":"ADMIN_KEY","startingMinutes":30,"companyName":"Test
    # Co","contactName":"Jane"}'"
    r = ref.post("/accounts", f'{{"apiKey":"{ADMIN_KEY}","startingMinutes":30,"companyName":"Test Co","contactName":"Jane"}}')
    assert r.status_code == 201, r.text
    assert_fields(r.json(), {"apiKey": str, "id": str, "minutes": float, "isAdmin": bool})
    assert (r.json()["minutes"], r.json()["companyName"], r.json()["isAdmin"]) == (30.0, "Test Co", False)


def test_capabilities_say_whether_tts_and_stt_are_configured(ref: Conformance) -> None:
    # Authentication: "Capabilities depend on provider keys saved on the account. Use GET
    # https://app.speech7.com/account/capabilities with your API key to see if TTS and STT are configured."
    for how in ({"headers": {"x-api-key": ref.key}}, {"params": {"apiKey": ref.key}}):
        r = ref.http.get("/account/capabilities", **how)  # type: ignore[arg-type]
        assert r.status_code == 200, r.text
        caps = r.json()
        for capability in ("stt", "tts"):
            assert_fields(caps[capability], {"configured": bool, "engine": str, "model": str, "spec": str})
            assert caps[capability]["configured"] is True and caps[capability]["source"] == "default"
        assert caps["stt"]["spec"] == "whisper:base" and caps["tts"]["spec"] == "piper:en_US-joe-medium"


# ---------------------------------------------------------------- POST /tts, GET /speeches


def test_tts_json_example_streams_mp3(ref: Conformance) -> None:
    # POST /tts: "Generate speech from text. Streams an MP3 response. ... POST https://app.speech7.com/tts
    # Content-Type: application/json { "apiKey": "your_api_key", "text": "Hello from Speech7" }"
    r = ref.post("/tts", f'{{\n"apiKey": "{ref.key}",\n"text": "Hello from Speech7"\n}}')
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/mpeg"
    assert 0.7 < speech_seconds(r.content) < 5


@pytest.fixture(scope="module")
def out_mp3(ref: Conformance) -> tuple[str, bytes]:
    # POST /tts, "Quick test: curl -o out.mp3 -X POST https://app.speech7.com/tts -H "Content-Type:
    # application/json" -d '{"apiKey":"YOUR_KEY","text":"Hello world from the API."}'"
    r = ref.post("/tts", f'{{"apiKey":"{ref.key}","text":"Hello world from the API."}}')
    assert r.status_code == 200 and r.headers["content-type"] == "audio/mpeg", r.text
    return r.headers["x-speech-id"], r.content


def test_tts_quick_test_and_json_true(ref: Conformance, out_mp3: tuple[str, bytes]) -> None:
    # (the quick test itself is the `out_mp3` fixture, shared with the examples that use its file)
    assert 0.8 < speech_seconds(out_mp3[1]) < 5
    # POST /tts: 'Add "json": true to return JSON metadata instead of streaming audio (fields: audioPath and id).'
    r = ref.post("/tts", f'{{"apiKey":"{ref.key}","text":"Hello world from the API.","json":true}}')
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text
    meta = r.json()
    assert_fields(meta, {"audioPath": str, "id": str})
    audio = ref.http.get(meta["audioPath"], headers={"x-api-key": ref.key})
    assert audio.status_code == 200 and speech_seconds(audio.content) > 0.8


def test_speeches_list_newest_first(ref: Conformance, out_mp3: tuple[str, bytes]) -> None:
    # GET /speeches: "List recent speeches for your API key (newest first). GET
    # https://app.speech7.com/speeches?limit=50 Headers: x-api-key: your_api_key. Returns speeches array with
    # id, timestamps, usage stats, and audioPath. Use the IDs with GET /speeches/:speechId."
    r = ref.http.get("/speeches?limit=50", headers={"x-api-key": ref.key})
    assert r.status_code == 200, r.text
    speeches = r.json()["speeches"]
    assert isinstance(speeches, list) and out_mp3[0] in [s["id"] for s in speeches]
    for s in speeches:
        assert_fields(s, {"id": str, "createdAt": str, "timestamp": int, "characters": int, "words": int,
                          "durationMs": int, "minutesUsed": float, "audioPath": str})
    assert [s["timestamp"] for s in speeches] == sorted((s["timestamp"] for s in speeches), reverse=True)
    # GET /speeches, "Quick test: curl -H "x-api-key: YOUR_KEY" https://app.speech7.com/speeches"
    quick = ref.http.get("/speeches", headers={"x-api-key": ref.key})
    assert quick.status_code == 200 and [s["id"] for s in quick.json()["speeches"]] == [s["id"] for s in speeches]


def test_speech_details_and_download(ref: Conformance, out_mp3: tuple[str, bytes]) -> None:
    # GET /speeches/:speechId: "Fetch details for a specific speech. Add ?download=1 to stream the stored MP3.
    # GET https://app.speech7.com/speeches/file001-123456?apiKey=your_api_key"
    unknown = ref.http.get("/speeches/file001-123456", params={"apiKey": ref.key})  # the example's own id
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    listed = ref.http.get("/speeches", headers={"x-api-key": ref.key}).json()["speeches"]
    quick = next(s for s in listed if s["id"] == out_mp3[0])
    r = ref.http.get(f"/speeches/{quick['id']}?apiKey={ref.key}")
    assert r.status_code == 200, r.text
    assert_fields(r.json(), {"id": str, "text": str, "durationMs": int, "minutesUsed": float, "audioPath": str})
    # "Quick test: use an ID from /speeches then curl -L
    # "https://app.speech7.com/speeches/ID?download=1&apiKey=YOUR_KEY" -o speech.mp3"
    d = ref.http.get(f"/speeches/{quick['id']}?download=1&apiKey={ref.key}", follow_redirects=True)
    assert d.status_code == 200 and d.headers["content-type"] == "audio/mpeg"
    assert d.content == out_mp3[1]  # the stored MP3 is the one that was streamed


# ---------------------------------------------------------------- POST /stt


def test_stt_example_with_dictionaries(ref: Conformance, testdata: Path) -> None:
    # POST /stt: 'curl -X POST https://app.speech7.com/stt -H "x-api-key: YOUR_API_KEY" -F "audio=@sample.wav"
    # -F "transcriptionTerms=[\"Speech7\",\"Soniox\"]" -F "translationTerms={\"račun\":\"invoice\"}"'
    # "Responses include text, speakers, and transcript entries." "STT usage consumes minutes ... (quantized to
    # 0.5-minute increments)." Dictionaries are "merged into context.terms" / "context.translation_terms".
    sample = testdata / "en" / "LJ001-0002.wav"  # "in being comparatively modern."
    r = ref.form("/stt", ref.files_key, sample, transcriptionTerms='["Speech7","Soniox"]',
                 translationTerms='{"račun":"invoice"}')
    assert r.status_code == 200, r.text
    body = r.json()
    assert_fields(body, {"text": str, "speakers": list, "transcript": list, "minutesUsed": float,
                         "durationMs": int, "context": dict})
    assert "modern" in body["text"].lower() and body["minutesUsed"] == 0.5
    for entry in body["transcript"]:
        assert_fields(entry, {"transcript": str, "text": str, "durationMs": int})
    assert body["context"]["terms"] == ["Speech7", "Soniox"]
    assert body["context"]["translation_terms"] == [{"source": "račun", "target": "invoice"}]
    # 'Add json=true to get the structured transcript array: [{ transcript, text, durationMs }].'
    r = ref.form("/stt", ref.files_key, sample, json="true")
    assert r.status_code == 200 and isinstance(r.json(), list) and r.json(), r.text
    for entry in r.json():
        assert_fields(entry, {"transcript": str, "text": str, "durationMs": int})


def test_stt_speaker_labels(ref: Conformance, testdata: Path) -> None:
    # POST /stt: "enable it by sending enableSpeakerDiarization=true. You can also override speaker labels by
    # passing speaker1Label, speaker2Label, ... (e.g., speaker1Label=John). These labels are used in both the
    # diarized text and the speakers array in the response."
    r = ref.form("/stt", ref.files_key, testdata / "en" / "LJ001-0002.wav",
                 enableSpeakerDiarization="true", speaker1Label="John")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["label"] for s in body["speakers"]] == ["John"]  # one reader
    assert body["text"].startswith("John: ") and all(e["transcript"].startswith("John: ") for e in body["transcript"])


def test_stt_quick_test_without_a_key_is_refused(ref: Conformance, out_mp3: tuple[str, bytes]) -> None:
    # POST /stt, 'Quick test (text only): curl -X POST https://app.speech7.com/stt -F "audio=@sample.mp3" |
    # jq .text' -- no key is sent; see the module docstring for why this is a 401 (and jq prints null).
    r = ref.form("/stt", None, ("sample.mp3", out_mp3[1]))
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "unauthorized" and "text" not in r.json()
    tmp = Path(ref.server.settings.data_dir) / "tmp"
    assert [p for p in tmp.rglob("*") if p.is_file()] == []  # the refused upload left nothing behind (tmp/<lease>/)
    # The same command with the key (-H "x-api-key: ...") answers the text.
    r = ref.form("/stt", ref.files_key, ("sample.mp3", out_mp3[1]))
    assert r.status_code == 200 and "world" in r.json()["text"].lower(), r.text


# ---------------------------------------------------------------- POST /subtitle and the async jobs


def test_subtitle_example(ref: Conformance, testdata: Path) -> None:
    # POST /subtitle: 'curl -X POST https://app.speech7.com/subtitle -H "x-api-key: YOUR_API_KEY" -F
    # "audio=@sample.mp4" -o subtitles.srt' "The response is an SRT file download."
    video = testdata / "video" / "nasa_13013.mp4"
    r = ref.form("/subtitle", ref.files_key, video)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-subrip")
    assert r.headers["content-disposition"].startswith("attachment")
    cues = parse_subtitles(r.text)
    check_cues(cues, 70, 2)  # "maxCharsPerLine (default 70 ...) and maxLines (default 2 ...)"
    assert "telescope" in r.text.lower()
    # "Optional formatting: maxCharsPerLine (default 70, min 30, max 120) and maxLines (default 2, min 1, max 4)"
    narrow = ref.form("/subtitle", ref.files_key, video, maxCharsPerLine="30", maxLines="1")
    assert narrow.status_code == 200, narrow.text
    check_cues(parse_subtitles(narrow.text), 30, 1)


def test_async_subtitle_job(ref: Conformance, testdata: Path) -> None:
    # Async subtitles (large files): '# 1) Start a job (multipart upload) curl -X POST
    # https://app.speech7.com/subtitle/jobs -H "x-api-key: YOUR_API_KEY" -F "audio=@movie.mp4"
    # # Response: {"id":"sub_ab12...","status":"queued","statusUrl":"/subtitle/jobs/sub_ab12..."}'
    r = ref.form("/subtitle/jobs", ref.files_key, testdata / "video" / "nasa_13013.mp4")
    assert r.status_code == 200, r.text
    job = r.json()
    assert_fields(job, {"id": str, "status": str, "statusUrl": str})
    assert job["id"].startswith("sub_") and job["status"] == "queued"
    assert job["statusUrl"] == f"/subtitle/jobs/{job['id']}"
    # '# 2) Poll status (repeat until status=completed) curl -H "x-api-key: YOUR_API_KEY"
    # https://app.speech7.com/subtitle/jobs/sub_ab12...'
    pause = threading.Event()
    for _ in range(int(POLL_TIMEOUT_S / 0.25)):
        status = ref.http.get(job["statusUrl"], headers={"x-api-key": ref.files_key}).json()
        if status["status"] in ("completed", "failed"):
            break
        pause.wait(0.25)
    # "Status responses return minutesUsed, durationMs, and a downloadUrl when ready."
    assert status["status"] == "completed", status
    assert_fields(status, {"minutesUsed": float, "durationMs": int, "downloadUrl": str})
    assert status["minutesUsed"] == 0.5 and 12_900 < status["durationMs"] < 13_200
    # '# 3) Download SRT when ready curl -L -H "x-api-key: YOUR_API_KEY"
    # https://app.speech7.com/subtitle/jobs/sub_ab12.../file -o subtitles.srt'
    d = ref.http.get(f"/subtitle/jobs/{job['id']}/file", headers={"x-api-key": ref.files_key}, follow_redirects=True)
    assert d.status_code == 200 and d.headers["content-type"].startswith("application/x-subrip")
    check_cues(parse_subtitles(d.text), 70, 2)
    assert status["downloadUrl"] == f"/subtitle/jobs/{job['id']}/file"


# ---------------------------------------------------------------- WS /stt/realtime


@pytest.fixture(scope="module")
def webm_chunks(testdata: Path) -> list[bytes]:
    """What a browser's MediaRecorder sends: Opus in WebM, in chunks ("Opus WebM chunks or PCM")."""
    audio = load(testdata / "en" / "LJ001-0002.wav")  # "in being comparatively modern."
    return frames(encode(resample_poly(audio, 3, 1).astype("float32"), "webm", "libopus"), 4000)


def realtime(ref: Conformance, config: dict, chunks: list[bytes]):  # type: ignore[no-untyped-def]
    # Realtime STT (WebSocket): "wss://app.speech7.com/stt/realtime?apiKey=YOUR_KEY" ... "Send an empty frame
    # ("") to finalize and close."
    return run_session(Server(ref.server.app, ref.server.url), ref.key, config, chunks, end_frame="")


def check_tokens_and_finish(session) -> None:  # type: ignore[no-untyped-def]
    # "Final tokens include is_final. A finished: true message is sent before the server closes the connection."
    assert all("error_code" not in m for m in session.messages), session.messages[:1]
    assert session.messages[-1]["finished"] is True and session.close_code == 1000
    tokens = [t for m in session.messages for t in m["tokens"]]
    finals = [t for t in tokens if t["is_final"] and t["text"] != "<end>"]
    assert finals, session.messages
    for t in tokens:
        assert_fields(t, {"text": str, "is_final": bool, "start_ms": int, "end_ms": int})
    for t in finals:  # enable_speaker_diarization and enable_language_identification label each final word
        assert_fields(t, {"speaker": str, "language": str})


def test_realtime_reference_config(ref: Conformance, webm_chunks: list[bytes]) -> None:
    # Realtime STT (WebSocket): the first message as written, without the optional two-way keys; then "audio
    # frames as binary (e.g., Opus WebM chunks or PCM)".
    check_tokens_and_finish(realtime(ref, REALTIME_CONFIG, webm_chunks))


def test_realtime_two_way_reference_config(ref: Conformance, webm_chunks: list[bytes]) -> None:
    # Realtime STT (WebSocket): '// Optional: turn on two-way translation by sending both languageA and
    # languageB "languageA": "en", "languageB": "sl"' ... "When translation is enabled, each message includes
    # a translation summary: { "languageA": { "code": "sr", "finalText": ..., "nonFinalText": "" },
    # "languageB": { ... }, "type": "two_way_transcription" }"
    # No en->sl translation model is installed here: the session is accepted, serves what it can (English
    # speech is transcribed on pane A) and says first which direction is missing.
    session = realtime(ref, {**REALTIME_CONFIG, **TWO_WAY}, webm_chunks)
    check_tokens_and_finish(session)  # the session is accepted and ends normally
    assert session.messages[0]["missingDirections"] == ["en->sl"]
    updates = [m for m in session.messages if not m.get("finished")]
    for m in updates:
        assert m["type"] == "two_way_transcription"
        for pane, code in (("languageA", "en"), ("languageB", "sl")):
            assert_fields(m[pane], {"code": str, "finalText": str, "nonFinalText": str})
            assert m[pane]["code"] == code
    assert re.search(r"modern", updates[-1]["languageA"]["finalText"], re.I), updates[-1]
