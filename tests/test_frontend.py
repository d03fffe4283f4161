"""The STT front end (engines/frontend.py): decoding and VAD in worker processes, written to a PCM file.

What a user relies on: the same samples and speech spans as decoding in-process, refusals of media that is
too long after reading only what was allowed, errors that say what is wrong, and nothing left on disk.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy as np
import pytest

from engines.audio import EmptyMediaError, UndecodableMediaError, decode_file
from engines.decode_blocks import BlockDecoder
from engines.frontend import MediaFrontend, MediaTooLongError
from engines.types import SAMPLE_RATE
from engines.vad import speech_spans


def _encode(path: Path, pcm: np.ndarray, codec: str, rate: int = SAMPLE_RATE) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path


def _silence_flac(path: Path, hours: float) -> Path:
    """Hours of digital silence as a FLAC of a few hundred KB (libsndfile writes it in about a second)."""
    import soundfile as sf

    minute = np.zeros(60 * SAMPLE_RATE, dtype=np.int16)
    with sf.SoundFile(str(path), "w", SAMPLE_RATE, 1, "PCM_16", format="FLAC") as f:
        for _ in range(int(hours * 60)):
            f.write(minute)
    return path


@pytest.fixture(scope="module")
def hour_of_silence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _silence_flac(tmp_path_factory.mktemp("bomb") / "hour.flac", 1.0)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    frontend = MediaFrontend(tmp_path_factory.mktemp("frontend"), workers=2)
    frontend.start()
    yield frontend
    frontend.close()


def _leftovers(frontend: MediaFrontend) -> list[str]:
    return sorted(p.name for p in frontend.tmp_dir.iterdir())


@pytest.mark.parametrize("clip", ["en/jfk.flac", "de/recorded_sample_01.wav", "video/nasa_13013.mp4"])
def test_worker_processes_give_the_same_audio_and_speech_as_decoding_here(pool, testdata: Path, clip: str) -> None:  # type: ignore[no-untyped-def]
    path = testdata / clip
    prepared = pool.prepare(path)
    try:
        expected = decode_file(path)
        assert prepared.samples == expected.size
        np.testing.assert_allclose(prepared.load(), expected, atol=1e-6)
        assert list(prepared.speech or ()) == speech_spans(expected)
        # Chunk reads come from the file: any window equals the same slice of the whole.
        np.testing.assert_array_equal(prepared.read(1000, 5000), prepared.load()[1000:5000])
    finally:
        prepared.discard()
    assert _leftovers(pool) == []


def test_libsndfile_fast_path_reads_pcm_exactly_like_ffmpeg(testdata: Path, tmp_path: Path) -> None:
    speech = decode_file(testdata / "en" / "jfk.flac")
    for name, codec, rate in [("a.wav", "pcm_s16le", 16000), ("b.flac", "flac", 16000), ("c.wav", "pcm_s16le", 44100)]:
        pcm = speech if rate == SAMPLE_RATE else np.interp(
            np.arange(int(speech.size * rate / SAMPLE_RATE)) * SAMPLE_RATE / rate, np.arange(speech.size), speech)
        path = _encode(tmp_path / name, pcm.astype(np.float32), codec, rate)
        decoder = BlockDecoder(path, block_seconds=7.0)
        blocks = list(decoder)
        assert decoder.fast_path, name
        assert all(b.size == 7 * SAMPLE_RATE for b in blocks[:-1])
        np.testing.assert_allclose(np.concatenate(blocks), decode_file(path), atol=1e-6)


def test_decoding_stops_at_the_cap_and_says_audio_was_left(testdata: Path, hour_of_silence: Path) -> None:
    # An hour of silence compresses to a tiny FLAC: the cap, not the file size, must bound the work.
    assert hour_of_silence.stat().st_size < 1_000_000
    decoder = BlockDecoder(hour_of_silence, block_seconds=30.0, max_seconds=45.0)
    sizes = [b.size for b in decoder]
    assert sum(sizes) == 45 * SAMPLE_RATE and decoder.truncated
    exact = BlockDecoder(testdata / "en" / "jfk.flac", max_seconds=11.5)
    assert sum(b.size for b in exact) == decode_file(testdata / "en" / "jfk.flac").size and not exact.truncated


def test_too_long_media_is_refused_and_leaves_nothing(pool, hour_of_silence: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MediaTooLongError):
        pool.prepare(hour_of_silence, max_seconds=30.0)
    assert _leftovers(pool) == []


def test_bad_and_empty_media_say_what_is_wrong(pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    garbage = tmp_path / "x.mp3"
    garbage.write_bytes(b"this is not audio at all" * 200)
    with pytest.raises(UndecodableMediaError, match="could not decode the uploaded media"):
        pool.prepare(garbage)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(EmptyMediaError):
        pool.prepare(empty)
    assert _leftovers(pool) == []


async def test_cancelling_stops_the_worker_and_removes_its_files(pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    long = _silence_flac(tmp_path / "long.flac", 2.0)
    task = asyncio.ensure_future(pool.aprepare(long))
    for _ in range(400):  # until the worker has begun writing (it creates the PCM file first)
        if any(n.endswith(".f32") for n in _leftovers(pool)):
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _leftovers(pool) == []
    # The pool still works afterwards.
    ok = await pool.aprepare(_encode(tmp_path / "short.flac", np.zeros(SAMPLE_RATE, dtype=np.float32), "flac"))
    assert ok.samples == SAMPLE_RATE and ok.speech == ()
    ok.discard()


def test_worker_processes_exit_when_the_server_is_killed(tmp_path: Path) -> None:
    # A ProcessPoolExecutor worker waits on a pipe whose write end it holds itself, so kill -9 (or the OOM
    # killer) on the server left every worker (Silero and FFmpeg loaded, ~110 MB each) and with it the
    # forkserver running forever; each crash leaked more memory.
    import os
    import signal
    import subprocess
    import sys
    import threading

    script = (
        "import os, sys\nfrom pathlib import Path\nfrom engines.frontend import MediaFrontend\n"
        "fe = MediaFrontend(Path(sys.argv[1]), workers=1)\nfe.start()\n"
        "print(fe._pool().submit(os.getpid).result(), flush=True)\nsys.stdin.read()\n"
    )
    server = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    assert server.stdout is not None
    worker = int(server.stdout.readline())
    os.kill(server.pid, signal.SIGKILL)
    server.wait(timeout=30)

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as stat:  # a zombie (state Z) has exited
                return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    pause = threading.Event()
    for _ in range(200):
        if not alive(worker):
            break
        pause.wait(0.05)
    else:
        os.kill(worker, signal.SIGKILL)  # leave nothing behind either way
        pytest.fail(f"front-end worker {worker} outlived the killed server")
