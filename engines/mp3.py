"""Streaming MP3 encoding in memory with PyAV's libmp3lame (no ffmpeg binary, no container).

The encoder writes bare MPEG audio frames. A raw MP3 elementary stream needs no header or index, so every
byte the encoder hands back can go to the client at once, and the concatenation of all `encode()` results
plus `flush()` is itself a valid `.mp3` file. The price is the absence of a Xing/LAME info frame: players
cannot trim LAME's ~1100-sample encoder delay and padding, so a decoded stream is a few tens of
milliseconds longer than the PCM that went in.
"""

from __future__ import annotations

import io

import numpy as np

from engines.types import EngineError

# Layer III frames hold 1152 samples (MPEG-1) or 576 (MPEG-2/2.5); libmp3lame reports its own frame_size.
_MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


class Mp3StreamEncoder:
    """Turns float32 mono PCM arriving in pieces of any length into MP3 bytes, as early as LAME allows.

    Not thread-safe: one encoder per response stream.
    """

    def __init__(self, sample_rate: int, bitrate: int = 64000) -> None:
        if sample_rate not in _MP3_SAMPLE_RATES:
            raise EngineError(
                f"MP3 cannot carry {sample_rate} Hz audio; resample to one of {_MP3_SAMPLE_RATES}"
            )
        import av  # heavy import kept out of module import time

        self.sample_rate = sample_rate
        self.bitrate = bitrate
        self._av = av
        ctx = av.CodecContext.create("libmp3lame", "w")
        ctx.sample_rate = sample_rate
        ctx.layout = "mono"
        ctx.format = "fltp"
        ctx.bit_rate = bitrate
        ctx.open()
        self._ctx = ctx
        # libmp3lame (no AV_CODEC_CAP_VARIABLE_FRAME_SIZE) accepts only full frames except the last one,
        # so samples wait here until a whole frame is available.
        self._frame_size = ctx.frame_size or 1152
        self._pending = np.zeros(0, dtype=np.float32)
        self._pts = 0
        self._flushed = False

    def encode(self, pcm: np.ndarray) -> bytes:
        """Feed mono PCM (float in [-1, 1]); returns the MP3 bytes completed so far (possibly empty)."""
        if self._flushed:
            raise EngineError("Mp3StreamEncoder.encode() called after flush()")
        samples = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if samples.size == 0:
            return b""
        # LAME's float input is nominally [-1, 1]; anything beyond would wrap or distort.
        samples = np.clip(samples, -1.0, 1.0)
        buf = np.concatenate([self._pending, samples]) if self._pending.size else samples
        n_full = (buf.size // self._frame_size) * self._frame_size
        self._pending = buf[n_full:].copy()
        out = bytearray()
        for start in range(0, n_full, self._frame_size):
            out += self._encode_frame(buf[start : start + self._frame_size])
        return bytes(out)

    def flush(self) -> bytes:
        """Encode what is buffered and drain LAME; the encoder is finished afterwards."""
        if self._flushed:
            return b""
        out = bytearray()
        if self._pending.size:
            out += self._encode_frame(self._pending)  # the short last frame (AV_CODEC_CAP_SMALL_LAST_FRAME)
            self._pending = np.zeros(0, dtype=np.float32)
        for packet in self._ctx.encode(None):
            out += bytes(packet)
        self._flushed = True
        return bytes(out)

    def _encode_frame(self, samples: np.ndarray) -> bytes:
        frame = self._av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples.reshape(1, -1)), format="fltp", layout="mono"
        )
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += samples.size
        return b"".join(bytes(p) for p in self._ctx.encode(frame))


def encode_mp3(pcm: np.ndarray, sample_rate: int, bitrate: int = 64000) -> bytes:
    """Whole-buffer convenience wrapper around `Mp3StreamEncoder`."""
    enc = Mp3StreamEncoder(sample_rate, bitrate)
    return enc.encode(pcm) + enc.flush()


def decode_mp3(data: bytes) -> tuple[np.ndarray, int]:
    """Decodes MP3 bytes to float32 mono PCM at the stream's own rate (for tests and duration checks)."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r", format="mp3") as container:
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            parts = [frame.to_ndarray().astype(np.float32) for frame in container.decode(stream)]
    except (av.FFmpegError, IndexError) as exc:
        raise EngineError(f"not a decodable MP3 stream: {exc}") from exc
    if not parts:
        return np.zeros(0, dtype=np.float32), rate
    # FFmpeg's MP3 decoder emits planar float, (channels, n): average channels for a joint-stereo file.
    pcm = np.concatenate([p[0] if p.shape[0] == 1 else p.mean(axis=0) for p in parts])
    return pcm, rate


def mp3_duration_seconds(data: bytes) -> float:
    """Playing time of an MP3 byte string, by decoding it (exact; headers are not trusted)."""
    pcm, rate = decode_mp3(data)
    return pcm.size / rate if rate else 0.0
