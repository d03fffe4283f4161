"""The OpenAI-compatible /v1 audio API, driven by the official `openai` Python SDK against a live uvicorn server
with the real models (Whisper tiny.en, base where translation needs a multilingual model, the bundled Piper
voice): what a user of LangChain, Open WebUI or their own SDK code sees.

Streaming claims are checked as order, not time: the decoder (or the voice) is held back at a gate, and the
test looks at what the client already has while the gate is closed.
"""

from __future__ import annotations

import io
import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import openai
import pytest
from openai.types.audio import Transcription
from scipy.signal import resample_poly

from engines.audio import decode_file
from engines.types import SAMPLE_RATE, SttRequest
from engines.wer import wer
from tests.conftest import ADMIN_KEY
from tests.stt_helpers import encode

pytestmark = pytest.mark.slow

GATE_TIMEOUT_S = 60.0  # only reached when the server does not stream; a passing run never waits on it
SPOKEN = "The quick brown fox jumps over the lazy dog. Then it runs away into the forest."
# One short sentence per speech format (Harvard sentences), each with a word only it contains.
SENTENCES = {
    "mp3": ("The birch canoe slid on the smooth planks.", "planks"),
    "opus": ("Glue the sheet to the dark blue background.", "background"),
    "aac": ("It is easy to tell the depth of a well.", "depth"),
    "flac": ("These days a chicken leg is a rare dish.", "chicken"),
    "wav": ("Rice is often served in round bowls.", "rice"),
    "pcm": ("The juice of lemons makes fine punch.", "lemons"),
}


def client(live, key: str, **kw: Any) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(api_key=key, base_url=f"{live.url}/v1", timeout=300, **{"max_retries": 0, **kw})


def usage(live, account_id: str) -> list[tuple[str, str, float]]:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{live.url}/accounts/{account_id}/usage", headers={"x-api-key": ADMIN_KEY}, timeout=30)
    assert r.status_code == 200, r.text
    return [(u["kind"], u["status"], u["minutes"]) for u in r.json()["usage"] if u["kind"] != "credit"]


def reference(testdata: Path, name: str) -> str:
    return (testdata / f"{name}.txt").read_text("utf-8")


def cue_text(subtitles: str) -> str:
    """The words of an SRT/WebVTT file: every line that is not a header, an index or a timing line."""
    keep = [ln for ln in subtitles.splitlines()
            if ln.strip() and ln.strip() != "WEBVTT" and not ln.strip().isdigit() and "-->" not in ln]
    return " ".join(keep)


def cue_times(subtitles: str) -> list[tuple[str, str]]:
    return re.findall(r"(\d\d:\d\d:\d\d[,.]\d{3}) --> (\d\d:\d\d:\d\d[,.]\d{3})", subtitles)


# ---------------------------------------------------------------- transcription and translation


