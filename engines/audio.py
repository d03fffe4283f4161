"""Decode uploaded media (any container/codec FFmpeg knows) to float32 mono 16 kHz with PyAV.

Everything runs in-process through libav* (no ffmpeg binary). PyAV reads the file by path, so the
encoded bytes are never held in memory; `decode_file` writes the decoded samples into one array
(see there), `iter_decode` (engines.decode_blocks) yields fixed-size blocks. Downmixing is a plain channel mean (same as
`pcm_from_raw`), not FFmpeg's default stereo->mono matrix, which adds +3 dB and pushes full-scale speech past 1.0.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Generator, Iterator, Sequence
from typing import Literal

import av
import av.error
import numpy as np

from engines.types import SAMPLE_RATE, EngineError

log = logging.getLogger(__name__)


class MediaError(EngineError):
    """The uploaded media cannot be turned into audio; the server maps this to HTTP 422."""


class UndecodableMediaError(MediaError):
    """Not a media file FFmpeg understands, or nothing in it decodes."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"could not decode the uploaded media: {detail}")
        self.detail = detail


class EmptyMediaError(MediaError):
    """The media is valid but holds no audio stream or no audio samples."""


# ---------------------------------------------------------------- frame conversion


class FrameConverter:
    """Turns decoded `av.AudioFrame`s into float32 mono 16 kHz arrays.

    One resampler lives for the whole stream so its filter state carries across frames (no clicks at
    frame boundaries). It keeps the source channel layout and the mean is taken in numpy; when a
    stream changes format mid-way (HE-AAC switching layouts, concatenated MP3s) the old resampler is
    flushed and a new one built, instead of PyAV's "Frame does not match" error.
    """

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._key: tuple[str, str, int] | None = None

    def convert(self, frame: av.AudioFrame) -> np.ndarray:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        pieces: list[np.ndarray] = []
        if self._resampler is None or key != self._key:
            pieces.append(self.flush())
            self._resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)
            self._key = key
        pieces.extend(_mono(out) for out in self._resampler.resample(frame) if out is not None)
        return concat_pcm(pieces)

    def flush(self) -> np.ndarray:
        """Drains the resampler's internal delay (a few ms); the converter can keep going afterwards."""
        if self._resampler is None:
            return _EMPTY
        # A passthrough resampler answers a flush with [None].
        outs = [out for out in self._resampler.resample(None) if out is not None]
        self._resampler, self._key = None, None
        return concat_pcm([_mono(out) for out in outs])


_EMPTY = np.zeros(0, dtype=np.float32)


def _mono(frame: av.AudioFrame) -> np.ndarray:
    planes = frame.to_ndarray()  # (channels, samples) for the planar fltp format
    if planes.shape[0] == 1:
        return np.array(planes[0], dtype=np.float32)  # copy: do not pin the AVFrame's buffer
    return planes.mean(axis=0, dtype=np.float32)


def concat_pcm(pieces: Sequence[np.ndarray]) -> np.ndarray:
    pieces = [p for p in pieces if p.size]
    if not pieces:
        return _EMPTY
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


# ---------------------------------------------------------------- containers


def choose_audio_stream(candidates: Sequence[tuple[bool, int]]) -> int | None:
    """Index into `candidates` ((is_default, sample_rate) per audio stream) of the stream to decode.

    Prefers the stream flagged default, then the highest sample rate (some MP4s carry the same
    narration at 8 and 16 kHz), then the first one.
    """
    if not candidates:
        return None
    return min(range(len(candidates)), key=lambda i: (not candidates[i][0], -candidates[i][1], i))


def open_media(
    source: str | os.PathLike[str] | object,
    *,
    buffer_size: int = 32768,
    container_options: dict[str, str] | None = None,
) -> av.container.InputContainer:
    """`av.open` for reading (a path, or a file-like object with `read`) with FFmpeg's errors
    turned into `UndecodableMediaError`."""
    try:
        return av.open(
            os.fspath(source) if isinstance(source, os.PathLike) else source,
            mode="r",
            metadata_errors="ignore",
            buffer_size=buffer_size,
            container_options=container_options,
        )
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise UndecodableMediaError(_reason(e)) from e


