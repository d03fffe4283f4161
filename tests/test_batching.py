"""BatchWorker scheduling (with a recording fake `run_batch`) and real cross-request batching on tiny.en."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engines.batching import PRIORITY_FILE, PRIORITY_REALTIME, BatchWorker, WorkerClosedError

WAIT = 60  # seconds; only a safety net so a broken worker fails the test instead of hanging it


class Recorder:
    """A fake model: records each batch, can hold the worker inside a batch, fails items named 'bad'."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.explode = False

    def __call__(self, items: list[str]) -> list[object]:
        self.batches.append(list(items))
        self.entered.set()
        assert self.gate.wait(WAIT)
        if self.explode:
            raise RuntimeError("the whole batch broke")
        if "poison" in items:  # an item that breaks whatever batch it is in (a model error, a bad input)
            raise RuntimeError("poisoned batch")
        return [ValueError(f"cannot do {i}") if i == "bad" else i.upper() for i in items]

    def hold(self) -> None:
        """Make the next batch block until `release()`, so the test can queue items behind it."""
        self.gate.clear()
        self.entered.clear()

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def _worker(rec: Recorder, **kw: float) -> BatchWorker:
    return BatchWorker(rec, max_batch_size=int(kw.get("max_batch_size", 4)), batch_window_ms=kw.get("window", 0.0))


def _block_on_first(worker: BatchWorker, rec: Recorder) -> object:
    rec.hold()
    fut = worker.submit("first", key="warmup")
    assert rec.entered.wait(WAIT)
    return fut


def test_items_batch_only_with_their_key_and_results_go_to_their_future(rec: Recorder) -> None:
    worker = _worker(rec)
    try:
        first = _block_on_first(worker, rec)
        futs = {name: worker.submit(name, key=key) for name, key in [("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b")]}
        assert worker.stats().queue_depth == 4
        rec.release()
        assert {n: f.result(WAIT) for n, f in futs.items()} == {"a1": "A1", "b1": "B1", "a2": "A2", "b2": "B2"}
        assert first.result(WAIT) == "FIRST"
        assert rec.batches == [["first"], ["a1", "a2"], ["b1", "b2"]]
        stats = worker.stats()
        assert (stats.batches, stats.items, stats.queue_depth) == (3, 5, 0)
        assert stats.batch_sizes == {1: 1, 2: 2}
    finally:
        worker.close()


def test_batches_are_capped_at_max_batch_size(rec: Recorder) -> None:
    worker = _worker(rec, max_batch_size=2)
    try:
        _block_on_first(worker, rec)
        futs = [worker.submit(f"x{i}", key="k") for i in range(5)]
        rec.release()
        assert [f.result(WAIT) for f in futs] == ["X0", "X1", "X2", "X3", "X4"]
        assert rec.batches[1:] == [["x0", "x1"], ["x2", "x3"], ["x4"]]
    finally:
        worker.close()


def test_window_waits_for_company_until_the_batch_is_full(rec: Recorder) -> None:
    # A window far longer than the test: the three items can only come back if a full batch ends the wait.
    worker = _worker(rec, max_batch_size=3, window=600_000)
    try:
        futs = [worker.submit(f"w{i}", key="k") for i in range(3)]
        assert [f.result(WAIT) for f in futs] == ["W0", "W1", "W2"]
        assert rec.batches == [["w0", "w1", "w2"]]
    finally:
        worker.close()


def test_a_lone_item_runs_once_its_window_has_passed(rec: Recorder) -> None:
    worker = _worker(rec, max_batch_size=8, window=20)
    try:
        assert worker.submit("solo", key="k").result(WAIT) == "SOLO"
        assert rec.batches == [["solo"]]
    finally:
        worker.close()


def test_realtime_items_run_before_queued_file_work(rec: Recorder) -> None:
    worker = _worker(rec)
    try:
        _block_on_first(worker, rec)
        files = [worker.submit(f"f{i}", key="file", priority=PRIORITY_FILE) for i in range(2)]
        live = worker.submit("r0", key="live", priority=PRIORITY_REALTIME)
        rec.release()
        assert live.result(WAIT) == "R0" and [f.result(WAIT) for f in files] == ["F0", "F1"]
        assert rec.batches[1:] == [["r0"], ["f0", "f1"]]
    finally:
        worker.close()


