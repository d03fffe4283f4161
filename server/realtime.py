"""One realtime STT session over a WebSocket: decode incoming audio incrementally, feed the engine's
streaming session, send Soniox-shaped token messages, bill minutes as audio arrives, and (with languageA/B)
keep the two-way translation panes.

Receiving and processing are separate tasks: frames are decoded as they arrive, and the processor hands
everything that piled up to the engine in one call, so a slow decode never backs up the socket and a slow
client never holds anything but its own session.
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
from server.errors import ApiError
from server.inference import Inference
from server.metrics import Metrics
from server.minutes import QUANTUM_MINUTES, MinutesPool, Reservation, quantize_minutes
from server.realtime_config import ConfigError, RealtimeConfig, missing_directions
from server.two_way import TwoWay

log = logging.getLogger("speech7.realtime")

# Decoded audio a session may hold ahead of the engine. A client sending faster than real time (a file
# pushed at once) waits in feed() beyond this, so its frames stay in the socket's buffers and a session's
# memory stays bounded (float32 at 16 kHz: 20 s = 1.3 MB).
MAX_BACKLOG_S = 20.0

Send = Callable[[dict[str, Any]], Awaitable[None]]


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


def update_message(update: StreamUpdate, *, endpoint_token: bool = True) -> dict[str, Any]:
    """Soniox's shape; an endpoint becomes an "<end>" token after the utterance's final words."""
    tokens = [token_json(t) for t in update.tokens]
    if update.endpoint and endpoint_token:
        tokens.append({"text": "<end>", "start_ms": update.final_audio_proc_ms, "end_ms": update.final_audio_proc_ms,
                       "confidence": 1.0, "is_final": True})
    return {"tokens": tokens, "final_audio_proc_ms": update.final_audio_proc_ms,
            "total_audio_proc_ms": update.total_audio_proc_ms}


class RealtimeService:
    """Opens realtime sessions with their collaborators, and caps how many run at once in this process."""

    def __init__(
        self, *, capabilities: Capabilities, models: ModelProvider, minutes: MinutesPool, inference: Inference,
        metrics: Metrics, max_sessions: int, decode_interval_s: float,
    ) -> None:
        self.capabilities = capabilities
        self.models = models
        self.minutes = minutes
        self.inference = inference
        self.metrics = metrics
        self.decode_interval_s = decode_interval_s
        self._max_sessions = max_sessions
        self._active = 0

    @property
    def active_sessions(self) -> int:
        """Sessions holding a slot: from open() until close()."""
        return self._active

    def session(self, account: Account, config: RealtimeConfig, send: Send) -> RealtimeSession:
        return RealtimeSession(self, account, config, send)

    def take_slot(self) -> None:
        """At most `realtime_max_sessions` sessions per server process; each holds an inference thread."""
        if self._active >= self._max_sessions:
            raise ApiError(503, "too_many_sessions", "Too many realtime sessions on this server; try again later")
        self._active += 1

    def release_slot(self) -> None:
        self._active -= 1


class RealtimeSession:
    def __init__(self, service: RealtimeService, account: Account, config: RealtimeConfig, send: Send) -> None:
        self._svc = service
        self.account = account
        self.config = config
        self.send = send
        self.reservation: Reservation | None = None
        self.samples = 0  # handed to the engine (minutes are reserved ahead of this)
        self.received = 0  # decoded from the client's frames: what a session is billed for
        self._pending: list[np.ndarray] = []
        self._backlog = 0  # samples queued for the engine or in its current accept_all call
        self._drained = asyncio.Event()  # set whenever the backlog shrinks, and when process() ends
        self._process_ended = False
        self._have_audio = asyncio.Event()
        self._finalize = False
        self._last_partial: tuple[Any, ...] = ()  # non-final tokens of the last message sent
        self._counted = False  # holds one of the server's realtime session slots
        self.two_way: TwoWay | None = None

    @property
    def minutes(self) -> MinutesPool:
        return self._svc.minutes

    async def open(self) -> None:
        """Every refusal (STT off, no minutes, unserved translation pair, missing model) happens here."""
        from engines.stream_decode import StreamDecoder

        svc = self._svc
        sel = svc.capabilities.require_stt(self.account, self.config.stt.model)
        cfg = self.config
        svc.take_slot()
        self._counted = True
        pairs: list[tuple[str, str]] = []
        if cfg.two_way:
            assert cfg.language_a and cfg.language_b
            pairs = [(p[0], p[1]) for p in await svc.inference.run(svc.capabilities.translation_pairs)]
            missing = missing_directions(cfg.language_a, cfg.language_b, pairs)
            if missing and not cfg.allow_missing_directions:
                raise ConfigError(
                    f"no translation model serves {', '.join(missing)}: install a CTranslate2 model for that pair "
                    "(scripts/models import translation ...) or send allow_missing_directions=true"
                )
        engine = await svc.inference.run(svc.models.stt, sel.model)
        if cfg.two_way and not engine.multilingual:
            raise ConfigError(f"two-way translation needs a multilingual STT model; {sel.model} is English-only")
        hints = cfg.stt.language_hints or ((cfg.language_a, cfg.language_b) if cfg.two_way else ())
        try:  # the engine's own rule, as for POST /stt (e.g. an English-only model cannot serve 'de')
            engine.check_language_hints([h for h in hints if h], cfg.stt.language)
        except EngineError as exc:
            raise ConfigError(f"language_hints: {exc}") from None
        if not engine.multilingual:
            hints = ()
        options = StreamOptions(
            language_hints=tuple(h for h in hints if h), language=cfg.stt.language if engine.multilingual else None,
            task="transcribe", terms=cfg.stt.terms,
            enable_language_identification=cfg.language_identification,
            # Two-way translation translates per utterance, so it needs the pauses even when the client
            # did not ask for "<end>" tokens (those are then left out of the messages).
            enable_endpoint_detection=cfg.endpoint_detection or cfg.two_way,
            decode_interval_s=svc.decode_interval_s,
        )
        speaker_fn: SpeakerFn | None = None
        if cfg.stt.diarize:
            from engines.diarization.online import OnlineSpeakers

            encoder = await svc.inference.run(svc.models.speaker_encoder)
            speaker_fn = OnlineSpeakers(encoder).assign
        self.reservation = await self.minutes.reserve(self.account.id, QUANTUM_MINUTES, kind="realtime")
        self.stream = engine.open_stream(options, speaker_fn=speaker_fn)
        self.decoder = StreamDecoder(cfg.audio_format, cfg.sample_rate, cfg.num_channels)  # type: ignore[arg-type]
        if cfg.two_way:
            assert cfg.language_a and cfg.language_b
            self.two_way = TwoWay(engine, svc.models.translator, pairs, cfg.language_a, cfg.language_b,
                                  cfg.stt.translation_terms, svc.inference)

    async def feed(self, data: bytes) -> None:
        pcm = await asyncio.to_thread(self.decoder.feed, data)
        self._push(pcm)
        while self._backlog > MAX_BACKLOG_S * SAMPLE_RATE and not self._process_ended:
            self._drained.clear()
            await self._drained.wait()

    async def finalize(self) -> None:
        pcm = await asyncio.to_thread(self.decoder.close)
        self._push(pcm)
        self._finalize = True
        self._have_audio.set()

    def _push(self, pcm: np.ndarray) -> None:
        self.received += len(pcm)
        if len(pcm):
            self._pending.append(pcm)
            self._backlog += len(pcm)
            self._have_audio.set()

    async def _ensure_minutes(self, total_samples: int) -> None:
        assert self.reservation is not None
        needed = quantize_minutes(total_samples / SAMPLE_RATE)
        while needed > self.reservation.minutes:
            self.reservation = await self.minutes.extend(self.reservation, QUANTUM_MINUTES)

    async def process(self) -> None:
        """Runs until finalize: hands queued audio to the engine, sends each update."""
        try:
            await self._process()
        finally:
            self._process_ended = True  # a feed() waiting on the backlog must not outlive the processor
            self._drained.set()

    async def _process(self) -> None:
        while True:
            await self._have_audio.wait()
            self._have_audio.clear()
            if self._pending:
                pcm = np.concatenate(self._pending)
                self._pending.clear()
                await self._ensure_minutes(self.samples + len(pcm))
                self.samples += len(pcm)
                if self.two_way:
                    self.two_way.add_audio(pcm)
                for update in await self._svc.inference.run(self.stream.accept_all, pcm):
                    await self._emit(update)
                self._backlog -= len(pcm)
                self._drained.set()
            if self._finalize and not self._pending:
                update = await self._svc.inference.run(self.stream.finish)
                await self._emit(update, final=True)
                await self.send({"tokens": [], "finished": True,
                                 "final_audio_proc_ms": update.final_audio_proc_ms,
                                 "total_audio_proc_ms": update.total_audio_proc_ms})
                return

    async def _emit(self, update: StreamUpdate, final: bool = False) -> None:
        """Sends an update unless it repeats the last message (same non-final words, nothing final)."""
        has_final = update.endpoint or any(t.is_final for t in update.tokens)
        if not has_final and update.tokens == self._last_partial and not final:
            return
        had_partial = bool(self._last_partial)
        self._last_partial = tuple(t for t in update.tokens if not t.is_final)
        msg = update_message(update, endpoint_token=self.config.endpoint_detection)
        if self.two_way is not None:
            msg.update(await self.two_way.update(update, flush=final))
        # An empty token list still goes out when it withdraws non-final words the client shows.
        if msg["tokens"] or self.two_way is not None or had_partial:
            await self.send(msg)

    async def close(self) -> None:
        """Settles what was streamed (realtime audio is billed as it is consumed, disconnects included)."""
        if self._counted:
            self._svc.release_slot()
            self._counted = False
        if getattr(self, "decoder", None) is not None:
            # Finalized sessions closed it already; a client gone mid-stream leaves bytes nobody will hear.
            await asyncio.to_thread(self.decoder.abort)
        if self.reservation is not None:
            # A client that leaves mid-stream pays for the audio it sent, processed or not; settle() never
            # charges more than the balance covers.
            seconds = self.received / SAMPLE_RATE  # every sample the engine got came through _push
            if seconds:
                # TODO(issue 15, realtime owner): MinutesPool's caller contract is "reserve or extend BEFORE the
                # work"; bill the audio processed (covered by _ensure_minutes) and drop the cap, which charges
                # less than `received` when audio arrived beyond the reservation and the balance is empty.
                await self.minutes.settle(self.reservation, quantize_minutes(seconds), audio_seconds=seconds,
                                          cap_at_reservation=True)
                self._svc.metrics.add_audio("realtime", seconds)
            else:
                await self.minutes.refund(self.reservation, note="no audio")
            self.reservation = None
