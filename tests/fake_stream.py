"""The fake realtime stream (`SttStream`) of tests/fakes.py's FakeStt: it hears tones as the other fakes do,
holds its newest word pending as a real engine does, and runs its calls on one worker thread whose speed
and load a test controls (StreamLoad)."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from engines.types import (
    SAMPLE_RATE,
    EngineError,
    SpeakerFn,
    StreamOptions,
    StreamToken,
    StreamUpdate,
    SttStream,
)
from tests.fakes import BLOCK, dominant_hz, voiced_blocks

if TYPE_CHECKING:
    from tests.fakes import FakeStt


class StreamLoad:
    """The work of an engine's streams runs on one thread (as a model's batch worker), each call taking
    `delay_s` (a slow decode) and waiting while `gate` is clear (a model busy elsewhere); `busy_ratio` is the
    share of its time the model reports as busy (engines.batching.BatchStats)."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.busy_ratio = 0.0
        self.gate = threading.Event()
        self.gate.set()
        self.calls = 0  # stream calls started
        self.opened: list[StreamOptions] = []  # the options of every stream opened, in order
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="fake-stream")

    def reset(self) -> None:
        self.delay_s, self.busy_ratio = 0.0, 0.0
        self.gate.set()


class FakeStream(SttStream):
    """`SttStream`: each voiced second becomes a token once it is complete. The newest one stays non-final (as
    a real engine's last words) until another second is complete, a finalize, or the end of the stream."""

    def __init__(self, engine: FakeStt, options: StreamOptions, speaker_fn: SpeakerFn | None) -> None:
        self._engine = engine
        self._language = options.language or (options.language_hints[0] if options.language_hints else "en")
        self._speaker_fn = speaker_fn
        self._audio = np.zeros(0, dtype=np.float32)
        self._done = 0  # samples turned into tokens (or skipped as silence)
        self._pending: list[tuple[int, np.ndarray]] = []  # (start, block) of the newest, non-final word
        self._finished = False

    def submit(
        self, pcm: np.ndarray | None = None, *, finalize: bool = False, finish: bool = False
    ) -> Future[list[StreamUpdate]]:
        load = self._engine.streams

        def run() -> list[StreamUpdate]:
            load.calls += 1
            load.gate.wait()
            if load.delay_s:
                threading.Event().wait(load.delay_s)  # the decode's cost
            if self._engine.fail is not None:
                raise self._engine.fail
            if finish:
                return [self._finish()]
            return [self._accept(np.zeros(0, np.float32) if pcm is None else pcm, finalize)]

        return load.worker.submit(run)

    def _accept(self, pcm: np.ndarray, finalize: bool) -> StreamUpdate:
        if self._finished:
            raise EngineError("the stream is finished")
        self._audio = np.concatenate([self._audio, np.asarray(pcm, dtype=np.float32)])
        complete = (len(self._audio) // BLOCK) * BLOCK
        words = [(self._done + offset, block) for offset, block in voiced_blocks(self._audio[self._done : complete])]
        self._done = complete
        words = self._pending + words
        self._pending = [] if finalize else words[-1:]
        final = words if finalize else words[:-1]
        if finalize:
            self._done = len(self._audio)  # a trailing part-second is too short to be a word
        return self._update([self._token(s, b, True) for s, b in final], finalized=finalize)

    def _finish(self) -> StreamUpdate:
        update = self._accept(np.zeros(0, np.float32), finalize=True)
        self._finished = True
        return StreamUpdate(update.tokens, update.final_audio_proc_ms, update.total_audio_proc_ms)

    def _token(self, start: int, block: np.ndarray, final: bool) -> StreamToken:
        speaker = self._speaker_fn(block) if self._speaker_fn and final else None
        return StreamToken(f" tone{dominant_hz(block)}", start * 1000 // SAMPLE_RATE,
                           (start + BLOCK) * 1000 // SAMPLE_RATE, 0.9, final, self._language, speaker)

    def _update(self, final: list[StreamToken], finalized: bool = False) -> StreamUpdate:
        pending = [self._token(s, b, False) for s, b in self._pending]
        head = self._pending[0][0] if self._pending else self._done
        return StreamUpdate(tuple(final + pending), head * 1000 // SAMPLE_RATE,
                            len(self._audio) * 1000 // SAMPLE_RATE, finalized=finalized)