def test_transcription_in_every_response_format(live_server, testdata):
    acc = live_server.account(sttApiKey="whisper:tiny.en")
    sdk = client(live_server, acc["apiKey"])
    jfk, ref = testdata / "en" / "jfk.flac", reference(testdata, "en/jfk")

    def ask(fmt: str) -> Any:
        extra: dict[str, Any] = {"timestamp_granularities": ["word", "segment"]} if fmt == "verbose_json" else {}
        if fmt == "prompted":  # Whisper continues the prompt's style: lower case, no punctuation
            fmt, extra = "json", {"prompt": "and so my fellow americans ask not all lower case no punctuation"}
        return sdk.audio.transcriptions.create(file=jfk, model="whisper-1", response_format=fmt, **extra)  # type: ignore[call-overload]

    formats = ["json", "text", "srt", "vtt", "verbose_json", "prompted"]
    # Concurrent, as clients are (the server batches them), within the account's 4 uploads at once
    # (S7_MAX_UPLOADS_PER_ACCOUNT; a fifth would get 429).
    with ThreadPoolExecutor(4) as pool:
        out = dict(zip(formats, pool.map(ask, formats), strict=True))

    assert isinstance(out["json"], Transcription)
    assert wer(ref, out["json"].text) < 0.15, out["json"].text
    assert out["json"].usage.seconds == 11

    assert isinstance(out["text"], str) and out["text"].endswith("\n")
    assert wer(ref, out["text"]) < 0.15

    srt, vtt = out["srt"], out["vtt"]
    assert srt.startswith("1\n") and "," in cue_times(srt)[0][0]
    assert vtt.startswith("WEBVTT") and "." in cue_times(vtt)[0][0]
    for sub in (srt, vtt):
        times = cue_times(sub)
        assert len(times) >= 2 and all(a < b for a, b in times) and sorted(times) == times
        assert wer(ref, cue_text(sub)) < 0.15, sub

    verbose = out["verbose_json"]
    assert (verbose.language, verbose.duration) == ("en", 11.0)
    assert wer(ref, verbose.text) < 0.15
    assert verbose.segments and [s.id for s in verbose.segments] == list(range(len(verbose.segments)))
    for s in verbose.segments:
        assert 0.0 <= s.start < s.end <= 11.0 and s.text.strip() and s.avg_logprob <= 0.0 and s.temperature == 0.0
    words = verbose.words
    assert words and [w.start for w in words] == sorted(w.start for w in words)
    assert all(w.start <= w.end <= 11.0 for w in words)
    assert wer(ref, " ".join(w.word for w in words)) < 0.15

    prompted = out["prompted"].text
    assert wer(ref, prompted) < 0.15 and prompted == prompted.lower() and "," not in prompted, prompted
    assert any(c.isupper() for c in out["json"].text)  # ... which the unprompted transcript does not

    # Six requests of 11 s: six 0.5-minute quanta from the same pool as the Speech7 API.
    assert usage(live_server, acc["id"]) == [("stt", "settled", 0.5)] * 6
    assert live_server.minutes(acc["apiKey"]) == 7.0


def test_translation_to_english_and_models_that_cannot(live_server, testdata):
    acc = live_server.account()  # the server default, whisper:base, a multilingual model
    sdk = client(live_server, acc["apiKey"])
    german = testdata / "de" / "recorded_sample_01.wav"  # "Das Teilen eines Benutzerkontos ist strengstens ..."
    result = sdk.audio.translations.create(file=german, model="whisper-1", response_format="verbose_json")
    assert (result.task, result.language) == ("translate", "de")  # type: ignore[attr-defined]
    heard = result.text.lower()
    assert "account" in heard and "benutzerkontos" not in heard and "ist" not in heard.split(), result.text

    # An English-only model named per request cannot translate: a clear error, and the minutes come back.
    with pytest.raises(openai.UnprocessableEntityError) as err:
        sdk.audio.translations.create(file=german, model="whisper:tiny.en")
    assert err.value.code == "engine_error" and "English-only" in err.value.message
    assert usage(live_server, acc["id"]) == [("stt", "refunded", 0.5), ("stt", "settled", 0.5)]
    assert live_server.minutes(acc["apiKey"]) == 9.5


@pytest.fixture
def gated_decoder(live_server, monkeypatch):  # type: ignore[no-untyped-def]
    """tiny.en's batch worker taking one chunk per batch, and holding the second batch until `gate` opens."""
    worker = live_server.services.models.stt("tiny.en").workers[0]
    monkeypatch.setattr(worker, "_limit", lambda _key: 1)
    original = worker._run_batch
    state = {"decoded": 0, "timed_out": False, "gate": threading.Event()}

    def decode(*args: Any, **kw: Any) -> Any:
        if state["decoded"] == 1 and not state["gate"].wait(GATE_TIMEOUT_S):
            state["timed_out"] = True
        result = original(*args, **kw)
        state["decoded"] += 1
        return result

    monkeypatch.setattr(worker, "_run_batch", decode)
    yield state
    state["gate"].set()  # never leave the model's worker waiting


