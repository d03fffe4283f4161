"""Streaming audio encoders for every output format the server speaks, chosen by name.

MP3 is `engines.mp3.Mp3StreamEncoder` (bare LAME frames). Every other format is one PyAV codec inside one
FFmpeg muxer writing to memory: Opus in Ogg, AAC in ADTS, FLAC, WAV and raw 16-bit PCM. The muxer's output
is not seekable, so nothing waits for a header to be patched at the end: WAV goes out with the "unknown
length" sizes (0xFFFFFFFF) streaming players accept, FLAC without the total sample count in STREAMINFO, and
Ogg pages are cut every 100 ms instead of every second. Each `encode()` returns the bytes completed so far,
and the concatenation of all `encode()` results plus `flush()` is a complete, decodable file.

PyAV's encoder resamples and re-frames whatever it is given (any length, any rate), so callers hand over
float32 mono PCM at the voice's own rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np

from engines.types import EngineError

if TYPE_CHECKING:
    from av.audio.stream import AudioStream


class StreamEncoder(Protocol):
    """Float32 mono PCM in, encoded bytes out, as early as the codec allows; not thread-safe."""

    def encode(self, pcm: np.ndarray) -> bytes: ...

    def flush(self) -> bytes: ...


@dataclass(frozen=True)
class OutputFormat:
    name: str  # what clients ask for: mp3, opus, aac, flac, wav, pcm
    media_type: str  # Content-Type of the response
    muxer: str  # FFmpeg muxer; "" for MP3, which needs none
    codec: str  # FFmpeg encoder
    sample_rate: int | None  # None: the source's rate is kept
    bit_rate: int = 0  # 0: the codec's default (lossless and PCM formats have none)
    muxer_options: Mapping[str, str] = field(default_factory=dict)


# 24 kHz for the lossless and PCM formats, as OpenAI documents for `pcm`; Opus runs at its native 48 kHz.
FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat("mp3", "audio/mpeg", "", "libmp3lame", None, 64000),
        OutputFormat("opus", "audio/ogg", "ogg", "libopus", 48000, 48000, {"page_duration": "100000"}),
        OutputFormat("aac", "audio/aac", "adts", "aac", 24000, 64000),
        OutputFormat("flac", "audio/flac", "flac", "flac", 24000),
        OutputFormat("wav", "audio/wav", "wav", "pcm_s16le", 24000),
        OutputFormat("pcm", "audio/pcm", "s16le", "pcm_s16le", 24000),
    )
}


def open_encoder(name: str, source_rate: int, *, sample_rate: int | None = None) -> StreamEncoder:
    """An encoder for format `name` fed PCM at `source_rate`; `sample_rate` overrides the format's output
    rate (e.g. raw PCM at the voice's own rate for Wyoming, which announces the rate it sends)."""
    fmt = FORMATS.get(name)
    if fmt is None:
        raise EngineError(f"unknown audio format {name!r}: use one of {', '.join(FORMATS)}")
    if fmt.name == "mp3":
        from engines.mp3 import Mp3StreamEncoder

        return Mp3StreamEncoder(sample_rate or source_rate, fmt.bit_rate)
    return _MuxedEncoder(fmt, source_rate, sample_rate or fmt.sample_rate or source_rate)


class _MemorySink:
    """A write-only file object for FFmpeg's custom IO: no seek(), so muxers stream instead of patching."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class _MuxedEncoder:
    def __init__(self, fmt: OutputFormat, source_rate: int, out_rate: int) -> None:
        import av  # heavy import kept out of module import time

        self._av = av
        self._source_rate = source_rate
        self._sink = _MemorySink()
        try:
            self._container = av.open(self._sink, mode="w", format=fmt.muxer, options=dict(fmt.muxer_options))
            self._stream = cast("AudioStream", self._container.add_stream(fmt.codec, rate=out_rate, layout="mono"))
            if fmt.bit_rate:
                self._stream.bit_rate = fmt.bit_rate
        except (av.FFmpegError, ValueError) as exc:
            raise EngineError(f"cannot encode {fmt.name} at {out_rate} Hz: {exc}") from exc
        self.sample_rate = out_rate
        self._flushed = False

    def encode(self, pcm: np.ndarray) -> bytes:
        if self._flushed:
            raise EngineError("encode() called after flush()")
        samples = np.clip(np.asarray(pcm, dtype=np.float32).reshape(-1), -1.0, 1.0)
        if samples.size == 0:
            return b""
        frame = self._av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, :]), format="flt", layout="mono")
        frame.sample_rate = self._source_rate
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def flush(self) -> bytes:
        if self._flushed:
            return b""
        self._flushed = True
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()  # writes the trailer (Ogg's last page, FLAC's final frame)
        return self._sink.take()
