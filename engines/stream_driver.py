"""Runs realtime streams' decode steps on a few shared threads: a stream waiting for its decode holds none.

A stream's work for one call (`accept_all`, `finalize`, `finish`) is a generator: it does the cheap
per-stream work (VAD, features, commit decisions) and yields each decode request it needs; the result is
sent back in. `run_steps` drives such a generator: every request goes to the engine's batch worker at once
(`request.submit(engine)` returns a Future), and the generator continues on a pool thread when the decode is
done. Hundreds of live streams therefore share a handful of threads, their decodes meet in the worker's
batches (one batched step over every stream that needs one), and an asyncio caller awaits the returned
Future without a thread of its own. A blocking caller just waits on the same Future, so both kinds of caller
run one code path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Request(Protocol):
    def submit(self, engine: Any) -> Future[Any]: ...


Steps = Generator[Request, Any, T]


class StreamDriver:
    """A small thread pool that advances step generators between their decodes."""

    def __init__(self, threads: int | None = None) -> None:
        # Per-step work is mostly Python holding the GIL (onnxruntime and numpy's FFT release it): a few
        # threads keep the VAD of some streams running while others' Python runs; more would only contend.
        n = threads or max(2, min(8, os.cpu_count() or 2))
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="stream-step")

    def run(self, engine: Any, steps: Steps[T], out: Future[T] | None = None) -> Future[T]:
        """Starts driving `steps`; the returned Future (`out` when given) settles with its return value."""
        done: Future[T] = out if out is not None else Future()
        self._pool.submit(self._advance, engine, steps, done, None, None)
        return done

    def _advance(self, engine: Any, steps: Steps[T], out: Future[T], value: Any, error: BaseException | None) -> None:
        try:
            request = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            out.set_result(stop.value)
            return
        except BaseException as exc:  # noqa: BLE001 - the caller gets it
            out.set_exception(exc)
            return
        try:
            pending = request.submit(engine)
        except BaseException as exc:  # noqa: BLE001 - thrown into the generator, as a failed decode is
            self._pool.submit(self._advance, engine, steps, out, None, exc)
            return
        pending.add_done_callback(lambda f: self._resume(engine, steps, out, f))

    def _resume(self, engine: Any, steps: Steps[T], out: Future[T], decoded: Future[Any]) -> None:
        # Runs on the thread that settled the decode (the model's batch worker): hand over at once.
        error = CancelledError() if decoded.cancelled() else decoded.exception()
        self._pool.submit(self._advance, engine, steps, out, None if error else decoded.result(), error)


_default: StreamDriver | None = None
_default_lock = threading.Lock()


def default_driver() -> StreamDriver:
    """The process-wide driver every stream uses unless given one."""
    global _default
    with _default_lock:
        if _default is None:
            _default = StreamDriver()
        return _default
