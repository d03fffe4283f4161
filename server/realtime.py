"""One realtime STT session over a WebSocket: decode incoming audio incrementally, feed the engine's
streaming session, send Soniox-shaped token messages, bill minutes for the audio the engine processed, and
(with languageA/B) keep the two-way translation panes.

Receiving and processing are separate tasks: frames are decoded as they arrive, and the processor hands
everything that piled up to the engine in one call (`SttStream.submit`, awaited without holding a thread:
the engine's decodes run in its batch worker), so a slow decode never backs up the socket and a slow
client never holds anything but its own session. A `{"type": "finalize"}` request is queued between the
audio before and after it, so it finalizes exactly the words heard up to it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from engines.types import (
    SAMPLE_RATE,
    EngineError,
    ModelProvider,
    SpeakerFn,
    StreamOptions,
    StreamToken,
    StreamUpdate,
)
from server.accounts import Account
from server.capabilities import Capabilities
from server.errors import ApiError, payment_required
from server.inference import Inference
from server.metrics import Metrics
from server.minutes import QUANTUM_MINUTES, MinutesPool, Reservation, quantize_minutes
from server.realtime_admission import Admission, AdmissionLimits, AudioClock, Ticket
from server.realtime_config import ConfigError, RealtimeConfig, missing_directions
from server.two_way import TwoWay

log = logging.getLogger("speech7.realtime")

# Decoded audio a session may hold ahead of the engine. A client sending faster than real time (a file
# pushed at once) waits in feed() beyond this, so its frames stay in the socket's buffers and a session's
# memory stays bounded (float32 at 16 kHz: 20 s = 1.3 MB).
MAX_BACKLOG_S = 20.0
# One WebSocket message of audio. A browser sends 100 ms frames (a few kB; 38 kB even as 48 kHz stereo
# float PCM); a larger message is refused before it is decoded.
MAX_FRAME_BYTES = 1 << 20
# The most audio one message may decode to (a few MB of FLAC can hold hours of silence): the decoder stops
# there with 413 instead of filling memory.
MAX_FRAME_AUDIO_S = 60.0

Send = Callable[[dict[str, Any]], Awaitable[None]]


class _Finalize:
    """A finalize request in the session's queue, between the audio before and after it."""


FINALIZE = _Finalize()


def token_json(t: StreamToken) -> dict[str, Any]:
    out: dict[str, Any] = {
        "text": t.text, "start_ms": t.start_ms, "end_ms": t.end_ms,
        "confidence": round(float(t.confidence), 3), "is_final": t.is_final,
    }
    if t.speaker is not None:
        out["speaker"] = str(t.speaker + 1)
    if t.language is not None:
        out["language"] = t.language
    return out


def marker(text: str, at_ms: int) -> dict[str, Any]:
    """Soniox's control tokens: "<end>" after an utterance's final words, "<fin>" after a finalize."""
    return {"text": text, "start_ms": at_ms, "end_ms": at_ms, "confidence": 1.0, "is_final": True}


def update_message(update: StreamUpdate, *, endpoint_token: bool = True) -> dict[str, Any]:
    """Soniox's shape; an endpoint becomes "<end>" and a finalize "<fin>", after the words they made final."""
    tokens = [token_json(t) for t in update.tokens]
    if update.endpoint and endpoint_token:
        tokens.append(marker("<end>", update.final_audio_proc_ms))
    if update.finalized:
        tokens.append(marker("<fin>", update.final_audio_proc_ms))
    return {"tokens": tokens, "final_audio_proc_ms": update.final_audio_proc_ms,
            "total_audio_proc_ms": update.total_audio_proc_ms}


class RealtimeService:
    """Opens realtime sessions with their collaborators; `admission` decides which connections it takes."""

    def __init__(
        self, *, capabilities: Capabilities, models: ModelProvider, minutes: MinutesPool, inference: Inference,
        metrics: Metrics, limits: AdmissionLimits, decode_interval_s: float, idle_s: float,
    ) -> None:
        self.capabilities = capabilities
        self.models = models
        self.minutes = minutes
        self.inference = inference
        self.metrics = metrics
        self.decode_interval_s = decode_interval_s
        self.idle_s = idle_s  # no audio (nor keepalive) for this long closes a session; 0: never
        self.admission = Admission(limits, self._busy)
        metrics.add_source(self.admission.metric_lines)

    @property
    def active_sessions(self) -> int:
        """Connections holding a slot: from admission until the session is closed."""
        return self.admission.live

    def session(self, account: Account, config: RealtimeConfig, send: Send, ticket: Ticket) -> RealtimeSession:
        return RealtimeSession(self, account, config, send, ticket)

    def _busy(self) -> float | None:
        """The busiest loaded STT model's busy ratio (engines.batching.BatchStats); None if none reports one."""
        ratios = []
        for engine in self.models.instances().values():
            stats = getattr(engine, "batch_stats", None)
            if callable(stats):
                ratios.append(float(getattr(stats(), "busy_ratio", 0.0)))
        return max(ratios) if ratios else None


