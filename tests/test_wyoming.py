"""The Wyoming protocol as Home Assistant speaks it, through the `wyoming` package's own client, against a live
server that serves HTTP and Wyoming from one process (S7_WYOMING_URI), with the real models.

The server bills Wyoming to the admin account here (S7_WYOMING_API_KEY = the admin key); the tests top it up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeVoice

from engines.audio import decode_file
from engines.types import SttRequest
from engines.wer import wer
from server.launcher import free_port, serve_in_thread
from tests.conftest import ADMIN_KEY, LiveServer

pytestmark = pytest.mark.slow

TIMEOUT_S = 120.0  # per event; a passing run never comes near it


class Wyoming(LiveServer):
    def __init__(self, app, url: str, settings, port: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(app, url, settings)
        self.port = port
        self.admin_id = httpx.get(f"{url}/account", headers={"x-api-key": ADMIN_KEY}, timeout=30).json()["id"]

    def set_minutes(self, minutes: float) -> None:
        delta = minutes - self.minutes(ADMIN_KEY)
        r = httpx.post(f"{self.url}/accounts/{self.admin_id}/minutes", json={"apiKey": ADMIN_KEY, "minutes": delta}, timeout=30)
        assert r.status_code == 200, r.text

    def usage(self) -> list[tuple[str, str, float]]:
        r = httpx.get(f"{self.url}/accounts/{self.admin_id}/usage", headers={"x-api-key": ADMIN_KEY}, timeout=30)
        return [(u["kind"], u["status"], u["minutes"]) for u in r.json()["usage"] if u["kind"] != "credit"]


@pytest.fixture(scope="module")
def wy(tmp_path_factory, models_root) -> Iterator[Wyoming]:  # type: ignore[no-untyped-def]
    from server.settings import Settings

    port = free_port()
    from server.app import create_app

    settings = Settings(
        warmup=False, data_dir=tmp_path_factory.mktemp("wyoming") / "data", admin_key=ADMIN_KEY,
        models_dir=models_root, wyoming_uri=f"tcp://127.0.0.1:{port}", wyoming_api_key=ADMIN_KEY,
        stt_workers_per_device=1,  # one replica: both protocols' requests meet in its one batch queue
    )
    app = create_app(settings)
    with serve_in_thread(app) as server:
        yield Wyoming(app, server.url, settings, port)


def pcm16(path: Path) -> bytes:
    return (np.clip(decode_file(path), -1, 1) * 32767).astype("<i2").tobytes()


async def read_until(client: AsyncTcpClient, last: set[str]) -> list[Event]:
    events: list[Event] = []
    while True:
        event = await asyncio.wait_for(client.read_event(), TIMEOUT_S)
        assert event is not None, "the server closed the connection"
        events.append(event)
        if event.type in last | {"error"}:
            return events


async def transcribe(client: AsyncTcpClient, audio: bytes, *, rate: int = 16000, channels: int = 1,
                     **transcribe: Any) -> list[Event]:
    """What Home Assistant sends: transcribe, audio-start, 1024-sample chunks, audio-stop."""
    await client.write_event(Transcribe(**transcribe).event())
    await client.write_event(AudioStart(rate=rate, width=2, channels=channels).event())
    step = 1024 * 2 * channels
    for i in range(0, len(audio), step):
        await client.write_event(AudioChunk(rate=rate, width=2, channels=channels, audio=audio[i:i + step]).event())
    await client.write_event(AudioStop().event())
    return await read_until(client, {"transcript-stop"})


def test_describe_lists_installed_models_and_voices(wy):
    async def main() -> Info:
        async with AsyncTcpClient("127.0.0.1", wy.port) as client:
            await client.write_event(Describe().event())
            [event] = await read_until(client, {"info"})
            return Info.from_event(event)

    info = asyncio.run(main())
    [asr], [tts] = info.asr, info.tts
    assert asr.installed and asr.version and asr.attribution.name == "speech7-local" and asr.supports_transcript_streaming
    models = {m.name: m for m in asr.models}
    assert {"base", "tiny.en"} <= set(models)
    assert models["tiny.en"].languages == ["en"] and {"en", "de", "sl"} <= set(models["base"].languages)
    assert all(m.installed and m.attribution.url for m in asr.models)
    assert tts.installed and not tts.supports_synthesize_streaming
    assert [(v.name, v.languages, v.installed) for v in tts.voices] == [("en_US-joe-medium", ["en_US"], True)]


def test_transcribes_streamed_audio_and_bills_the_configured_account(wy, testdata):
    wy.set_minutes(10)
    before = len(wy.usage())
    jfk = pcm16(testdata / "en" / "jfk.flac")
    # The second request on the same connection arrives as 48 kHz stereo: the server converts it.
    short = np.frombuffer(pcm16(testdata / "en" / "LJ001-0002.wav"), "<i2")
    stereo48k = np.repeat(np.repeat(short, 3)[:, None], 2, axis=1).astype("<i2").tobytes()

    async def main() -> tuple[list[Event], list[Event]]:
        async with AsyncTcpClient("127.0.0.1", wy.port) as client:
            first = await transcribe(client, jfk, name="tiny.en", language="en")
            second = await transcribe(client, stereo48k, rate=48000, channels=2, language="en-US")
            return first, second

    first, second = asyncio.run(main())
    types = [e.type for e in first]
    assert types[0] == "transcript-start" and types[-2:] == ["transcript", "transcript-stop"], types
    chunks = [e.data["text"] for e in first if e.type == "transcript-chunk"]
    final = next(e for e in first if e.type == "transcript").data
    assert chunks and "".join(chunks) == final["text"] and final["language"] == "en"
    assert wer((testdata / "en" / "jfk.txt").read_text(), final["text"]) < 0.15, final
    heard = next(e for e in second if e.type == "transcript").data["text"]
    assert wer("in being comparatively modern", heard) < 0.35, heard
    assert wy.usage()[: len(wy.usage()) - before] == [("stt", "settled", 0.5)] * 2
    assert wy.minutes(ADMIN_KEY) == 9.0
    assert not list((Path(wy.settings.data_dir) / "tmp").glob("wy_*"))  # the WAV files are gone


def test_synthesizes_pcm_chunks_that_speak_the_text(wy):
    wy.set_minutes(10)
    before = len(wy.usage())
    text = "Turn on the kitchen lights. The heating stays off."

    async def main() -> list[Event]:
        async with AsyncTcpClient("127.0.0.1", wy.port) as client:
            await client.write_event(Synthesize(text=text, voice=SynthesizeVoice(name="en_US-joe-medium")).event())
            return await read_until(client, {"audio-stop"})

    events = asyncio.run(main())
    assert events[0].type == "audio-start" and events[-1].type == "audio-stop"
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (22050, 2, 1)
    chunks = [AudioChunk.from_event(e) for e in events[1:-1]]
    assert len(chunks) > 10 and all(c.rate == 22050 and len(c.audio) <= 2048 for c in chunks)
    pcm = np.frombuffer(b"".join(c.audio for c in chunks), "<i2").astype(np.float32) / 32768
    from scipy.signal import resample_poly

    audio16k = resample_poly(pcm, 320, 441).astype(np.float32)
    heard = wy.services.models.stt("tiny.en").transcribe(SttRequest(audio16k)).text
    assert wer(text, heard) < 0.2, heard
    assert wy.usage()[: len(wy.usage()) - before] == [("tts", "settled", 0.5)]
    speeches = httpx.get(f"{wy.url}/speeches", headers={"x-api-key": ADMIN_KEY}, timeout=30).json()["speeches"]
    assert speeches[0]["text"] == text  # stored like any /tts speech of the account


def test_refusals_are_error_events_and_the_connection_stays_usable(wy, testdata):
    wy.set_minutes(0)
    before = len(wy.usage())

    async def main() -> tuple[list[Event], list[Event], list[Event], list[Event]]:
        async with AsyncTcpClient("127.0.0.1", wy.port) as client:
            no_minutes = await transcribe(client, pcm16(testdata / "en" / "LJ001-0002.wav"))
            await client.write_event(Synthesize(text="Hello there.").event())
            no_minutes_tts = await read_until(client, {"audio-stop"})
            await client.write_event(Synthesize(text=" ".join(["word"] * 600)).event())
            too_long = await read_until(client, {"audio-stop"})
            await client.write_event(Describe().event())
            return no_minutes, no_minutes_tts, too_long, await read_until(client, {"info"})

    try:
        no_minutes, no_minutes_tts, too_long, info = asyncio.run(main())
    finally:
        wy.set_minutes(10)
    assert [(e.type, e.data.get("code")) for e in no_minutes] == [("error", "insufficient_minutes")]
    assert [(e.type, e.data.get("code")) for e in no_minutes_tts] == [("error", "insufficient_minutes")]
    assert [(e.type, e.data.get("code")) for e in too_long] == [("error", "text_too_long")]
    assert info[0].type == "info"
    assert len(wy.usage()) == before  # nothing reserved, nothing charged
    assert not list((Path(wy.settings.data_dir) / "tmp").glob("wy_*"))


def test_http_and_wyoming_requests_are_decoded_in_one_batch(wy, testdata, monkeypatch):
    """One process, one engine instance, one batch queue: a Home Assistant command and an OpenAI-API upload
    that arrive while the model is busy are decoded together."""
    wy.set_minutes(10)
    engine = wy.services.models.stt("tiny.en")
    worker = engine.workers[0]
    original = worker._run_batch
    gate, busy = threading.Event(), threading.Event()
    batch_sizes: list[int] = []

    def decode(items: list, *args: Any, **kw: Any) -> Any:  # type: ignore[type-arg]
        batch_sizes.append(len(items))
        if len(batch_sizes) == 1:  # hold the model on the first batch while the two requests queue up
            busy.set()
            gate.wait(TIMEOUT_S)
        return original(items, *args, **kw)

    monkeypatch.setattr(worker, "_run_batch", decode)
    acc = wy.account(sttApiKey="whisper:tiny.en")
    sdk = openai.OpenAI(api_key=acc["apiKey"], base_url=f"{wy.url}/v1", max_retries=0, timeout=TIMEOUT_S)
    clip = testdata / "en" / "LJ001-0002.wav"

    async def main() -> tuple[str, list[Event]]:
        blocker = asyncio.create_task(asyncio.to_thread(engine.transcribe, SttRequest(decode_file(clip))))
        assert await asyncio.to_thread(busy.wait, TIMEOUT_S)
        http = asyncio.create_task(asyncio.to_thread(
            lambda: sdk.audio.transcriptions.create(file=clip, model="whisper-1", response_format="text")))
        async with AsyncTcpClient("127.0.0.1", wy.port) as client:
            wyoming = asyncio.create_task(transcribe(client, pcm16(clip), name="tiny.en"))
            for _ in range(int(TIMEOUT_S / 0.02)):  # bounded: until both requests wait in the model's queue
                if worker.stats().queue_depth == 2:
                    break
                await asyncio.sleep(0.02)
            gate.set()
            await blocker
            return await http, await wyoming

    try:
        http_text, events = asyncio.run(main())
    finally:
        gate.set()
    assert batch_sizes[:2] == [1, 2], batch_sizes
    wyoming_text = next(e for e in events if e.type == "transcript").data["text"]
    for heard in (http_text, wyoming_text):
        assert wer("in being comparatively modern", heard) < 0.35, heard


def test_refuses_to_start_without_a_key_that_bills_an_account(tmp_path, models_root):
    from server.app import create_app
    from server.settings import Settings

    async def start(key: str) -> None:
        settings = Settings(warmup=False, data_dir=tmp_path / key, admin_key=ADMIN_KEY, models_dir=models_root,
                            wyoming_uri=f"tcp://127.0.0.1:{free_port()}", wyoming_api_key=key)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            pass

    for key, message in (("", "S7_WYOMING_API_KEY is not"), ("s7_unknown", "not the API key of any account")):
        with pytest.raises(RuntimeError, match=message):
            asyncio.run(start(key))
