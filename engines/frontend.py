"""The STT front end: uploaded media -> 16 kHz PCM on disk + Silero speech spans, in worker processes.

Why processes: decoding (a Python step per codec frame in PyAV) and Silero VAD are small per request (on
one core ~0.3 s for two minutes of audio) but they ran in the server's threads, where the GIL serialised
them with each other, with the event loop and with the batch worker that feeds the GPU: on a 16-core GPU
box the server used 1.5 cores and the GPU sat idle. In worker processes they run on every core, and the
server process keeps only HTTP, feature extraction (numpy, off the GIL) and the batch worker.

Why a file: the decoded audio goes to a raw float32 file beside the upload instead of through a pipe, and
the engine reads each <= 30 s chunk from it when the chunk is due (`PreparedAudio.read`), so a request
holds a few chunks in memory, not its recording (an hour is 230 MB as float32).

Contract: `prepare` may be called from any thread; `aprepare` from the event loop (cancelling its task
stops the worker within one 30 s block and removes the files). Workers are forked lazily from a
forkserver that has the decoding modules imported, so starting a pool costs milliseconds. `workers=0`
runs the same job in threads of this process (tests, tiny installs).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import secrets
import threading
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.audio import EmptyMediaError, UndecodableMediaError
from engines.frontend_worker import PrepareJob, PrepareResult, prepare, start_worker, warm
from engines.types import SAMPLE_RATE, EngineError, StageFn

log = logging.getLogger(__name__)


class MediaCancelledError(EngineError):
    """The caller cancelled the preparation (its client disconnected)."""


class MediaTooLongError(EngineError):
    """The media holds more audio than `max_seconds` allowed; decoding stopped there."""

    def __init__(self, max_seconds: float) -> None:
        super().__init__(f"the media is longer than {max_seconds:g} s")
        self.max_seconds = max_seconds


@dataclass(frozen=True)
class PreparedAudio:
    """Decoded audio on disk (float32 LE mono 16 kHz) and where its speech is. Implements AudioSource."""

    pcm_path: Path
    samples: int
    truncated: bool  # decoding stopped at the caller's max_seconds with audio left
    speech: tuple[tuple[int, int], ...] | None  # Silero spans in samples (None: VAD was not asked for)

    @property
    def duration(self) -> float:
        return self.samples / SAMPLE_RATE

    def read(self, start: int, end: int) -> np.ndarray:
        start, end = max(0, start), min(end, self.samples)
        if end <= start:
            return np.zeros(0, dtype=np.float32)
        return np.fromfile(self.pcm_path, dtype="<f4", count=end - start, offset=start * 4)

    def load(self) -> np.ndarray:
        """The whole recording in memory (the diarizer needs it; STT reads chunk by chunk)."""
        return self.read(0, self.samples)

    def discard(self) -> None:
        self.pcm_path.unlink(missing_ok=True)


def usable_cores() -> int:
    """The cores this process may run on (the front end's default worker count: decode and VAD are the
    work that must not serialise; CTranslate2's CPU threads, engines.manager)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class MediaFrontend:
    """Owns the worker pool (created on first use, closed by `close`)."""

    def __init__(self, tmp_dir: Path, workers: int | None = None, on_stage: StageFn | None = None) -> None:
        self.tmp_dir = Path(tmp_dir)
        self.workers = usable_cores() if workers is None or workers < 0 else workers
        self._on_stage = on_stage
        self._executor: Executor | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the pool
    def _pool(self) -> Executor:
        with self._lock:
            if self._executor is None:
                if self.workers == 0:
                    self._executor = ThreadPoolExecutor(usable_cores(), thread_name_prefix="s7-frontend")
                else:
                    ctx = multiprocessing.get_context("forkserver")
                    ctx.set_forkserver_preload(["engines.frontend_worker", "engines.decode_blocks", "engines.vad"])
                    self._executor = ProcessPoolExecutor(
                        self.workers, mp_context=ctx, initializer=start_worker, initargs=(os.getpid(),))
                log.info("media front end: %d %s", self.workers or usable_cores(),
                         "worker processes" if self.workers else "threads")
            return self._executor

    def start(self) -> None:
        """Starts the workers now (they warm up in parallel) instead of at the first request."""
        pool = self._pool()
        if isinstance(pool, ProcessPoolExecutor):
            for f in [pool.submit(warm) for _ in range(self.workers)]:
                f.result()

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ preparing one upload
    def _job(self, media: Path, vad: bool, max_seconds: float | None) -> PrepareJob:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        name = f"pcm_{secrets.token_hex(10)}"
        return PrepareJob(str(media), str(self.tmp_dir / f"{name}.f32"), vad, max_seconds,
                          str(self.tmp_dir / f"{name}.cancel"))

    def _submit(self, job: PrepareJob) -> Future[PrepareResult]:
        return self._pool().submit(prepare, job)

    def _finish(self, job: PrepareJob, result: PrepareResult, max_seconds: float | None) -> PreparedAudio:
        Path(job.cancel_flag).unlink(missing_ok=True)
        if result.error is not None:
            Path(job.pcm).unlink(missing_ok=True)
            kind, message = result.error
            if kind == "cancelled":
                raise MediaCancelledError(message)
            if kind == "empty":
                raise EmptyMediaError(message)
            raise UndecodableMediaError(message)
        if self._on_stage is not None:
            self._on_stage("decode", result.decode_s)
            if result.speech is not None:
                self._on_stage("vad", result.vad_s)
        prepared = PreparedAudio(Path(job.pcm), result.samples, result.truncated, result.speech)
        if result.truncated and max_seconds is not None:
            prepared.discard()
            raise MediaTooLongError(max_seconds)
        return prepared

    def prepare(self, media: Path, *, vad: bool = True, max_seconds: float | None = None) -> PreparedAudio:
        """Blocking. Raises MediaError (undecodable/empty), MediaTooLongError (more than max_seconds)."""
        job = self._job(media, vad, max_seconds)
        try:
            result = self._submit(job).result()
        except BaseException:
            Path(job.pcm).unlink(missing_ok=True)
            raise
        return self._finish(job, result, max_seconds)

    async def aprepare(self, media: Path, *, vad: bool = True, max_seconds: float | None = None) -> PreparedAudio:
        """`prepare` for the event loop; cancelling the awaiting task stops the worker and cleans up."""
        job = self._job(media, vad, max_seconds)
        future = asyncio.wrap_future(self._submit(job))
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            Path(job.cancel_flag).touch()
            try:
                await future  # the worker notices the flag within one block
            except BaseException:  # noqa: BLE001 - we are cancelled anyway; the files go below
                pass
            Path(job.pcm).unlink(missing_ok=True)
            Path(job.cancel_flag).unlink(missing_ok=True)
            raise
        except BaseException:
            Path(job.pcm).unlink(missing_ok=True)
            raise
        return self._finish(job, result, max_seconds)