class RealtimeSession:
    def __init__(
        self, service: RealtimeService, account: Account, config: RealtimeConfig, send: Send, ticket: Ticket
    ) -> None:
        self._svc = service
        self.account = account
        self.config = config
        self.send = send
        self.ticket = ticket
        self.reservation: Reservation | None = None
        self.samples = 0  # handed to the engine: what the session is billed for (minutes reserved ahead)
        self._queue: list[np.ndarray | _Finalize] = []  # decoded audio and finalize requests, in order
        self._backlog = 0  # samples queued for the engine or in its current call
        self._drained = asyncio.Event()  # set whenever the backlog shrinks, and when process() ends
        self._process_ended = False
        self._work = asyncio.Event()
        self._ending = False
        self._last_partial: tuple[Any, ...] = ()  # non-final tokens of the last message sent
        self._clock = AudioClock(service.admission.clock, SAMPLE_RATE)
        self.two_way: TwoWay | None = None

    @property
    def minutes(self) -> MinutesPool:
        return self._svc.minutes

    async def open(self) -> None:
        """Every refusal (STT off, the account's session cap, no minutes, missing model) happens here."""
        from engines.stream_decode import StreamDecoder

        svc = self._svc
        sel = svc.capabilities.require_stt(self.account, self.config.stt.model)
        cfg = self.config
        self.ticket.bind(self.account.id)
        pairs: list[tuple[str, str]] = []
        missing: list[str] = []
        if cfg.two_way:
            assert cfg.language_a and cfg.language_b
            pairs = [(p[0], p[1]) for p in await svc.inference.run(svc.capabilities.translation_pairs)]
            missing = missing_directions(cfg.language_a, cfg.language_b, pairs)
        engine = await svc.inference.run(svc.models.stt, sel.model)
        if cfg.two_way and not engine.multilingual:
            raise ConfigError(f"two-way translation needs a multilingual STT model; {sel.model} is English-only")
        hints = cfg.stream_hints
        try:  # the engine's own rule, as for POST /stt (e.g. an English-only model cannot serve 'de')
            engine.check_language_hints(hints, cfg.stt.language)
        except EngineError as exc:
            raise ConfigError(f"language_hints: {exc}") from None
        if not engine.multilingual:
            hints = ()
        options = StreamOptions(
            language_hints=hints, language=cfg.stt.language if engine.multilingual else None,
            task="transcribe", terms=cfg.stt.terms,
            enable_language_identification=cfg.language_identification,
            # Two-way translation translates per utterance, so it needs the pauses even when the client
            # did not ask for "<end>" tokens (those are then left out of the messages).
            enable_endpoint_detection=cfg.endpoint_detection or cfg.two_way,
            max_endpoint_delay_ms=cfg.max_endpoint_delay_ms,
            decode_interval_s=svc.decode_interval_s,
        )
        speaker_fn: SpeakerFn | None = None
        if cfg.stt.diarize:
            from engines.diarization.online import OnlineSpeakers

            encoder = await svc.inference.run(svc.models.speaker_encoder)
            speaker_fn = OnlineSpeakers(encoder).assign
        self.reservation = await self.minutes.reserve(self.account.id, QUANTUM_MINUTES, kind="realtime")
        self.stream = engine.open_stream(options, speaker_fn=speaker_fn)
        self.decoder = StreamDecoder(cfg.audio_format, cfg.sample_rate, cfg.num_channels,  # type: ignore[arg-type]
                                     max_frame_samples=int(MAX_FRAME_AUDIO_S * SAMPLE_RATE))
        if cfg.two_way:
            assert cfg.language_a and cfg.language_b
            self.two_way = TwoWay(engine, svc.models.translator, pairs, cfg.language_a, cfg.language_b,
                                  cfg.stt.translation_terms, svc.inference)
            if missing:
                await self.send(self.two_way.intro(missing))

    # ------------------------------------------------------------ what the client sends

    async def feed(self, data: bytes) -> None:
        if len(data) > MAX_FRAME_BYTES:
            raise ApiError(413, "frame_too_large", f"an audio message may hold at most {MAX_FRAME_BYTES >> 10} kB; "
                           "send the stream in smaller frames, as it is recorded")
        # Raw PCM converts in microseconds: a thread hop per 100 ms frame would cost hundreds of streams more
        # than the conversion (bench_realtime --free-model). Containers decode on an inference thread.
        pcm = self.decoder.feed(data) if self.decoder.instant else await self._svc.inference.run(self.decoder.feed, data)
        self._push(pcm)
        while self._backlog > MAX_BACKLOG_S * SAMPLE_RATE and not self._process_ended:
            self._drained.clear()
            await self._drained.wait()

    def request_finalize(self) -> None:
        """{"type": "finalize"}: every word heard so far final at once, then "<fin>"; the session goes on."""
        self._queue.append(FINALIZE)
        self._work.set()

    async def end(self) -> None:
        """The empty frame: decode what is left, finalize everything, send `finished`."""
        self._push(await self._svc.inference.run(self.decoder.close))
        self._ending = True
        self._work.set()

    def _push(self, pcm: np.ndarray) -> None:
        if len(pcm):
            self._clock.received(len(pcm))
            self._queue.append(pcm)
            self._backlog += len(pcm)
            self._work.set()

    # ------------------------------------------------------------ processing

    async def process(self) -> None:
        """Runs until the stream is finished: hands queued audio to the engine, sends each update."""
        try:
            while True:
                await self._work.wait()
                self._work.clear()
                while self._queue:
                    await self._run(*self._take())
                if self._ending:
                    await self._finish()
                    return
        finally:
            self._process_ended = True  # a feed() waiting on the backlog must not outlive the processor
            self._drained.set()

    def _take(self) -> tuple[np.ndarray, bool]:
        """The queued audio up to the first finalize request (and whether there was one)."""
        pieces: list[np.ndarray] = []
        while self._queue:
            item = self._queue.pop(0)
            if isinstance(item, _Finalize):
                return _concat(pieces), True
            pieces.append(item)
        return _concat(pieces), False

    async def _run(self, pcm: np.ndarray, finalize: bool) -> None:
        covered = await self._cover(len(pcm))
        work = pcm[:covered]
        self.samples += len(work)
        if self.two_way is not None:
            self.two_way.add_audio(work)
        if len(work) or finalize:
            for update in await asyncio.wrap_future(self.stream.submit(work, finalize=finalize)):
                await self._emit(update)
        self._backlog -= len(pcm)
        self._drained.set()
        if covered < len(pcm):  # the balance ran out: the words paid for are made final, then the session ends
            await self._emit(await self._finish_stream(), final=True)
            raise payment_required("Not enough minutes left to continue: the session ended with the audio "
                                   "the balance covered")

    async def _cover(self, samples: int) -> int:
        """How many of the next `samples` the reservation covers, growing it quantum by quantum first."""
        assert self.reservation is not None
        while quantize_minutes((self.samples + samples) / SAMPLE_RATE) > self.reservation.minutes:
            try:
                self.reservation = await self.minutes.extend(self.reservation, QUANTUM_MINUTES)
            except ApiError as exc:
                if exc.status != 402:
                    raise
                break
        paid = int(round(self.reservation.minutes * 60 * SAMPLE_RATE))
        return max(0, min(samples, paid - self.samples))

    async def _finish_stream(self) -> StreamUpdate:
        return (await asyncio.wrap_future(self.stream.submit(finish=True)))[-1]

    async def _finish(self) -> None:
        update = await self._finish_stream()
        await self._emit(update, final=True)
        done: dict[str, Any] = {"tokens": [], "finished": True, "final_audio_proc_ms": update.final_audio_proc_ms,
                                "total_audio_proc_ms": update.total_audio_proc_ms}
        if self.two_way is not None:
            done.update(self.two_way.summary())
        await self.send(done)

    async def _emit(self, update: StreamUpdate, final: bool = False) -> None:
        """Sends an update unless it repeats the last message (same non-final words, nothing final)."""
        news = update.endpoint or update.finalized or any(t.is_final for t in update.tokens)
        if not news and update.tokens == self._last_partial and not final:
            return
        for t in update.tokens:
            if t.is_final:
                self.ticket.record_lag(self._clock.lag(t.end_ms * SAMPLE_RATE // 1000))
        self._clock.final_to(update.final_audio_proc_ms * SAMPLE_RATE // 1000)
        had_partial = bool(self._last_partial)
        self._last_partial = tuple(t for t in update.tokens if not t.is_final)
        msg = update_message(update, endpoint_token=self.config.endpoint_detection)
        if self.two_way is not None:
            msg.update(await self.two_way.update(update, flush=final))
        # An empty token list still goes out when it withdraws non-final words the client shows.
        if msg["tokens"] or self.two_way is not None or had_partial:
            await self.send(msg)

    async def close(self) -> None:
        """Bills the audio the engine processed (a client that leaves mid-stream pays for that, not for audio
        it sent that was never processed); the reservation always covers it, being grown before the work."""
        if getattr(self, "decoder", None) is not None:
            # Finalized sessions closed it already; a client gone mid-stream leaves bytes nobody will hear.
            await asyncio.to_thread(self.decoder.abort)
        if self.reservation is not None:
            seconds = self.samples / SAMPLE_RATE
            if seconds:
                # `samples` never outgrows the reservation (_ensure_minutes extends it before audio reaches the
                # engine, and holds back what the balance cannot cover), so the charge is always covered.
                await self.minutes.settle(self.reservation, quantize_minutes(seconds), audio_seconds=seconds)
                self._svc.metrics.add_audio("realtime", seconds)
            else:
                await self.minutes.refund(self.reservation, note="no audio")
            self.reservation = None


def _concat(pieces: list[np.ndarray]) -> np.ndarray:
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
