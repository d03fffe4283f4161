"""Incremental decoding of a live byte stream (realtime WebSocket) to float32 mono 16 kHz.

Browsers' MediaRecorder sends WebM/Opus (or Ogg/Opus) cut at arbitrary byte boundaries, so a
container cannot be parsed chunk by chunk. Instead the bytes go into a `_Pipe`, and one background
thread runs PyAV's demuxer and decoder over it as if it were a non-seekable file whose `read()`
blocks until more bytes arrive or the stream is closed. The demuxer only asks for bytes once it
has used up everything it was given, so "the thread waits on an empty pipe" means "every sample
decodable from the bytes so far has been produced": `feed()` waits for exactly that (bounded by
`max_wait_s`), so a chunk's audio comes back from the call that fed it.

A frame may decode to far more audio than its size suggests (a few MB of FLAC can hold hours of silence),
so `max_frame_samples` bounds what one `feed()` may produce: beyond it the decoder stops (the container
thread as soon as it has decoded that much unread audio, before it decodes the rest) and raises
`FrameTooLongError`, so memory and CPU stay bounded whatever a frame holds.

Raw PCM needs no thread: partial sample frames are carried between chunks and a stateful resampler
converts to 16 kHz. Plain PCM WAV streams are sniffed and sent down that path too, because
FFmpeg's WAV demuxer reads 64 KiB ahead (S/PDIF detection) before giving out any audio: 2 s of
delay for 16 kHz speech.
"""

from __future__ import annotations

import logging
import struct
import threading
import weakref
from dataclasses import dataclass
from typing import Literal

import av.error
import numpy as np

from engines.audio import (
    PcmFormat,
    PcmResampler,
    UndecodableMediaError,
    concat_pcm,
    decode_stream,
    open_media,
    pcm_bytes_per_sample,
    pcm_to_float_mono,
)
from engines.types import SAMPLE_RATE, EngineError

log = logging.getLogger(__name__)

AudioFormat = Literal["auto", "pcm_s16le", "pcm_f32le"]

# Demuxer settings for live input: detect the format within 256 KiB (FFmpeg's default is 1 MiB;
# real containers announce themselves in their first KiB) and start handing out packets after
# 32 KiB / 0.1 s of stream analysis instead of 5 MB / 5 s.
_CONTAINER_OPTIONS = {"formatprobesize": str(256 * 1024), "probesize": "32768", "analyzeduration": "100000"}
# The demuxer's read size; it never waits for a full read, small keeps copies cheap.
_IO_BUFFER_BYTES = 16 * 1024
# close() waits this long for the thread to decode what is still buffered before abandoning it.
_CLOSE_TIMEOUT_S = 60.0
# A RIFF header that has not reached its data chunk by then is left to FFmpeg.
_MAX_WAV_HEADER = 64 * 1024

_EMPTY = np.zeros(0, dtype=np.float32)


class FrameTooLongError(EngineError):
    """One frame (or the frames since the last feed) decoded to more audio than the decoder may hold."""

    def __init__(self, limit_samples: int) -> None:
        super().__init__(
            f"one audio frame decodes to more than {limit_samples / SAMPLE_RATE:g} s of audio; send the stream in "
            "smaller frames, as it is recorded"
        )


@dataclass(frozen=True)
class WavHeader:
    fmt: PcmFormat
    sample_rate: int
    channels: int
    data_offset: int  # where the samples start
    data_size: int | None  # bytes of samples; None when the writer did not know (live streams)


_WAV_SAMPLE_FORMATS: dict[tuple[int, int], PcmFormat] = {(1, 16): "pcm_s16le", (3, 32): "pcm_f32le"}
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


