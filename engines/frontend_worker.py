"""The STT front end's unit of work, run in a worker process: media file -> raw PCM file + speech spans.

One pass over the media: each decoded block is appended to the PCM file and fed to the streaming Silero
VAD, so neither the recording nor its padded copies are ever held (memory stays at a few 30 s blocks).
Everything here is picklable plain data in and out; errors come back as values (`PrepareResult.error`)
because exception classes with their own constructors do not survive pickling intact.

Lifetime: workers exit when the server process does, however it ended (`start_worker`).

Cancellation: the caller creates `cancel_flag` (a file) when its client has gone; the worker checks for
it between blocks and stops within one block.
"""

from __future__ import annotations

import os
import select
import threading
import time
from dataclasses import dataclass

import numpy as np

from engines.types import SAMPLE_RATE

BLOCK_SECONDS = 30.0


@dataclass(frozen=True)
class PrepareJob:
    media: str  # the uploaded file
    pcm: str  # where to write float32 little-endian mono 16 kHz samples
    vad: bool  # find speech spans (else `speech` is None)
    max_seconds: float | None  # stop decoding here (the balance's cover, the server's cap)
    cancel_flag: str  # a path: once it exists, stop


@dataclass(frozen=True)
class PrepareResult:
    samples: int
    truncated: bool  # the media held more audio than max_seconds
    speech: tuple[tuple[int, int], ...] | None
    decode_s: float  # time spent decoding and writing
    vad_s: float  # time spent in Silero
    error: tuple[str, str] | None = None  # (kind, message): "empty", "undecodable" (message = the reason), "cancelled"


def prepare(job: PrepareJob) -> PrepareResult:
    from engines.audio import EmptyMediaError, MediaError, UndecodableMediaError
    from engines.decode_blocks import BlockDecoder
    from engines.vad import SileroStream, spans_from_probabilities, vad_options

    decoder = BlockDecoder(job.media, BLOCK_SECONDS, job.max_seconds)
    vad = SileroStream() if job.vad else None
    probs: list[np.ndarray] = []
    vad_s = 0.0
    began = time.perf_counter()
    try:
        with open(job.pcm, "wb") as out:
            for block in decoder:
                if os.path.exists(job.cancel_flag):
                    return PrepareResult(0, False, None, 0.0, 0.0, ("cancelled", "the client went away"))
                out.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
                if vad is not None:
                    t = time.perf_counter()
                    probs.append(vad.feed(block))
                    vad_s += time.perf_counter() - t
            speech = None
            if vad is not None:
                t = time.perf_counter()
                probs.append(vad.flush())
                spans = spans_from_probabilities(np.concatenate(probs), decoder.samples, vad_options())
                speech = tuple(spans) if decoder.samples else ()
                vad_s += time.perf_counter() - t
    except EmptyMediaError as exc:
        return PrepareResult(0, False, None, 0.0, 0.0, ("empty", str(exc)))
    except UndecodableMediaError as exc:
        return PrepareResult(0, False, None, 0.0, 0.0, ("undecodable", exc.detail))
    except MediaError as exc:
        return PrepareResult(0, False, None, 0.0, 0.0, ("undecodable", str(exc)))
    decode_s = time.perf_counter() - began - vad_s
    return PrepareResult(decoder.samples, decoder.truncated, speech, decode_s, vad_s)


def start_worker(server_pid: int) -> None:
    """The pool's initializer: leave with the server, then warm up.

    A ProcessPoolExecutor worker waits for work on a pipe whose write end it holds itself, so it never sees
    the server die: after kill -9 or the OOM killer, each worker (FFmpeg and Silero loaded, ~110 MB) and the
    forkserver it keeps alive would stay forever, and every crash would leak more memory."""
    threading.Thread(target=_exit_with, args=(server_pid,), name="s7-exit-with-server", daemon=True).start()
    warm()


def _exit_with(pid: int) -> None:
    try:
        handle = os.pidfd_open(pid)  # readable once the process has exited (Linux >= 5.3)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):  # no pidfd here: look every second instead
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
    select.select([handle], [], [])
    os._exit(0)  # no cleanup to do: the next server sweeps our temporary files (server.leases)


def warm() -> int:
    """Run once per worker process at start: imports and the Silero session, so the first request does
    not pay for them."""
    from engines.vad import SileroStream

    stream = SileroStream()
    stream.feed(np.zeros(SAMPLE_RATE // 10, dtype=np.float32))
    return os.getpid()
