"""A cross-request batch worker: one owner thread per loaded model, fed by a priority queue.

Why: a CTranslate2 model runs one call at a time per replica, and a batched call of N items costs far less
than N single calls (the GPU or the CPU's SIMD lanes are filled once). So every request thread only prepares
its items (features, prompts) and submits them here; the owner thread groups compatible items of *all*
requests into one `run_batch` call and settles each item's future.

Scheduling: items carry a priority (realtime before files) and a group (the request or stream they belong
to). The queue is served in (priority, rank in its group, arrival) order: every group's oldest item comes
before any group's second one, so a short request that arrives while a long file has items queued is in
the very next batch instead of behind the file (fair queuing, round robin between requests). The worker
takes the head item, waits up to `batch_window_ms` after it arrived for company (or until a full batch of
its key is queued), then runs the head's key with up to `max_batch_size` items of that key in that order.
Items that wait while a batch runs are already past their window, so a busy worker never sleeps: this is
what makes it continuous batching rather than fixed-interval batching.

Fault isolation: if `run_batch` raises for a batch of several items, each item is run again on its own, so
one bad item fails only its own request.

Thread contract: `submit` from any thread; `run_batch` only ever runs on the owner thread; every future is
settled (result, exception, or WorkerClosedError at close), whatever happens.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from engines.types import EngineError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

PRIORITY_REALTIME = 0
PRIORITY_FILE = 1


class WorkerClosedError(EngineError):
    """The model was unloaded (server shutdown) before this item ran."""


@dataclass(frozen=True)
class BatchStats:
    batches: int  # run_batch calls made
    items: int  # items that went through run_batch
    failed_batches: int  # run_batch calls that raised
    batch_sizes: dict[int, int]  # batch size -> how many batches had it
    queue_depth: int  # items waiting right now
    busy_seconds: float = 0.0  # time spent inside run_batch since start (a counter: rate() = busy share)
    busy_ratio: float = 0.0  # share of the last BUSY_WINDOW_S spent inside run_batch (the model's utilisation)

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


BUSY_WINDOW_S = 10.0


@dataclass(order=True)
class _Entry:
    priority: int
    seq: int
    key: Hashable = field(compare=False)
    item: Any = field(compare=False)
    future: Future = field(compare=False)
    enqueued: float = field(compare=False)
    group: Any = field(default=None, compare=False)


def service_order(queue: Sequence[_Entry]) -> list[_Entry]:
    """The queue in serving order: (priority, rank of the entry within its group, arrival). Entries without
    a group are each a group of their own."""
    ranks: dict[int, int] = {}
    keyed = []
    for e in sorted(queue):
        g = id(e.group) if e.group is not None else -1 - e.seq
        rank = ranks.get(g, 0)
        ranks[g] = rank + 1
        keyed.append(((e.priority, rank, e.seq), e))
    keyed.sort(key=lambda x: x[0])
    return [e for _, e in keyed]


def take_batch(queue: Sequence[_Entry], limit_of: Callable[[Hashable], int]) -> tuple[list[_Entry], list[_Entry]]:
    """Splits a queue into (the batch: up to `limit_of(key)` entries of the head's key in serving order; the
    rest)."""
    order = service_order(queue)
    if not order:
        return [], []
    key = order[0].key
    limit = limit_of(key)
    taken: list[_Entry] = []
    rest: list[_Entry] = []
    for entry in order:
        if len(taken) < limit and entry.key == key:
            taken.append(entry)
        else:
            rest.append(entry)
    return taken, rest


class BatchWorker(Generic[T, R]):
    """Groups submitted items into `run_batch(items) -> results` calls on a single owner thread.

    `run_batch` returns one entry per item, in order: a result, or an Exception that fails that item only.
    If `run_batch` itself raises, every item of that batch fails with the exception. The thread never dies.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        max_batch_size: int,
        batch_window_ms: float,
        name: str = "batch-worker",
        on_stage: Callable[[str, float], None] | None = None,
        batch_limit: Callable[[Hashable], int] | None = None,
    ) -> None:
        """`on_stage("queue_wait", seconds)` is called per item when its batch starts (metrics)."""
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._run_batch = run_batch
        self._on_stage = on_stage
        self.max_batch_size = max_batch_size
        # Items of some keys are smaller (a realtime window encoded at its own length): more fit a batch.
        self._limit = batch_limit or (lambda _key: max_batch_size)
        self.batch_window_s = max(0.0, batch_window_ms) / 1000.0
        self._queue: list[_Entry] = []  # a heap
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._batches = 0
        self._items = 0
        self._failed = 0
        self._sizes: Counter[int] = Counter()
        self._busy = 0.0
        self._running = 0  # items in the batch being run
        # (start, end) of recent batches, for busy_ratio; ends only grow (one thread appends), so the stale
        # ones are always at the left and leave in O(1) each, however many tiny batches a window holds.
        self._recent: deque[tuple[float, float]] = deque()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ submitting
    def submit(self, item: T, key: Hashable, priority: int = PRIORITY_FILE, group: Any = None) -> Future[R]:
        """Queues one item; only items with an equal `key` share a batch. Lower priority runs first; within a
        priority, groups (requests, streams) take turns."""
        fut: Future[R] = Future()
        with self._cond:
            if self._closed:
                raise WorkerClosedError("the model is shutting down")
            heapq.heappush(self._queue, _Entry(priority, next(self._seq), key, item, fut, time.monotonic(), group))
            self._cond.notify()
        return fut

    async def submit_async(self, item: T, key: Hashable, priority: int = PRIORITY_FILE, group: Any = None) -> R:
        return await asyncio.wrap_future(self.submit(item, key, priority, group))

    # ------------------------------------------------------------------ metrics and shutdown
    def stats(self) -> BatchStats:
        with self._cond:
            now = time.monotonic()
            since = now - BUSY_WINDOW_S
            busy = sum(max(0.0, e - max(s, since)) for s, e in self._recent if e > since)
            return BatchStats(self._batches, self._items, self._failed, dict(self._sizes), len(self._queue),
                              self._busy, min(1.0, busy / BUSY_WINDOW_S))

    @property
    def load(self) -> int:
        """Items waiting plus those in the running batch (cheap: read on every submission to pick the least
        busy replica; a replica whose queue is empty may still be seconds into a batch)."""
        return len(self._queue) + self._running

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float | None = None) -> None:
        """Fails every queued item, lets the running batch finish, and joins the thread."""
        with self._cond:
            self._closed = True
            pending, self._queue = self._queue, []
            self._cond.notify_all()
        for entry in pending:
            if entry.future.set_running_or_notify_cancel():
                entry.future.set_exception(WorkerClosedError("the model was unloaded before this request ran"))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the owner thread
    def _next_batch(self) -> list[_Entry] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            while not self._closed:
                head = service_order(self._queue)[0]
                same = sum(1 for e in self._queue if e.key == head.key)
                remaining = head.enqueued + self.batch_window_s - time.monotonic()
                if same >= self._limit(head.key) or remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closed:
                return None
            # The head is chosen again: a realtime item that arrived during the window goes first.
            batch, rest = take_batch(self._queue, self._limit)
            heapq.heapify(rest)
            self._queue = rest
            self._running = len(batch)  # in the same step, so `load` never misses them between queue and batch
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [e for e in batch if e.future.set_running_or_notify_cancel()]  # drops cancelled items
            if live:
                self._run(live)  # it clears `_running` before settling the futures
            else:
                with self._cond:
                    self._running = 0

    def _run(self, batch: list[_Entry]) -> None:
        started = time.monotonic()
        if self._on_stage is not None:
            for e in batch:
                self._on_stage("queue_wait", started - e.enqueued)
        results, failed = self._call(batch)
        if failed and len(batch) > 1:
            # One item may have broken the batch: run each alone, so only that item's request fails.
            log.warning("retrying the %d items of a failed batch one by one", len(batch))
            results = [self._call([e])[0][0] for e in batch]
        ended = time.monotonic()
        with self._cond:
            self._running = 0  # before the futures settle: a caller that got its result sees the load gone
            self._batches += 1
            self._items += len(batch)
            self._failed += failed
            self._sizes[len(batch)] += 1
            self._busy += ended - started
            while self._recent and self._recent[0][1] <= ended - BUSY_WINDOW_S:
                self._recent.popleft()
            self._recent.append((started, ended))
        for entry, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(result)

    def _call(self, batch: list[_Entry]) -> tuple[list[Any], bool]:
        """(one result or exception per entry, whether run_batch itself raised)."""
        try:
            results = list(self._run_batch([e.item for e in batch]))
            if len(results) != len(batch):
                raise EngineError(f"batch returned {len(results)} results for {len(batch)} items")
            return results, False
        except BaseException as exc:  # noqa: BLE001 - the owner thread must survive anything
            log.exception("batch of %d items failed", len(batch))
            return [exc] * len(batch), True