def audio_stream_of(container: av.container.InputContainer) -> av.audio.stream.AudioStream:
    streams = list(container.streams.audio)
    index = choose_audio_stream(
        [
            (bool(s.disposition & av.stream.Disposition.default), s.codec_context.sample_rate or 0)
            for s in streams
        ]
    )
    if index is None:
        raise EmptyMediaError("the media has no audio")
    return streams[index]


def decode_stream(container: av.container.InputContainer) -> Generator[np.ndarray, None, None]:
    """Yields float32 mono 16 kHz pieces of the container's audio, best effort on damaged data.

    A packet that fails to decode is skipped, a demuxer error resumes at the next readable spot.
    Raises `UndecodableMediaError` only when errors left zero samples, `EmptyMediaError` when a
    clean stream simply has none.
    """
    stream = audio_stream_of(container)
    converter = FrameConverter()
    errors: list[Exception] = []
    produced = 0
    for packet in _packets(container, stream, errors):
        try:
            frames = stream.codec_context.decode(packet)
        except (av.error.FFmpegError, ValueError) as e:
            errors.append(e)
            continue
        for frame in frames:
            pcm = converter.convert(frame)
            produced += pcm.size
            if pcm.size:
                yield pcm
    tail = converter.flush()
    produced += tail.size
    if tail.size:
        yield tail
    if produced == 0:
        if errors:
            raise UndecodableMediaError(_reason(errors[0]))
        raise EmptyMediaError("the media contains no audio samples")
    if errors:
        log.warning("decoded damaged media around %d error(s), first: %s", len(errors), _reason(errors[0]))


# Consecutive demuxer errors tolerated before giving up on the rest of a damaged file.
_MAX_DEMUX_ERRORS = 32


def _packets(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream, errors: list[Exception]
) -> Iterator[av.Packet | None]:
    """The stream's packets; after a demuxer error it demuxes on (FFmpeg resyncs to the next
    cluster/page/frame header). Ends with the decoder flush: PyAV's own empty packets, or None."""
    failures = 0
    while True:
        try:
            for packet in container.demux(stream):
                failures = 0
                yield packet
            return
        except av.error.FFmpegError as e:
            errors.append(e)
            failures += 1
            if failures >= _MAX_DEMUX_ERRORS or isinstance(e, EOFError):
                yield None
                return


def _reason(e: BaseException) -> str:
    # FFmpeg messages end with the file path ("...: '/tmp/upload123'"): keep only the reason.
    if isinstance(e, av.error.FFmpegError) and e.strerror:
        return str(e.strerror)
    return str(e) or type(e).__name__


def check_nonempty(path: str | os.PathLike[str]) -> None:
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise UndecodableMediaError(f"cannot read the file ({e.strerror or e})") from e
    if size == 0:
        raise EmptyMediaError("the media has no audio (the file is empty)")


# ---------------------------------------------------------------- public API


def iter_decode(path: str | os.PathLike[str], block_seconds: float = 30.0) -> Iterator[np.ndarray]:
    """Yields float32 mono 16 kHz blocks of exactly `block_seconds` (the last one shorter)."""
    from engines.decode_blocks import BlockDecoder

    return iter(BlockDecoder(path, block_seconds))


