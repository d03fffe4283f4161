"""One Wyoming connection, as Home Assistant's Wyoming integration drives it.

* `describe` -> `info` (server.wyoming.info).
* Speech-to-text: optional `transcribe` (model `name`, `language`), `audio-start`, `audio-chunk`s,
  `audio-stop` -> `transcript-start`, `transcript-chunk`s as the decoder progresses, the final `transcript`
  (what clients without streaming support wait for), `transcript-stop`. The audio goes to a WAV file under
  the data directory (size-limited like an upload) and through `TranscriptionService.transcribe_file`, the
  path POST /stt takes: same engine instances and batches, same reservation and ledger.
* Text-to-speech: `synthesize` -> `audio-start`, `audio-chunk`s (16-bit mono PCM at the voice's rate) as each
  sentence is synthesised, `audio-stop`; the `TtsService` job behind POST /tts (stored, billed once, refunded
  when the client leaves early).

Refusals (no minutes, bad text, an English-only model asked for German ...) are `error` events with the
Speech7 error code; the connection stays usable. Every request is billed to the account of the configured
key, looked up per request so a rotated key or a disabled account takes effect at once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import wave
from dataclasses import dataclass
from pathlib import Path

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.server import AsyncEventHandler
from wyoming.tts import Synthesize

from engines.audio_encoders import open_encoder
from models.catalog import Catalog
from server.accounts import Account, AccountService, ensure_active
from server.capabilities import Capabilities
from server.errors import ApiError, too_large
from server.settings import Settings
from server.stt_options import SttOptions
from server.transcript_feed import TranscriptFeed, transcript_text
from server.transcription import TranscriptionService
from server.tts_service import TtsService, validate_text
from server.wyoming.info import build_info

log = logging.getLogger("speech7.wyoming")
SAMPLES_PER_CHUNK = 1024  # audio-chunk size sent to clients (what Wyoming's own Piper server sends)
_FLUSH_BYTES = 1 << 20  # incoming audio is written to disk (off the event loop) a megabyte at a time


@dataclass(frozen=True)
class WyomingContext:
    settings: Settings
    accounts: AccountService
    capabilities: Capabilities
    catalog: Catalog
    transcription: TranscriptionService
    tts: TtsService
    api_key: str  # the account every Wyoming request is billed to


class _IncomingAudio:
    """The audio of one transcription request, in the format its audio-start announced, into a WAV file."""

    def __init__(self, tmp_dir: Path, start: AudioStart, limit_bytes: int) -> None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.path = tmp_dir / f"wy_{secrets.token_hex(12)}.wav"
        self._converter = AudioChunkConverter(rate=start.rate, width=start.width, channels=start.channels)
        self._wav = wave.open(str(self.path), "wb")
        self._wav.setframerate(start.rate)
        self._wav.setsampwidth(start.width)
        self._wav.setnchannels(start.channels)
        self._pending = bytearray()
        self._limit = limit_bytes
        self.size = 0

    async def add(self, chunk: AudioChunk) -> None:
        data = self._converter.convert(chunk).audio  # a client may change format mid-stream
        self.size += len(data)
        if self.size > self._limit:
            raise too_large(self._limit)
        self._pending += data
        if len(self._pending) >= _FLUSH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        data, self._pending = bytes(self._pending), bytearray()
        await asyncio.to_thread(self._wav.writeframes, data)

    async def close(self) -> None:
        await self._flush()
        await asyncio.to_thread(self._wav.close)

    def discard(self) -> None:
        try:
            self._wav.close()
        except Exception:  # already closed, or the disk failed: the file goes either way
            pass
        self.path.unlink(missing_ok=True)


class WyomingHandler(AsyncEventHandler):
    def __init__(self, ctx: WyomingContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self._ctx = ctx
        self._model: str | None = None
        self._language: str | None = None
        self._audio: _IncomingAudio | None = None

    async def handle_event(self, event: Event) -> bool:
        try:
            if Describe.is_type(event.type):
                info = await asyncio.to_thread(build_info, self._ctx.catalog)
                await self.write_event(info.event())
            elif Transcribe.is_type(event.type):
                self._choose(Transcribe.from_event(event))
            elif AudioStart.is_type(event.type):
                self._drop_audio()
                self._audio = self._open_audio(AudioStart.from_event(event))
            elif AudioChunk.is_type(event.type):
                chunk = AudioChunk.from_event(event)
                if self._audio is None:  # a client that skipped audio-start: the first chunk sets the format
                    self._audio = self._open_audio(AudioStart(rate=chunk.rate, width=chunk.width, channels=chunk.channels))
                await self._audio.add(chunk)
            elif AudioStop.is_type(event.type):
                await self._transcribe()
            elif Synthesize.is_type(event.type):
                await self._synthesize(Synthesize.from_event(event))
        except ApiError as exc:
            self._drop_audio()
            await self.write_event(Error(text=exc.message, code=exc.code).event())
        except (ConnectionError, asyncio.IncompleteReadError):
            return False
        except Exception:
            log.exception("Wyoming request failed")
            self._drop_audio()
            await self.write_event(Error(text="Internal server error", code="internal_error").event())
        return True

    async def disconnect(self) -> None:
        self._drop_audio()

    # ------------------------------------------------------------------ helpers
    async def _account(self) -> Account:
        account = await self._ctx.accounts.authenticate(self._ctx.api_key)
        if account is None:
            raise ApiError(401, "unauthorized", "S7_WYOMING_API_KEY no longer belongs to an account (was it rotated?)")
        ensure_active(account)
        return account

    def _choose(self, request: Transcribe) -> None:
        installed = self._ctx.catalog.whisper_models()
        self._model = request.name if request.name in installed else None  # else: the account's engine
        lang = (request.language or "").strip().lower().replace("_", "-").split("-")[0]
        self._language = lang or None

    def _open_audio(self, start: AudioStart) -> _IncomingAudio:
        tmp = Path(self._ctx.settings.data_dir) / "tmp"
        return _IncomingAudio(tmp, start, self._ctx.settings.stt_max_upload_bytes)

    def _drop_audio(self) -> None:
        if self._audio is not None:
            self._audio.discard()
            self._audio = None

    async def _transcribe(self) -> None:
        audio, self._audio = self._audio, None
        model, language = self._model, self._language
        self._model = self._language = None
        if audio is None or audio.size == 0:  # nothing was said (e.g. the client's VAD heard nothing): free
            if audio is not None:
                audio.discard()
            await self.write_event(Transcript(text="").event())
            return
        try:
            await audio.close()
            account = await self._account()
        except BaseException:
            audio.discard()
            raise
        # Home Assistant sends the pipeline's language: the audio is decoded in it (no detection).
        options = SttOptions(language=language or None, model=model)
        feed = TranscriptFeed.start(self._ctx.transcription, account, audio.path, options, on_end=audio.discard)
        deltas = feed.deltas()
        first = await anext(deltas, None)
        if first is None and (exc := feed.task.exception()) is not None:
            raise exc  # refused before any text: one error event, no transcript-start
        await self.write_event(TranscriptStart(language=language).event())
        if first is not None:
            await self.write_event(TranscriptChunk(text=first).event())
            async for delta in deltas:
                await self.write_event(TranscriptChunk(text=delta).event())
        result = feed.task.result()
        await self.write_event(Transcript(text=transcript_text(result), language=result.result.language).event())
        await self.write_event(TranscriptStop().event())

    async def _synthesize(self, request: Synthesize) -> None:
        account = await self._account()
        text = validate_text(request.text, self._ctx.settings.tts_max_words)
        name = request.voice.name if request.voice is not None else None
        voice = name if name in self._ctx.catalog.piper_voices() else None  # else: the account's voice
        job = await self._ctx.tts.prepare(account, text, voice, 1.0)
        rate = job.sample_rate
        chunk_bytes = SAMPLES_PER_CHUNK * 2
        audio = job.stream(lambda source_rate: open_encoder("pcm", source_rate, sample_rate=source_rate))
        try:
            await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
            async for data in audio:  # whole 16-bit samples: the PCM muxer writes whole packets
                for i in range(0, len(data), chunk_bytes):
                    await self.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=data[i:i + chunk_bytes]).event())
            await self.write_event(AudioStop().event())  # the loop ended: the speech is stored and billed
        finally:
            await audio.aclose()  # type: ignore[attr-defined]
            await job.release()
