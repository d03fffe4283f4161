"""Helpers for the /stt API tests: requests, the ledger, error bodies, WER, and media files made at test
time from a real clip with PyAV (every container and codec a client may send)."""

from __future__ import annotations

import fractions
import wave
from pathlib import Path
from typing import cast

import av
import httpx
import numpy as np
from av.audio.stream import AudioStream

from engines.audio import decode_file
from engines.types import SAMPLE_RATE

CONTENT_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".mp4": "video/mp4"}




async def account(api, model: str = "tiny.en", **fields) -> str:  # type: ignore[no-untyped-def]
    return (await api.account(sttApiKey=f"whisper:{model}", **fields))["apiKey"]


async def post_stt(  # type: ignore[no-untyped-def]
    api, key: str | None, path: Path, ctype: str | None = None, **fields: str
) -> httpx.Response:
    headers = {"x-api-key": key} if key else {}
    ctype = ctype or CONTENT_TYPES.get(path.suffix, "application/octet-stream")
    with open(path, "rb") as fh:
        return await api.client.post("/stt", headers=headers, files={"audio": (path.name, fh, ctype)}, data=fields)


async def ledger(api, key: str) -> list[tuple[str, str, float]]:  # type: ignore[no-untyped-def]
    acct = (await api.client.get("/account", headers={"x-api-key": key})).json()
    r = await api.client.get(f"/accounts/{acct['id']}/usage", headers={"x-api-key": api.settings.admin_key})
    assert r.status_code == 200, r.text
    return [(u["kind"], u["status"], u["minutes"]) for u in r.json()["usage"] if u["kind"] != "credit"]


def error_of(r: httpx.Response, status: int) -> dict:
    """Every failure is JSON `{"error": {"code", "message"}}` with a message a person can act on."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] and len(err["message"]) > 10, err
    return err


def leftover_uploads(api) -> list[Path]:  # type: ignore[no-untyped-def]
    tmp = Path(api.settings.data_dir) / "tmp"  # each server process keeps its files in its own directory here
    return sorted(p for p in tmp.rglob("*") if p.is_file())


# ---------------------------------------------------------------- media made at test time


def encode(pcm: np.ndarray, path: Path, fmt: str, codec: str, rate: int, video: bool = False) -> Path:
    """Writes 16 kHz mono float PCM into a real container with a real codec (and a video track if asked)."""
    with av.open(str(path), "w", format=fmt) as out:
        a = cast(AudioStream, out.add_stream(codec, rate=rate, layout="mono"))
        v = None
        if video:
            v = out.add_stream("mpeg4", rate=10)
            v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        resampler = av.AudioResampler(format=a.format.name, layout="mono", rate=rate)
        s16 = (np.clip(pcm, -1, 1) * 32767).astype(np.int16)
        step = SAMPLE_RATE // 10
        for i in range(0, s16.size, step):
            frame = av.AudioFrame.from_ndarray(s16[None, i : i + step], format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, i, fractions.Fraction(1, SAMPLE_RATE)
            for r in resampler.resample(frame):
                out.mux(a.encode(r))
        for r in resampler.resample(None):
            out.mux(a.encode(r))
        out.mux(a.encode(None))
        if v is not None:
            for k in range(int(pcm.size / SAMPLE_RATE * 10)):
                img = av.VideoFrame.from_ndarray(np.full((48, 64, 3), k % 255, np.uint8), format="rgb24")
                img.pts = k
                out.mux(v.encode(img.reformat(format="yuv420p")))
            out.mux(v.encode(None))
    return path


CLIP = "en/LJ001-0004"  # 5.1 s: "produced the block books, which were the immediate predecessors of ..."

# name, container, codec, sample rate, with video, content type
CONTAINERS = [
    ("clip.wav", "wav", "pcm_s16le", 16000, False, "audio/wav"),
    ("clip.flac", "flac", "flac", 16000, False, "audio/flac"),
    ("clip.mp3", "mp3", "libmp3lame", 16000, False, "audio/mpeg"),
    ("clip.ogg", "ogg", "libopus", 48000, False, "audio/ogg"),
    ("clip.opus", "opus", "libopus", 48000, False, "application/octet-stream"),  # what some browsers send
    ("clip.webm", "webm", "libopus", 48000, False, "audio/webm"),
    ("clip.m4a", "ipod", "aac", 16000, False, "audio/mp4"),
    ("clip.mp4", "mp4", "aac", 16000, True, "video/mp4"),
    ("clip.mkv", "matroska", "libmp3lame", 16000, True, "video/x-matroska"),
]


def make_media(d: Path, testdata: Path) -> Path:
    """The media files the tests send, made from real clips in `d`."""
    pcm = decode_file(testdata / f"{CLIP}.wav")
    for name, fmt, codec, rate, video, _ in CONTAINERS:
        encode(pcm, d / name, fmt, codec, rate, video)
    # 41 s: jfk then 30 s of silence, billed as 1.0 minute (two 0.5 min quanta).
    jfk = decode_file(testdata / "en" / "jfk.flac")
    encode(np.concatenate([jfk, np.zeros(30 * SAMPLE_RATE, np.float32)]), d / "long.flac", "flac", "flac", 16000)
    with wave.open(str(d / "no_samples.wav"), "wb") as w:  # a valid header and not one sample
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    with av.open(str(d / "video_only.mp4"), "w", format="mp4") as out:  # a video without an audio track
        v = out.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        for k in range(20):
            img = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            img.pts = k
            out.mux(v.encode(img.reformat(format="yuv420p")))
        out.mux(v.encode(None))
    (d / "garbage.wav").write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    (d / "empty.wav").write_bytes(b"")
    (d / "notes.txt").write_text("not audio at all\n")
    return d