def decode_file(path: str | os.PathLike[str], *, max_seconds: float | None = None) -> np.ndarray:
    """Decodes the first (default, best) audio stream of any media file to float32 mono 16 kHz.

    `max_seconds` stops decoding once that much audio is in hand (for previews and limits).

    Memory: the samples go straight into ONE array sized from the container's duration (untouched pages
    cost nothing), grown or trimmed in place with `ndarray.resize` (realloc: large blocks are remapped,
    not copied). Collecting pieces and concatenating them would hold the whole signal twice (460 MB for
    an hour).
    """
    limit = None if max_seconds is None else max(0, int(round(max_seconds * SAMPLE_RATE)))
    check_nonempty(path)
    with open_media(path) as container:
        guess = _expected_samples(container)
        buf = np.empty(guess if limit is None else min(guess, limit), dtype=np.float32)
        have = 0
        stream = decode_stream(container)
        try:
            for pcm in stream:
                take = pcm.size if limit is None else min(pcm.size, limit - have)
                if have + take > buf.size:  # the header under-estimated: grow by a quarter at least
                    buf.resize(max(have + take, buf.size + buf.size // 4 + 30 * SAMPLE_RATE), refcheck=False)
                buf[have : have + take] = pcm[:take]
                have += take
                if limit is not None and have >= limit:
                    break
        finally:
            stream.close()
    if have != buf.size:
        buf.resize(have, refcheck=False)  # shrinking in place: no second copy
    return buf


def _expected_samples(container: av.container.InputContainer) -> int:
    """Samples at 16 kHz the container says it holds, plus 1 s for the resampler's tail and rounding.
    Capped at 3 h: a damaged header can claim anything (the array grows if the audio is really longer)."""
    seconds = container.duration / av.time_base if container.duration and container.duration > 0 else 60.0
    return int(min(seconds, 3 * 3600.0) * SAMPLE_RATE) + SAMPLE_RATE


def probe_duration(path: str | os.PathLike[str], decode_limit_s: float | None = None) -> float:
    """Media duration in seconds from the container header, else the audio stream's, else by decoding.

    This is the container's length (what a user sees in a player), which for a video can exceed the
    audio track. Decoding (a header without a length) stops after `decode_limit_s` of audio, which is
    then returned: a lower bound, so a small file that decodes to hours costs a bounded probe.
    """
    check_nonempty(path)
    with open_media(path) as container:
        stream = audio_stream_of(container)
        if container.duration is not None and container.duration > 0:
            return container.duration / av.time_base
        if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
            return float(stream.duration * stream.time_base)
        limit = math.inf if decode_limit_s is None else decode_limit_s * SAMPLE_RATE
        samples = 0
        for pcm in decode_stream(container):
            samples += pcm.size
            if samples >= limit:
                break
        return min(samples, limit) / SAMPLE_RATE


PcmFormat = Literal["pcm_s16le", "pcm_f32le"]


def pcm_bytes_per_sample(fmt: PcmFormat) -> int:
    if fmt == "pcm_s16le":
        return 2
    if fmt == "pcm_f32le":
        return 4
    raise ValueError(f"unsupported raw PCM format {fmt!r}; use pcm_s16le or pcm_f32le")


def pcm_to_float_mono(data: bytes | bytearray | memoryview, fmt: PcmFormat, channels: int) -> np.ndarray:
    """Whole interleaved frames of raw little-endian PCM -> float32 mono (channel mean)."""
    if fmt == "pcm_s16le":
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    else:
        # Float input straight off the wire: NaN/inf would poison every model downstream.
        samples = np.nan_to_num(np.frombuffer(data, dtype="<f4"), nan=0.0, posinf=1.0, neginf=-1.0)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return samples


class PcmResampler:
    """Streaming float32 mono resampler to 16 kHz whose filter state spans calls (no seams)."""

    def __init__(self, sample_rate: int) -> None:
        if sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        self.sample_rate = sample_rate
        self._converter = FrameConverter()

    def push(self, mono: np.ndarray) -> np.ndarray:
        if mono.size == 0:
            return _EMPTY
        if self.sample_rate == SAMPLE_RATE:
            return np.ascontiguousarray(mono, dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(mono, dtype=np.float32)[None, :], format="fltp", layout="mono"
        )
        frame.sample_rate = self.sample_rate
        return self._converter.convert(frame)

    def flush(self) -> np.ndarray:
        return self._converter.flush()


def pcm_from_raw(data: bytes, fmt: PcmFormat, sample_rate: int, channels: int) -> np.ndarray:
    """Raw interleaved little-endian PCM -> float32 mono 16 kHz; a trailing partial frame is dropped."""
    if channels < 1:
        raise ValueError("channels must be >= 1")
    frame_bytes = pcm_bytes_per_sample(fmt) * channels
    usable = len(data) - len(data) % frame_bytes
    resampler = PcmResampler(sample_rate)
    mono = pcm_to_float_mono(memoryview(data)[:usable], fmt, channels)
    return concat_pcm([resampler.push(mono), resampler.flush()])
