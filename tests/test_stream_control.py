"""Realtime stream control on real models: finalize-and-continue, the endpoint bound, per-utterance language,
and many streams driven without a thread each (engines.streaming, engines.stream_driver)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.types import SAMPLE_RATE, EngineError, StreamToken, StreamUpdate
from engines.wer import wer
from tests.test_streaming import FRAME, finals, load, open_stream

pytestmark = pytest.mark.slow


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def feed(stream, audio: np.ndarray) -> list[StreamUpdate]:
    return [stream.accept(audio[i : i + FRAME]) for i in range(0, len(audio), FRAME)]


def test_finalize_makes_everything_final_and_the_stream_goes_on(tiny, testdata: Path) -> None:
    audio = load(testdata / "en" / "LJ001-0001.wav")  # one sentence, no pause long enough to end it
    cut = 4 * SAMPLE_RATE  # mid-sentence, mid-speech
    stream = open_stream(tiny)
    before = feed(stream, audio[:cut])
    done = stream.finalize()

    assert done.finalized and not done.endpoint
    assert done.tokens and all(t.is_final for t in done.tokens), "nothing stays pending after finalize"
    assert done.final_audio_proc_ms == done.total_audio_proc_ms == cut * 1000 // SAMPLE_RATE
    head = finals([*before, done])
    # Nothing was lost: the words of the first 4 s are all there, once.
    assert wer("Printing, in the only sense with which we are at present concerned,",
               "".join(t.text for t in head)) < 0.3, "".join(t.text for t in head)

    after = feed(stream, audio[cut:])
    last = stream.finish()
    tail = finals([*after, last])
    assert tail, "the stream goes on transcribing after finalize"
    assert not any(u.finalized for u in after)
    everything = head + tail
    for a, b in zip(everything, everything[1:], strict=False):  # each word final once, in order
        assert a.start_ms <= a.end_ms <= b.start_ms <= b.end_ms, (a, b)
    assert all(t.start_ms >= done.final_audio_proc_ms - 50 for t in tail)
    text = "".join(t.text for t in everything)
    assert wer((testdata / "en" / "LJ001-0001.txt").read_text(), text) < 0.25, text

    # accept_all(..., finalize=True) is the same in one call (a server that queues the request with audio).
    other = open_stream(tiny)
    updates = other.accept_all(audio[:cut], finalize=True)
    assert updates[-1].finalized and all(t.is_final for t in updates[-1].tokens)
    assert updates[-1].final_audio_proc_ms == updates[-1].total_audio_proc_ms


def test_max_endpoint_delay_bounds_the_wait_for_the_endpoint(tiny, testdata: Path) -> None:
    speech = load(testdata / "en" / "LJ001-0002.wav")  # "in being comparatively modern."
    audio = np.concatenate([speech, silence(3.0)])
    speech_end_ms = len(speech) * 1000 // SAMPLE_RATE

    def endpoint_at(**options: object) -> int:
        updates = feed(open_stream(tiny, enable_endpoint_detection=True, **options), audio)
        at = [u.total_audio_proc_ms for u in updates if u.endpoint]
        assert len(at) == 1, at
        head = "".join(t.text for t in finals(updates))
        assert wer("in being comparatively modern.", head) < 0.25, head
        return at[0]

    # A client that wants endpoints within 500 ms of the end of speech gets them, although this stream
    # would wait 2 s of silence on its own.
    assert endpoint_at(endpoint_silence_s=2.0, max_endpoint_delay_ms=500) <= speech_end_ms + 500
    assert endpoint_at(endpoint_silence_s=2.0) >= speech_end_ms + 1500
    assert endpoint_at(endpoint_silence_s=0.8, max_endpoint_delay_ms=3000) <= speech_end_ms + 1000
    with pytest.raises(EngineError, match="max_endpoint_delay_ms"):
        open_stream(tiny, max_endpoint_delay_ms=100)


def test_language_is_identified_again_after_each_endpoint(base, testdata: Path) -> None:
    """A speaker switching between the hinted languages: each utterance is transcribed in its own."""
    parts = [("en", "LJ001-0004"), ("de", "recorded_sample_01"), ("en", "LJ001-0009")]
    clips = [load(testdata / lang / f"{name}.wav") for lang, name in parts]
    gap = silence(1.2)
    audio = np.concatenate([x for clip in clips for x in (clip, gap)])
    bounds, t = [], 0
    for clip in clips:
        bounds.append((t, t + len(clip)))
        t += len(clip) + len(gap)
    stream = open_stream(base, language_hints=("en", "de"), enable_language_identification=True,
                         enable_endpoint_detection=True)
    updates = feed(stream, audio)
    tokens = finals([*updates, stream.finish()])
    assert sum(u.endpoint for u in updates) == 3

    def part(i: int) -> list[StreamToken]:
        lo, hi = bounds[i]
        return [tok for tok in tokens if lo * 1000 // SAMPLE_RATE - 300 <= tok.start_ms < hi * 1000 // SAMPLE_RATE]

    for i, (lang, name) in enumerate(parts):
        words = part(i)
        text = "".join(tok.text for tok in words)
        assert {tok.language for tok in words} == {lang}, (lang, text)
        assert wer((testdata / lang / f"{name}.txt").read_text(), text) < 0.35, (lang, text)


@pytest.fixture(scope="module")
def one_replica(whisper_tiny_dir: Path) -> Iterator[Any]:
    """tiny.en behind a single batch worker, as on a GPU with one replica: every decode meets the same queue.
    (The CPU default of two replicas spreads simultaneous decodes over both on purpose, so they run side by
    side instead of in one batch.)"""
    from engines.whisper import WhisperEngine

    engine = WhisperEngine(whisper_tiny_dir, model_name="tiny.en", workers_per_device=1)
    yield engine
    engine.close()


def test_many_streams_share_batches_without_a_thread_each(one_replica, testdata: Path) -> None:
    """submit() returns at once; the decodes of streams submitted together meet in the model's batches."""
    tiny = one_replica
    audio = load(testdata / "en" / "LJ001-0004.wav")
    streams = [open_stream(tiny) for _ in range(8)]
    before = tiny.batch_stats()
    chunk = SAMPLE_RATE // 2
    texts = [""] * len(streams)
    for i in range(0, len(audio), chunk):  # every stream gets each half second at once, from this thread
        futures = [s.submit(audio[i : i + chunk]) for s in streams]
        wait(futures, timeout=120)
        for k, fut in enumerate(futures):
            texts[k] += "".join(t.text for u in fut.result() for t in u.tokens if t.is_final)
    for k, s in enumerate(streams):
        texts[k] += "".join(t.text for t in s.submit(finish=True).result()[-1].tokens)
    after = tiny.batch_stats()
    reference = (testdata / "en" / "LJ001-0004.txt").read_text()
    assert all(wer(reference, text) < 0.25 for text in texts), texts
    sizes = {n: after.batch_sizes.get(n, 0) - before.batch_sizes.get(n, 0) for n in after.batch_sizes}
    shared = sum(n * c for n, c in sizes.items() if n > 1)
    decodes = after.items - before.items
    assert shared >= decodes / 2, sizes  # most decodes ran in a batch with other streams'
