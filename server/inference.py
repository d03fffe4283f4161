"""The threads that wait on the engines.

Engine calls block: a transcription waits while the model's batch worker (engines.batching) runs its items
together with other requests', a realtime session on decoding its frames, a TTS stream on each sentence.
Every such wait holds a thread, so the server owns a pool sized for them instead of borrowing the event
loop's default executor (cores + 4 threads, which would cap concurrent requests far below what one batched
model serves, and which quick chores such as file writes also use). The lifespan shuts it down after the
models are closed, so no wait outlives the engines it waits on.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from server.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")


def inference_threads(settings: Settings) -> int:
    """Room for every realtime session to decode a frame at once (their stream decodes are awaited as
    Futures and hold no thread), plus room for files, jobs and TTS."""
    return max(32, settings.realtime_max_sessions + 16)


class Inference:
    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s7-infer")

    def submit(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[R]:
        """Starts `fn` on an inference thread; the caller awaits (or shields) the future."""
        return asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.submit(fn, *args, **kwargs)

    def shutdown(self) -> None:
        """Drops calls not started yet; running ones end on their own (the closed models fail their waits)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