def test_one_bad_item_fails_alone(rec: Recorder) -> None:
    worker = _worker(rec)
    try:
        _block_on_first(worker, rec)
        good, bad, other = (worker.submit(n, key="k") for n in ("ok", "bad", "fine"))
        rec.release()
        assert good.result(WAIT) == "OK" and other.result(WAIT) == "FINE"
        with pytest.raises(ValueError, match="cannot do bad"):
            bad.result(WAIT)
        assert rec.batches[1] == ["ok", "bad", "fine"]
    finally:
        worker.close()


def test_a_failing_batch_fails_its_items_and_the_worker_goes_on(rec: Recorder) -> None:
    worker = _worker(rec)
    try:
        first = _block_on_first(worker, rec)
        doomed = [first] + [worker.submit(n, key="k") for n in ("p", "q")]
        rec.explode = True  # both the running batch and the queued one break
        rec.release()
        for fut in doomed:
            with pytest.raises(RuntimeError, match="whole batch broke"):
                fut.result(WAIT)
        rec.explode = False
        assert worker.submit("after", key="k").result(WAIT) == "AFTER"
        assert worker.stats().failed_batches == 2
    finally:
        worker.close()


def test_an_item_that_breaks_its_batch_fails_alone_after_one_by_one_retries(rec: Recorder) -> None:
    worker = _worker(rec)
    try:
        _block_on_first(worker, rec)
        futs = {n: worker.submit(n, key="k") for n in ("a", "poison", "b")}
        rec.release()
        assert futs["a"].result(WAIT) == "A" and futs["b"].result(WAIT) == "B"
        with pytest.raises(RuntimeError, match="poisoned batch"):
            futs["poison"].result(WAIT)
        assert rec.batches[1:] == [["a", "poison", "b"], ["a"], ["poison"], ["b"]]
        assert worker.stats().failed_batches == 1
    finally:
        worker.close()


def test_requests_take_turns_so_a_short_one_is_not_queued_behind_a_long_one(rec: Recorder) -> None:
    worker = _worker(rec, max_batch_size=2)
    long_req, short_req = object(), object()
    try:
        _block_on_first(worker, rec)
        long_futs = [worker.submit(f"l{i}", key="k", group=long_req) for i in range(6)]
        short = worker.submit("s0", key="k", group=short_req)
        rec.release()
        assert short.result(WAIT) == "S0" and [f.result(WAIT) for f in long_futs][-1] == "L5"
        # The short request's only item rides in the first batch after the running one.
        assert rec.batches[1:] == [["l0", "s0"], ["l1", "l2"], ["l3", "l4"], ["l5"]]
    finally:
        worker.close()


def test_the_running_batch_counts_in_a_worker_s_load(rec: Recorder) -> None:
    """What replica choice reads: a worker seconds into a batch with nothing queued is not idle."""
    worker = _worker(rec)
    try:
        assert worker.load == 0
        first = _block_on_first(worker, rec)
        assert (worker.stats().queue_depth, worker.load) == (0, 1)
        queued = worker.submit("a", key="k")
        assert (worker.stats().queue_depth, worker.load) == (1, 2)
        rec.release()
        assert first.result(WAIT) == "FIRST" and queued.result(WAIT) == "A"
        assert worker.load == 0
        # A batch whose items were all cancelled while queued runs nothing and leaves no load behind.
        held = _block_on_first(worker, rec)
        gone = worker.submit("gone", key="k")
        assert gone.cancel()
        rec.release()
        assert held.result(WAIT) == "FIRST"
        assert worker.submit("after", key="k").result(WAIT) == "AFTER"
        assert worker.load == 0
    finally:
        worker.close()


def test_busy_time_is_measured(rec: Recorder) -> None:
    worker = _worker(rec)
    try:
        worker.submit("x", key="k").result(WAIT)
        stats = worker.stats()
        assert stats.busy_seconds > 0 and 0 < stats.busy_ratio <= 1
    finally:
        worker.close()


def test_cancelled_items_are_not_run(rec: Recorder) -> None:
    worker = _worker(rec)
    try:
        _block_on_first(worker, rec)
        gone, kept = worker.submit("gone", key="k"), worker.submit("kept", key="k")
        assert gone.cancel()
        rec.release()
        assert kept.result(WAIT) == "KEPT"
        assert rec.batches[1] == ["kept"]
    finally:
        worker.close()


