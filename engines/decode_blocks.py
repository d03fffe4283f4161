"""Media -> float32 mono 16 kHz in fixed-size blocks, never holding the recording, with a length cap.

This is the decoder of the STT front end (engines/frontend_worker.py): it feeds a writer and the streaming
VAD block by block, so memory stays at a few blocks whatever the file decodes to, and it stops at
`max_seconds` (what the caller's balance covers, or the server's cap) and says whether audio was left.

PCM-exact containers (WAV, FLAC, AIFF, ...) are read through libsndfile (`soundfile`): one C call per block
instead of a Python step per codec frame, the samples identical to FFmpeg's (integer PCM / 2^(bits-1)).
Everything else goes through PyAV (engines.audio). Either way the rate conversion is the same FFmpeg
resampler, fed large frames.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Iterator

import numpy as np

from engines.audio import (
    PcmResampler,
    UndecodableMediaError,
    check_nonempty,
    concat_pcm,
    decode_stream,
    open_media,
)
from engines.types import SAMPLE_RATE

log = logging.getLogger(__name__)

# libsndfile formats and subtypes whose samples are exact (no codec of their own to disagree with FFmpeg's).
_SNDFILE_FORMATS = {"WAV", "WAVEX", "W64", "RF64", "FLAC", "AIFF", "CAF"}
_SNDFILE_SUBTYPES = {"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"}


class BlockDecoder:
    """Iterates blocks of exactly `block_seconds` of 16 kHz mono float32 (the last one shorter).

    After iteration `samples` is what was yielded and `truncated` tells whether the media held more audio
    than `max_seconds` (decoding stopped there: at most one block beyond the cap is ever decoded).
    Raises `MediaError` subclasses like `engines.audio.decode_file`.
    """

    def __init__(self, path: str | os.PathLike[str], block_seconds: float = 30.0,
                 max_seconds: float | None = None) -> None:
        self.path = path
        self.block = max(1, int(round(block_seconds * SAMPLE_RATE)))
        self.limit = None if max_seconds is None else max(0, int(round(max_seconds * SAMPLE_RATE)))
        self.samples = 0
        self.truncated = False
        self.fast_path = False  # set once iteration starts: libsndfile read it

    def __iter__(self) -> Iterator[np.ndarray]:
        check_nonempty(self.path)
        pieces = _sndfile_pieces(self.path)
        self.fast_path = pieces is not None
        if pieces is None:
            pieces = _pyav_pieces(self.path)
        try:
            yield from self._blocks(pieces)
        finally:
            pieces.close()

    def _blocks(self, pieces: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        pending: list[np.ndarray] = []
        have = 0
        for pcm in pieces:
            if self.limit is not None and self.samples + have + pcm.size > self.limit:
                room = self.limit - self.samples - have
                self.truncated = pcm.size > room or any(p.size for p in pieces)
                pcm = pcm[:room]
                pending.append(pcm)
                have += pcm.size
                break
            pending.append(pcm)
            have += pcm.size
            if have >= self.block:
                joined = concat_pcm(pending)
                cut = (have // self.block) * self.block
                for i in range(0, cut, self.block):
                    self.samples += self.block
                    yield joined[i : i + self.block]
                pending = [joined[cut:]] if cut < have else []
                have -= cut
        while have:
            joined = concat_pcm(pending)
            take = min(have, self.block)
            self.samples += take
            yield joined[:take]
            pending, have = [joined[take:]], have - take


def _pyav_pieces(path: str | os.PathLike[str]) -> Generator[np.ndarray, None, None]:
    with open_media(path) as container:
        yield from decode_stream(container)


def _sndfile_pieces(path: str | os.PathLike[str]) -> Generator[np.ndarray, None, None] | None:
    """libsndfile's reader for PCM-exact files, None for anything else (or anything it cannot open)."""
    import soundfile as sf

    try:
        f = sf.SoundFile(os.fspath(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    if f.format not in _SNDFILE_FORMATS or f.subtype not in _SNDFILE_SUBTYPES or f.samplerate <= 0:
        f.close()
        return None
    return _read_sndfile(f)


def _read_sndfile(f: object) -> Generator[np.ndarray, None, None]:
    import soundfile as sf

    assert isinstance(f, sf.SoundFile)
    frames = max(1, int(f.samplerate * 30))  # ~30 s of input per call
    resampler = PcmResampler(f.samplerate)
    produced = 0
    try:
        while True:
            try:
                data = f.read(frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:  # a damaged tail: keep what was read
                if produced == 0:
                    raise UndecodableMediaError(str(exc)) from exc
                log.warning("stopped reading damaged PCM after %d samples: %s", produced, exc)
                break
            if not len(data):
                break
            mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
            out = resampler.push(np.ascontiguousarray(mono))
            produced += out.size
            if out.size:
                yield out
        tail = resampler.flush()
        produced += tail.size
        if tail.size:
            yield tail
    finally:
        f.close()
    if produced == 0:
        from engines.audio import EmptyMediaError

        raise EmptyMediaError("the media contains no audio samples")
