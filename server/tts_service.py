"""Text-to-speech: synthesis sentence by sentence, MP3 encoded as it goes, the same bytes streamed to the
client and written to the speech's file; minutes reserved before and settled after.

Consistency rule (issue 5): a speech exists and is charged only if synthesis completed AND every byte was
handed to the client. If synthesis fails, the client disconnects or the minutes run out before the end, the
partial file is deleted, no row is written and the reservation is refunded.

Minutes (server/tts_billing.py): reserved from the voice's duration estimate, grown while synthesis runs, and
never exceeded: audio that the reservation cannot cover is not sent. `SpeechJob.open` waits for the first
audio before a streamed response commits its status, so a refusal there is still a JSON error; later, an
HTTP stream can only be cut (the client sees an incomplete transfer) and nothing is charged.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from engines.audio_encoders import StreamEncoder
from engines.types import AudioChunk, DurationEstimate, EngineError, ModelProvider, TtsEngine, TtsRequest
from server.accounts import Account
from server.capabilities import Capabilities
from server.db import speeches
from server.engine_errors import api_error
from server.errors import ApiError, bad_request, not_found, payment_required
from server.inference import Inference
from server.metrics import Metrics
from server.minutes import MinutesPool, Reservation, quantize_minutes
from server.security import new_id
from server.storage import BlobStore, BlobWriter, OpenBlob
from server.tts_billing import OutOfMinutes, SpeechBudget, reserve_speech

log = logging.getLogger("speech7.tts")
# Makes the client's encoder for the voice's sample rate (engines.audio_encoders.open_encoder); None: the MP3.
EncoderFactory = Callable[[int], StreamEncoder]
SPEECH_ID_RE = re.compile(r"^sp_[0-9a-f]{20}$")
STOP_TIMEOUT_S = 30.0  # shutdown waits this long for clean-ups (a producer ends at its next sentence)
_END = object()


def count_words(text: str) -> int:
    return len(text.split())


def validate_text(text: Any, max_words: int) -> str:
    if not isinstance(text, str):
        raise bad_request("text is required and must be a string", code="invalid_text")
    if not text.strip():
        raise bad_request("text is empty", code="invalid_text")
    words = count_words(text)
    if words > max_words:
        raise bad_request(f"text has {words} words; the limit is {max_words} words", code="text_too_long")
    return text.strip()


@dataclass(frozen=True)
class SpeechRecord:
    id: str
    row: dict[str, Any]


class Background:
    """Streams in progress and the clean-up tasks that outlive their response (refunds, late settlements)."""

    def __init__(self) -> None:
        self.streaming = 0
        self._tasks: set[asyncio.Future[None]] = set()

    def track(self, task: asyncio.Future[None] | Coroutine[Any, Any, None]) -> None:
        t = asyncio.ensure_future(task)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def stop(self, timeout_s: float) -> None:
        """Lets the clean-ups finish (each refunds or stores its speech), cancelling what is still stuck."""
        if not self._tasks:
            return
        _, stuck = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for t in stuck:
            log.warning("TTS clean-up still running at shutdown; cancelled")
            t.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)


class TtsService:
    def __init__(
        self, *, store: BlobStore, db: AsyncEngine, minutes: MinutesPool, capabilities: Capabilities,
        models: ModelProvider, inference: Inference, metrics: Metrics,
    ) -> None:
        self._store = store
        self._db = db
        self._capabilities = capabilities
        self._models = models
        self._jobs = _JobContext(minutes, inference, metrics, Background(), self._insert, store)

    @property
    def streams_in_progress(self) -> int:
        """Responses whose audio is being produced or sent right now (a stream stops counting as soon as it
        completes, fails or notices that its client has gone)."""
        return self._jobs.background.streaming

    async def open_audio(self, speech_id: str) -> OpenBlob:
        """The stored MP3 of a speech (whichever node made it), read chunk by chunk."""
        if not SPEECH_ID_RE.match(speech_id):  # ids are ours: nothing user-typed reaches the store
            raise not_found("No such speech")
        audio = await self._store.open(audio_name(speech_id))
        if audio is None:
            raise not_found("The audio file of this speech is gone")
        return audio

    async def prepare(self, account: Account, text: str, voice: str | None, speed: float) -> SpeechJob:
        """Checks engine, loads the voice, reserves minutes: every refusal happens before a byte is sent."""
        selection = self._capabilities.require_tts(account, voice)
        inference = self._jobs.inference
        request = TtsRequest(text, speed)

        def start(engine: TtsEngine) -> tuple[Iterator[AudioChunk], DurationEstimate]:
            # The engine validates the text when called, so a refusal is a 400 before any byte is sent.
            return engine.synthesize(request), engine.estimate(request)

        try:
            engine = await inference.run(self._models.tts, selection.model)
            chunks, estimate = await inference.run(start, engine)
        except EngineError as exc:
            raise api_error(exc, (400, "invalid_text")) from None
        speech_id = new_id("sp")
        reservation = await reserve_speech(self._jobs.minutes, account.id, estimate, reference=speech_id)
        budget = SpeechBudget(self._jobs.minutes, reservation, asyncio.get_running_loop())
        return SpeechJob(self._jobs, account, engine, chunks, selection.spec, text, speech_id, budget)

    async def list_speeches(self, account_id: str, limit: int) -> list[dict[str, Any]]:
        async with self._db.connect() as conn:
            rows = (
                await conn.execute(
                    select(speeches).where(speeches.c.account_id == account_id)
                    .order_by(speeches.c.created_at.desc()).limit(limit)
                )
            ).mappings().all()
        return [speech_json(r) for r in rows]

    async def get_speech(self, account_id: str, speech_id: str) -> Mapping[Any, Any]:
        if not SPEECH_ID_RE.match(speech_id):
            raise not_found("No such speech")
        async with self._db.connect() as conn:
            row = (
                await conn.execute(
                    select(speeches).where(speeches.c.id == speech_id, speeches.c.account_id == account_id)
                )
            ).mappings().first()
        if row is None:
            raise not_found("No such speech")
        return row

    async def stop(self) -> None:
        """Shutdown: waits for the clean-ups of streams that ended (refunds, stored speeches) to finish."""
        await self._jobs.background.stop(STOP_TIMEOUT_S)

    async def _insert(self, row: dict[str, Any]) -> None:
        async with self._db.begin() as conn:
            await conn.execute(speeches.insert().values(**row))


@dataclass(frozen=True)
class _JobContext:
    """What a SpeechJob needs from its service."""

    minutes: MinutesPool
    inference: Inference
    metrics: Metrics
    background: Background
    insert: Callable[[dict[str, Any]], Awaitable[None]]
    store: BlobStore


class SpeechJob:
    """One accepted /tts request: the loaded voice, the pending sentences and the minutes reserved for them."""

    def __init__(self, ctx: _JobContext, account: Account, engine: TtsEngine, chunks: Iterator[AudioChunk], spec: str,
                 text: str, speech_id: str, budget: SpeechBudget) -> None:
        self._ctx = ctx
        self.account, self.engine, self.chunks, self.spec = account, engine, chunks, spec
        self.text, self.id, self.budget = text, speech_id, budget
        self.record: SpeechRecord | None = None
        self._started = False  # stream() ran its first step: from then on its own `finally` owns the cleanup
        self._opened: AsyncIterator[bytes] | None = None  # the stream open() started
        self._cleanup: asyncio.Future[None] | None = None  # refund and file removal of a stream that ended early

    @property
    def reservation(self) -> Reservation:
        return self.budget.reservation

    async def open(self, encoder: EncoderFactory | None = None) -> AsyncIterator[bytes]:
        """Starts `stream(encoder)` and waits for its first audio, so that whatever the first sentence meets
        (no minutes for it, a synthesis failure, nothing speakable) raises here, before a response commits
        to 200. Returns the whole body, first bytes included; `release` closes it."""
        stream = self.stream(encoder)
        self._opened = stream
        first = await anext(stream, b"")

        async def body() -> AsyncIterator[bytes]:
            if first:
                yield first
            async for data in stream:
                yield data

        return body()

    async def release(self) -> None:
        """Ends the job whatever happened to its response: a stream that `open` left suspended is closed (its
        `finally` refunds and deletes the partial file; a finished one is untouched), and a job whose stream
        never started is refunded here, since it has no `finally` to run. So the reservation cannot leak.
        """
        if self._started:
            if self._opened is not None:
                await self._opened.aclose()  # type: ignore[attr-defined]
            if self._cleanup is not None:
                await asyncio.shield(self._cleanup)
        elif self.record is None:
            await self._ctx.minutes.refund(self.reservation, note="client disconnected before the audio started")

    @property
    def sample_rate(self) -> int:
        """The voice's own rate: what raw PCM from `stream(encoder)` is at unless the encoder resamples."""
        return int(self.engine.sample_rate)

    async def stream(self, encoder: EncoderFactory | None = None) -> AsyncIterator[bytes]:
        """Yields audio per sentence; on normal completion stores the speech and settles.

        The stored speech is always the MP3; the client gets the same MP3 bytes, or with `encoder` the same
        PCM encoded by the encoder that factory makes (the OpenAI API's and Wyoming's formats)."""
        from engines.mp3 import Mp3StreamEncoder

        self._started = True
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(maxsize=8)
        cancel = threading.Event()
        sample_rate = self.engine.sample_rate
        samples = 0
        budget = self.budget

        def produce() -> None:
            # Runs on an inference thread: synthesis and encoding, one sentence at a time, handed to the loop.
            nonlocal samples
            try:
                enc = Mp3StreamEncoder(sample_rate)
                client = encoder(sample_rate) if encoder is not None else None

                def put(stored: bytes, sent: bytes | None) -> None:
                    if stored or sent:  # (bytes for the file, bytes for the client)
                        item = (stored, stored if sent is None else sent)
                        asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

                for chunk in self.chunks:
                    if cancel.is_set():
                        return
                    budget.cover((samples + len(chunk.pcm)) / sample_rate)  # else OutOfMinutes: nothing more is sent
                    samples += len(chunk.pcm)
                    put(enc.encode(chunk.pcm), client.encode(chunk.pcm) if client is not None else None)
                put(enc.flush(), client.flush() if client is not None else None)
                asyncio.run_coroutine_threadsafe(queue.put(_END), loop).result()
            except BaseException as exc:  # delivered to the consumer, which refunds
                if not cancel.is_set():
                    asyncio.run_coroutine_threadsafe(queue.put(exc), loop).result()

        writer = self._ctx.store.create(audio_name(self.id))  # invisible until committed by _store
        completed = failed = False
        producer = self._ctx.inference.submit(produce)
        size = 0
        background = self._ctx.background
        background.streaming += 1
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, OutOfMinutes):
                    raise payment_required(str(item))
                if isinstance(item, BaseException):
                    raise ApiError(500, "synthesis_failed", f"speech synthesis failed: {item}")
                stored, sent = item
                if stored:
                    await writer.write(stored)
                    size += len(stored)
                if sent:
                    yield sent
            if samples == 0:
                raise bad_request("text contains nothing speakable", code="invalid_text")
            duration = samples / sample_rate
            # Every byte is out: the bookkeeping must finish even if the client goes away right now, or the
            # speech would be charged without a row (or the reverse). The shielded task runs to its end.
            store = asyncio.ensure_future(self._store(writer, duration, size))
            completed = True
            try:
                await asyncio.shield(store)
            except asyncio.CancelledError:
                background.track(store)
                raise
            except BaseException:
                completed = False  # the database failed: nothing is kept, the reservation goes back
                await self._ctx.store.delete([audio_name(self.id)])
                raise
        except Exception:
            failed = True
            raise
        finally:
            background.streaming -= 1
            if not completed:
                cancel.set()
                # Drain so a producer blocked on a full queue can see the cancel flag and exit.
                while not queue.empty():
                    queue.get_nowait()
                self._cleanup = asyncio.ensure_future(self._abort(writer, producer, queue))
                background.track(self._cleanup)
                if failed:  # our error, not the client leaving: the refund lands before the error goes out
                    await asyncio.shield(self._cleanup)

    async def _abort(self, writer: BlobWriter, producer: asyncio.Future[None], queue: asyncio.Queue) -> None:
        async def drain() -> None:
            while True:
                await queue.get()

        drainer = asyncio.ensure_future(drain())
        try:
            await asyncio.wait_for(asyncio.shield(producer), timeout=120)
        except BaseException:
            pass
        drainer.cancel()
        await writer.abort()
        await self._ctx.minutes.refund(self.reservation, note="synthesis failed or client disconnected")

    async def _store(self, writer: BlobWriter, duration: float, size: int) -> None:
        charged = await self._ctx.minutes.settle(
            self.reservation, quantize_minutes(duration), audio_seconds=duration, reference=self.id
        )
        await writer.commit()
        row = {
            "id": self.id, "account_id": self.account.id, "text": self.text, "characters": len(self.text),
            "words": count_words(self.text), "duration_ms": int(round(duration * 1000)), "minutes_used": charged,
            "engine": self.spec, "file_name": f"{self.id}.mp3", "size_bytes": size, "created_at": time.time(),
        }
        await self._ctx.insert(row)
        self._ctx.metrics.add_audio("tts", duration)
        self.record = SpeechRecord(self.id, row)

    async def run_to_end(self) -> SpeechRecord:
        async for _ in self.stream():
            pass
        assert self.record is not None
        return self.record


def audio_name(speech_id: str) -> str:
    """The blob holding a speech's MP3 (under the data directory: speeches/<id>.mp3, as before blob stores)."""
    return f"speeches/{speech_id}.mp3"


def speech_json(row: Any, *, full_text: bool = False) -> dict[str, Any]:
    text = row["text"] if full_text or len(row["text"]) <= 200 else row["text"][:200] + "…"
    return {
        "id": row["id"],
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["created_at"])),
        "timestamp": int(row["created_at"] * 1000),
        "text": text,
        "characters": row["characters"],
        "words": row["words"],
        "durationMs": row["duration_ms"],
        "minutesUsed": row["minutes_used"],
        "engine": row["engine"],
        "sizeBytes": row["size_bytes"],
        "audioPath": f"/speeches/{row['id']}?download=1",
    }