def test_close_fails_pending_items_finishes_the_running_batch_and_refuses_new_work(rec: Recorder) -> None:
    worker = _worker(rec)
    running = _block_on_first(worker, rec)
    pending = [worker.submit(n, key="k") for n in ("p1", "p2")]
    closer = threading.Thread(target=worker.close)
    closer.start()
    for fut in pending:
        with pytest.raises(WorkerClosedError):
            fut.result(WAIT)
    rec.release()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert running.result(WAIT) == "FIRST"
    with pytest.raises(WorkerClosedError):
        worker.submit("late", key="k")
    assert rec.batches == [["first"]]


async def test_submit_async_awaits_the_result(rec: Recorder) -> None:
    worker = _worker(rec)
    try:
        assert await worker.submit_async("async", key="k") == "ASYNC"
    finally:
        worker.close()


# ---------------------------------------------------------------- the real model


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


@pytest.mark.slow
def test_concurrent_requests_share_generate_calls_and_get_their_own_text(whisper_tiny_dir: Path, testdata: Path) -> None:
    from engines.audio import decode_file
    from engines.types import SttRequest
    from engines.whisper import WhisperEngine

    names = ["jfk.flac", "librispeech_2412-153948-0000.flac", "LJ001-0001.wav", "LJ001-0002.wav",
             "LJ001-0003.wav", "LJ001-0004.wav"]
    clips = [decode_file(testdata / "en" / n) for n in names]
    # A generous window, so requests started together reliably meet in the queue; a full batch ends it early.
    engine = WhisperEngine(whisper_tiny_dir, model_name="tiny.en", max_batch_size=len(clips), batch_window_ms=1000)
    try:
        serial = [engine.transcribe(SttRequest(c)).text for c in clips]
        before = engine.batch_stats()
        barrier = threading.Barrier(len(clips))

        def run(clip: object) -> str:
            barrier.wait(WAIT)
            return engine.transcribe(SttRequest(clip)).text  # type: ignore[arg-type]

        with ThreadPoolExecutor(len(clips)) as pool:
            concurrent = list(pool.map(run, clips))
        after = engine.batch_stats()
    finally:
        engine.close()

    items, batches = after.items - before.items, after.batches - before.batches
    assert items == len(clips)  # every clip is one chunk of < 30 s
    assert batches < items
    assert [_words(t) for t in concurrent] == [_words(t) for t in serial]
    assert "americans" in _words(concurrent[0]) and "printing" in _words(concurrent[2])


@pytest.mark.slow
def test_a_short_request_runs_on_the_other_replica_while_a_long_one_holds_the_first(
    whisper_tiny_dir: Path, testdata: Path, long_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas (the CPU default): a short request is not held behind a batch of a long file that cannot
    be interrupted; it is decoded, right, while that batch is still running."""
    from engines.audio import decode_file
    from engines.types import SttRequest
    from engines.whisper import WhisperEngine

    engine = WhisperEngine(whisper_tiny_dir, model_name="tiny.en", workers_per_device=2)
    first = engine.workers[0]
    held, running = threading.Event(), threading.Event()
    original = first._run_batch

    def long_batch(items: list) -> object:  # type: ignore[type-arg]
        running.set()
        assert held.wait(WAIT)
        return original(items)

    monkeypatch.setattr(first, "_run_batch", long_batch)
    try:
        with ThreadPoolExecutor(1) as pool:
            long_text = pool.submit(lambda: engine.transcribe(SttRequest(decode_file(long_clip))).text)
            assert running.wait(WAIT)
            short = engine.transcribe(SttRequest(decode_file(testdata / "en" / "jfk.flac")))
            assert not long_text.done()  # the long file's batch is still held
            held.set()
            assert "americans" in _words(short.text)
            assert len(_words(long_text.result(WAIT))) > 50
    finally:
        held.set()
        engine.close()


def test_the_server_loads_two_replicas_on_a_cpu(live_server) -> None:  # type: ignore[no-untyped-def]
    """What makes the short request above fast through the API: the server's default on a CPU."""
    engine = live_server.services.models.stt("tiny.en")
    assert engine.device == "cpu" and len(engine.workers) == 2