def parse_wav_header(head: bytes) -> tuple[Literal["need_more", "pcm", "other"], WavHeader | None]:
    """Classifies the first bytes of a stream: a 16-bit / float PCM WAV ("pcm", with its header),
    "need_more" bytes to tell, or "other" (anything else, including WAVs in other encodings)."""
    if head[:4] != b"RIFF"[: len(head[:4])]:
        return "other", None
    if len(head) < 12:
        return "need_more", None
    if head[8:12] != b"WAVE":
        return "other", None
    pos, fmt = 12, None
    while True:
        if pos + 8 > len(head):
            return "need_more", None
        chunk_id, size = head[pos : pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if chunk_id == b"data":
            if fmt is None:
                return "other", None
            # 0 and 0xFFFFFFFF (or near 2 GiB) are what live writers put before knowing the length.
            known = 0 < size < 0x7FFFF000
            return "pcm", WavHeader(*fmt, data_offset=pos + 8, data_size=size if known else None)
        if chunk_id == b"fmt ":
            if size < 16:
                return "other", None
            if pos + 8 + size > len(head):
                return "need_more", None
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", head, pos + 8)
            if tag == _WAVE_FORMAT_EXTENSIBLE and size >= 40:
                tag = struct.unpack_from("<H", head, pos + 8 + 24)[0]  # first bytes of the sub-format GUID
            sample_format = _WAV_SAMPLE_FORMATS.get((tag, bits))
            if sample_format is None or channels < 1 or rate < 1:
                return "other", None
            fmt = (sample_format, rate, channels)
        pos += 8 + size + (size & 1)  # chunks are padded to even sizes


class _PcmDecoder:
    """Interleaved raw PCM -> 16 kHz mono, carrying partial frames across chunk boundaries."""

    def __init__(self, fmt: PcmFormat, sample_rate: int, channels: int, limit: int | None = None) -> None:
        if sample_rate <= 0:
            raise ValueError(f"{fmt} needs a positive sample_rate")
        if channels < 1:
            raise ValueError("num_channels must be >= 1")
        self.fmt, self.channels = fmt, channels
        self.frame_bytes = pcm_bytes_per_sample(fmt) * channels
        self.carry = b""
        self.remaining = limit  # bytes of audio left (a WAV data chunk's size); None: unbounded
        self.resampler = PcmResampler(sample_rate)

    def feed(self, data: bytes) -> np.ndarray:
        if self.remaining is not None:
            data, self.remaining = data[: self.remaining], max(0, self.remaining - len(data))
        data = self.carry + data
        usable = len(data) - len(data) % self.frame_bytes
        self.carry = data[usable:]
        return self.resampler.push(pcm_to_float_mono(memoryview(data)[:usable], self.fmt, self.channels))

    def close(self) -> np.ndarray:
        return self.resampler.flush()


class _Pipe:
    """Bytes from the caller to the decoder thread, and samples plus the outcome back.

    The thread references only this object, never the `StreamDecoder`, so a decoder dropped
    without close() can be finalized and its finalizer aborts the thread.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.cond = threading.Condition()
        self.limit = limit  # unread samples beyond which the thread stops with FrameTooLongError
        self.unread = 0
        self.buf = bytearray()
        self.eof = False  # no more bytes will come: read() returns b"" once the buffer is empty
        self.aborted = False  # discard everything and stop as soon as possible
        self.starved = False  # the reader waits on an empty buffer: all bytes so far are consumed
        self.done = False  # the thread has finished
        self.out: list[np.ndarray] = []
        self.error: BaseException | None = None

    def end(self) -> None:
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def abort(self) -> None:
        with self.cond:
            self.aborted = self.eof = True
            self.buf.clear()
            self.cond.notify_all()

    def read(self, size: int = -1) -> bytes:
        """What PyAV calls; no seek/tell, so FFmpeg treats the input as a non-seekable stream."""
        with self.cond:
            while not self.buf and not self.eof:
                self.starved = True
                self.cond.notify_all()
                self.cond.wait()
            if self.aborted:
                return b""
            n = len(self.buf) if size is None or size < 0 else min(size, len(self.buf))
            chunk = bytes(self.buf[:n])
            del self.buf[:n]  # cheap: bytearray drops a prefix without moving the rest
            return chunk

    def emit(self, pcm: np.ndarray) -> None:
        with self.cond:
            self.out.append(pcm)
            self.unread += len(pcm)
            if self.limit is not None and self.unread > self.limit:
                raise FrameTooLongError(self.limit)  # ends the thread: nothing more is decoded

    def finish(self, error: BaseException | None) -> None:
        with self.cond:
            self.error, self.done = error, True
            self.buf.clear()
            self.cond.notify_all()


def _decode_loop(pipe: _Pipe) -> None:
    """Thread body: demux + decode + resample until the pipe ends, then record the outcome."""
    error: BaseException | None = None
    try:
        with open_media(
            pipe, buffer_size=_IO_BUFFER_BYTES, container_options=_CONTAINER_OPTIONS
        ) as container:
            for pcm in decode_stream(container):
                pipe.emit(pcm)
                if pipe.aborted:
                    break
    except BaseException as e:  # noqa: BLE001 - handed to the caller, never lost in the thread
        error = e
    finally:
        pipe.finish(error)


class _ContainerDecoder:
    """Any FFmpeg-readable container, decoded by a background thread (see the module docstring)."""

    def __init__(self, max_wait_s: float, limit: int | None = None) -> None:
        self.max_wait_s = max_wait_s
        self.pipe = _Pipe(limit)
        self.dropped = 0
        self.thread = threading.Thread(
            target=_decode_loop, args=(self.pipe,), name="stream-decode", daemon=True
        )
        self.thread.start()

    def feed(self, data: bytes) -> np.ndarray:
        pipe = self.pipe
        with pipe.cond:
            if data and pipe.done:
                # The container ended (end-of-stream marker or unrecoverable damage): nothing
                # reads later bytes, so they are counted and dropped rather than piled up.
                self.dropped += len(data)
            elif data:
                pipe.buf += data
                pipe.starved = False
                pipe.cond.notify_all()
            pipe.cond.wait_for(lambda: pipe.done or (pipe.starved and not pipe.buf), self.max_wait_s)
        return self._collect()

    def close(self) -> np.ndarray:
        self.pipe.end()
        self.thread.join(_CLOSE_TIMEOUT_S)
        if self.thread.is_alive():  # pathological input; never leave the thread behind
            self.abort()
            raise UndecodableMediaError("decoding did not finish")
        if self.dropped:
            log.warning("ignored %d bytes sent after the audio stream ended", self.dropped)
        return self._collect()

    def abort(self) -> None:
        self.pipe.abort()
        self.thread.join()

    def _collect(self) -> np.ndarray:
        with self.pipe.cond:
            pieces, self.pipe.out = self.pipe.out, []
            self.pipe.unread = 0
            done, error = self.pipe.done, self.pipe.error
        if done and error is not None:
            raise _as_media_error(error)
        return concat_pcm(pieces)


class StreamDecoder:
    """Feed encoded audio chunks, get float32 mono 16 kHz samples back as soon as they decode.

    `audio_format="auto"` autodetects the container (WebM/Matroska, Ogg, WAV, MP3, FLAC, fragmented
    MP4, ...); `"pcm_s16le"`/`"pcm_f32le"` take interleaved raw PCM at `sample_rate` with
    `num_channels` (default 1). Not thread-safe: one caller at a time. Bad input raises
    `UndecodableMediaError` / `EmptyMediaError` (both `engines.audio.MediaError`) from `feed()` or
    `close()`; after that the decoder is closed. `max_frame_samples` (16 kHz samples; None: no bound) is the
    most one `feed()` may return: `FrameTooLongError` beyond it.
    """

    def __init__(
        self,
        audio_format: AudioFormat = "auto",
        sample_rate: int | None = None,
        num_channels: int | None = None,
        *,
        max_wait_s: float = 0.05,
        max_frame_samples: int | None = None,
    ) -> None:
        self.audio_format = audio_format
        self.max_wait_s = max_wait_s
        self.max_frame_samples = max_frame_samples
        self._closed = False
        self._head = b""  # auto mode: first bytes held until the format is known
        self._impl: _PcmDecoder | _ContainerDecoder | None = None
        if audio_format in ("pcm_s16le", "pcm_f32le"):
            self._impl = _PcmDecoder(audio_format, sample_rate or 0, num_channels or 1)
        elif audio_format != "auto":
            raise ValueError(f"unsupported audio_format {audio_format!r}; use auto, pcm_s16le or pcm_f32le")

    @property
    def instant(self) -> bool:
        """Whether feed() only converts raw PCM (microseconds: a caller may skip a thread hop); False while
        the format is unknown or a container decoder (which may wait for its thread) is in use."""
        return isinstance(self._impl, _PcmDecoder)

    def feed(self, data: bytes) -> np.ndarray:
        """Adds bytes; returns the new samples decodable so far (possibly empty).

        For containers this blocks at most `max_wait_s` (default 50 ms): enough for the decoder
        thread to consume a typical chunk so its audio returns now; a huge chunk or a busy CPU
        only delays the rest to the next `feed()` (`feed(b"")` just collects) or `close()`.
        """
        if self._closed:
            raise RuntimeError("StreamDecoder is closed")
        try:
            if self._impl is None:
                pcm = self._sniff(bytes(data), final=False)
            else:
                pcm = self._impl.feed(bytes(data))
            if self.max_frame_samples is not None and len(pcm) > self.max_frame_samples:
                raise FrameTooLongError(self.max_frame_samples)  # raw PCM: a huge frame at a low rate
            return pcm
        except EngineError:
            self._fail()
            raise

    def close(self) -> np.ndarray:
        """Ends the stream: returns the remaining samples (resampler tail included); idempotent."""
        if self._closed:
            return _EMPTY
        try:
            head = self._sniff(b"", final=True) if self._impl is None else _EMPTY
            tail = self._impl.close() if self._impl is not None else _EMPTY
            return concat_pcm([head, tail])
        except EngineError:
            self._fail()
            raise
        finally:
            self._closed = True

    def abort(self) -> None:
        """Stops decoding and discards everything (the client went away); idempotent."""
        self._fail()

    def __enter__(self) -> StreamDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def _fail(self) -> None:
        self._closed = True
        if isinstance(self._impl, _ContainerDecoder):
            self._impl.abort()

    def _sniff(self, data: bytes, *, final: bool) -> np.ndarray:
        """Auto mode before the format is known: plain PCM WAV goes to the PCM path, the rest to FFmpeg."""
        self._head += data
        status, header = parse_wav_header(self._head)
        if status == "need_more" and not final and len(self._head) < _MAX_WAV_HEADER:
            return _EMPTY
        if not self._head:
            return _EMPTY  # nothing was ever sent
        head, self._head = self._head, b""
        if status == "pcm" and header is not None:
            self._impl = _pcm_for(header)
            return self._impl.feed(head[header.data_offset :])
        self._impl = _ContainerDecoder(self.max_wait_s, self.max_frame_samples)
        weakref.finalize(self, self._impl.pipe.abort)  # dropped without close(): end the thread
        return self._impl.feed(head)


def _pcm_for(header: WavHeader) -> _PcmDecoder:
    return _PcmDecoder(header.fmt, header.sample_rate, header.channels, header.data_size)


def _as_media_error(error: BaseException) -> EngineError:
    if isinstance(error, EngineError):
        return error
    if isinstance(error, av.error.FFmpegError):
        return UndecodableMediaError(str(error.strerror or error))
    return UndecodableMediaError(f"{type(error).__name__}: {error}")