def test_streaming_transcription_sends_deltas_while_later_chunks_decode(live_server, testdata, tmp_path, gated_decoder):
    clips = ["en/jfk.flac", "en/librispeech_2412-153948-0000.flac", "en/LJ001-0001.wav", "en/LJ001-0002.wav"]
    pause = np.zeros(SAMPLE_RATE // 2, np.float32)  # ~34 s of speech: two chunks for the decoder
    pcm = np.concatenate([part for c in clips for part in (decode_file(testdata / c), pause)])
    path = encode(pcm, tmp_path / "long.flac", "flac", "flac", SAMPLE_RATE)
    acc = live_server.account(sttApiKey="whisper:tiny.en")
    stream = client(live_server, acc["apiKey"]).audio.transcriptions.create(
        file=path, model="gpt-4o-transcribe", stream=True
    )
    events = iter(stream)
    first = next(events)
    # The first chunk's text is here while the second chunk is held before its decode: nothing is settled yet.
    assert first.type == "transcript.text.delta" and first.delta.strip()
    assert gated_decoder["decoded"] == 1 and not gated_decoder["timed_out"]
    assert usage(live_server, acc["id"]) == [("stt", "reserved", 1.0)]
    gated_decoder["gate"].set()
    rest = list(events)
    deltas = [first.delta] + [e.delta for e in rest if e.type == "transcript.text.delta"]
    assert [e.type for e in rest][-1] == "transcript.text.done" and len(deltas) >= 2
    done = rest[-1].text
    assert "".join(deltas) == done
    assert wer(" ".join(reference(testdata, c.rsplit(".", 1)[0]) for c in clips), done) < 0.2, done
    assert usage(live_server, acc["id"]) == [("stt", "settled", 1.0)]  # 36 s of audio: two quanta


# ---------------------------------------------------------------- speech


def decode_audio(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Any response format back to float mono PCM with PyAV (raw PCM needs its rate and layout told)."""
    options = {"sample_rate": "24000", "ch_layout": "mono"} if fmt == "pcm" else {}
    with av.open(io.BytesIO(data), format="s16le" if fmt == "pcm" else None, options=options) as c:
        frames = list(c.decode(c.streams.audio[0]))
    parts = [f.to_ndarray().reshape(-1) for f in frames]  # mono: packed and planar alike are one row
    pcm = np.concatenate([p / 32768.0 if p.dtype.kind == "i" else p for p in parts]).astype(np.float32)
    return pcm, frames[0].sample_rate


def to_16k(pcm: np.ndarray, rate: int) -> np.ndarray:
    g = math.gcd(rate, SAMPLE_RATE)
    return resample_poly(pcm, SAMPLE_RATE // g, rate // g).astype(np.float32)


FORMAT_RATES = {"mp3": 22050, "opus": 48000, "aac": 24000, "flac": 24000, "wav": 24000, "pcm": 24000}
CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                 "wav": "audio/wav", "pcm": "audio/pcm"}


def test_speech_in_every_format_decodes_to_its_words(live_server):
    acc = live_server.account()
    sdk = client(live_server, acc["apiKey"])
    stt = live_server.services.models.stt("tiny.en")
    voices = ["alloy", "en_US-joe-medium", "piper:en_US-joe-medium", "nova", "shimmer", "echo"]

    def speak(fmt: str, voice: str) -> tuple[str, bytes]:
        with sdk.audio.speech.with_streaming_response.create(
            model="tts-1", voice=voice, input=SENTENCES[fmt][0], response_format=fmt  # type: ignore[arg-type]
        ) as r:
            return r.headers["content-type"], r.read()

    responses = {fmt: speak(fmt, voice) for fmt, voice in zip(SENTENCES, voices, strict=True)}
    decoded = {fmt: decode_audio(data, fmt) for fmt, (_, data) in responses.items()}
    for fmt, (pcm, rate) in decoded.items():
        assert responses[fmt][0].startswith(CONTENT_TYPES[fmt]) and rate == FORMAT_RATES[fmt], fmt
        assert 1.0 < pcm.size / rate < 5.0, fmt
    # All six decoded back to back (~20 s, one Whisper window to hear them all); each sentence has a word of
    # its own, so every format must have carried its speech.
    gap = np.zeros(SAMPLE_RATE, np.float32)
    joined = np.concatenate([part for pcm, rate in decoded.values() for part in (to_16k(pcm, rate), gap)])
    heard = stt.transcribe(SttRequest(joined)).text
    assert wer(" ".join(text for text, _ in SENTENCES.values()), heard) < 0.2, heard
    for fmt, (_, word) in SENTENCES.items():
        assert word in heard.lower(), (fmt, heard)
    speeches = httpx.get(f"{live_server.url}/speeches", headers={"x-api-key": acc["apiKey"]}).json()["speeches"]
    assert {s["text"] for s in speeches} == {text for text, _ in SENTENCES.values()}
    assert usage(live_server, acc["id"]) == [("tts", "settled", 0.5)] * 6


def test_speech_streams_while_later_sentences_are_not_synthesized(live_server, gated_voice):
    acc = live_server.account()
    sdk = client(live_server, acc["apiKey"])
    with sdk.audio.speech.with_streaming_response.create(
        model="tts-1-hd", voice="onyx", input=SPOKEN + " A third sentence ends it.", response_format="flac"
    ) as r:
        chunks = r.iter_bytes()
        received = bytearray(next(chunks))
        assert gated_voice.synthesized == ["The quick brown fox jumps over the lazy dog."]
        assert usage(live_server, acc["id"]) == [("tts", "reserved", 0.5)]
        gated_voice.gate.set()
        for chunk in chunks:
            received += chunk
    assert len(gated_voice.synthesized) == 3 and not gated_voice.gate_timed_out
    pcm, rate = decode_audio(bytes(received), "flac")
    assert rate == 24000 and pcm.size / rate > 4.0
    assert usage(live_server, acc["id"]) == [("tts", "settled", 0.5)]


# ---------------------------------------------------------------- models, keys, balance, errors


def test_models_list_the_installed_engines_and_openai_names(live_server):
    sdk = client(live_server, live_server.account()["apiKey"])
    ids = [m.id for m in sdk.models.list()]
    for expected in ("whisper:tiny.en", "whisper:base", "piper:en_US-joe-medium", "whisper-1", "tts-1", "gpt-4o-mini-tts"):
        assert expected in ids
    assert sdk.models.retrieve("whisper:tiny.en").owned_by == "speech7-local"
    with pytest.raises(openai.NotFoundError) as err:
        sdk.models.retrieve("gpt-5")
    assert err.value.code == "model_not_found"


def test_keys_bearer_or_x_api_key_and_bad_ones_are_401(live_server, testdata):
    acc = live_server.account()
    with pytest.raises(openai.AuthenticationError) as err:
        client(live_server, "s7_not_a_key").models.list()
    assert err.value.status_code == 401
    assert err.value.body == {"message": "Incorrect API key provided", "type": "invalid_request_error",
                              "param": None, "code": "invalid_api_key"}
    with pytest.raises(openai.AuthenticationError):
        client(live_server, "s7_not_a_key").audio.transcriptions.create(file=testdata / "en" / "jfk.flac", model="whisper-1")
    r = httpx.get(f"{live_server.url}/v1/models", timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = httpx.get(f"{live_server.url}/v1/models", headers={"x-api-key": acc["apiKey"]}, timeout=30)
    assert r.status_code == 200 and r.json()["object"] == "list"
    httpx.patch(f"{live_server.url}/accounts/{acc['id']}", json={"apiKey": ADMIN_KEY, "disabled": True}, timeout=30)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client(live_server, acc["apiKey"]).models.list()
    assert denied.value.code == "account_disabled"
    assert usage(live_server, acc["id"]) == []


def test_exhausted_balance_is_insufficient_quota_and_not_retried(live_server, testdata):
    acc = live_server.account(startingMinutes=0, sttApiKey="whisper:tiny.en")
    sdk = client(live_server, acc["apiKey"], max_retries=2)  # the SDK's default retries 429s; this one must not
    requests = live_server.services.metrics.requests
    calls = [
        ("/v1/audio/transcriptions", lambda: sdk.audio.transcriptions.create(file=testdata / "en" / "jfk.flac", model="whisper-1")),
        ("/v1/audio/transcriptions", lambda: sdk.audio.transcriptions.create(
            file=testdata / "en" / "jfk.flac", model="whisper-1", stream=True)),  # refused before any event
        ("/v1/audio/speech", lambda: sdk.audio.speech.create(model="tts-1", voice="alloy", input=SPOKEN).read()),
    ]
    for route, call in calls:
        before = requests[("POST", route, 429)]
        with pytest.raises(openai.RateLimitError) as err:
            call()
        assert err.value.code == "insufficient_quota" and err.value.type == "insufficient_quota"
        assert "Not enough minutes" in err.value.message
        assert requests[("POST", route, 429)] == before + 1  # answered once: x-should-retry: false
    assert usage(live_server, acc["id"]) == [] and live_server.minutes(acc["apiKey"]) == 0


@pytest.mark.parametrize(
    "path, body, status, param, code",
    [
        ("/v1/audio/speech", {"model": "tts-1", "voice": "robot", "input": "Hi."}, 400, "voice", "invalid_value"),
        ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "Hi.", "response_format": "ogg"}, 400,
         "response_format", "invalid_value"),
        ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "Hi.", "speed": 3.0}, 400, "speed",
         "unsupported_value"),
        ("/v1/audio/speech", {"model": "tts-2", "voice": "alloy", "input": "Hi."}, 404, "model", "model_not_found"),
        ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "  "}, 400, "input", "invalid_text"),
        ("/v1/audio/transcriptions", {"model": "whisper-1"}, 400, "file", "missing_required_parameter"),
        ("/v1/audio/transcriptions", {"model": "large-v9", "file": True}, 404, "model", "model_not_found"),
        ("/v1/audio/transcriptions", {"model": "whisper-1", "response_format": "srt", "stream": "true", "file": True},
         400, "stream", "invalid_value"),
        ("/v1/audio/transcriptions", {"model": "whisper-1", "timestamp_granularities[]": "char", "file": True},
         400, "timestamp_granularities", "invalid_value"),
        ("/v1/audio/voices", {}, 404, None, "unknown_url"),
    ],
)
def test_bad_requests_get_openai_errors_and_cost_nothing(live_server, testdata, path, body, status, param, code):
    acc = live_server.account()
    headers = {"Authorization": f"Bearer {acc['apiKey']}"}
    if path.endswith("/speech") or path.endswith("/voices"):
        r = httpx.post(f"{live_server.url}{path}", json=body, headers=headers, timeout=60)
    else:  # multipart, with or without the file part
        parts: list[tuple[str, Any]] = [(k, (None, str(v))) for k, v in body.items() if k != "file"]
        if body.get("file"):
            parts.append(("file", ("clip.wav", (testdata / "en" / "LJ001-0002.wav").read_bytes(), "audio/wav")))
        r = httpx.post(f"{live_server.url}{path}", files=parts, headers=headers, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and len(err["message"]) > 10
    assert (err["param"], err["code"]) == (param, code)
    assert err["type"] == "invalid_request_error"
    assert usage(live_server, acc["id"]) == [] and live_server.minutes(acc["apiKey"]) == 10
    assert not list((Path(live_server.settings.data_dir) / "tmp").rglob("up_*"))
