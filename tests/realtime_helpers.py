"""Helpers for the WS /stt/realtime tests: audio made from real clips (PCM, Opus in WebM/Ogg made with
PyAV) and a synchronous WebSocket client that records every message of a session."""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np

from engines.types import SAMPLE_RATE

ADMIN_KEY = "s7_realtime_test_admin_key_0123456789"


# ---------------------------------------------------------------- audio helpers


def load(path: Path, rate: int = SAMPLE_RATE) -> np.ndarray:
    import soundfile as sf
    from scipy.signal import resample_poly

    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if sr == rate:
        return mono.astype(np.float32)
    g = gcd(sr, rate)
    return resample_poly(mono, rate // g, sr // g).astype(np.float32)


def s16(audio: np.ndarray, channels: int = 1) -> bytes:
    samples = np.clip(audio, -1.0, 32767 / 32768) * 32768
    return np.repeat(samples[:, None], channels, axis=1).astype("<i2").tobytes()


def encode(audio_48k: np.ndarray, container: str, codec: str) -> bytes:
    """What a browser's MediaRecorder produces, made with PyAV at test time."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream: Any = out.add_stream(codec, rate=48000, layout="mono")
        pcm = (np.clip(audio_48k, -1.0, 32767 / 32768) * 32768).astype(np.int16)
        for i in range(0, len(pcm), 4800):
            frame = av.AudioFrame.from_ndarray(pcm[None, i : i + 4800], format="s16", layout="mono")
            frame.sample_rate = 48000
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def frames(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def random_chunks(data: bytes, rng: random.Random, largest: int) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, largest)
        out.append(data[i : i + n])
        i += n
    return out



# ---------------------------------------------------------------- the server and a client


@dataclass
class Server:
    app: Any
    url: str

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/stt/realtime"

    def account(self, **fields: Any) -> str:
        import httpx

        body = {"apiKey": ADMIN_KEY, "startingMinutes": 10, "companyName": "Realtime Co", **fields}
        r = httpx.post(f"{self.url}/accounts", json=body, timeout=30)
        assert r.status_code == 201, r.text
        return r.json()["apiKey"]

    def capabilities(self, key: str) -> dict:
        import httpx

        r = httpx.get(f"{self.url}/account/capabilities", headers={"x-api-key": key}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()


@dataclass
class Session:
    messages: list[dict]
    close_code: int | None

    @property
    def updates(self) -> list[dict]:
        return [m for m in self.messages if "tokens" in m and not m.get("finished")]

    def finals(self) -> list[dict]:
        return [t for m in self.updates for t in m["tokens"] if t["is_final"] and t["text"] != "<end>"]

    def text(self) -> str:
        return "".join(t["text"] for t in self.finals())


def run_session(
    server: Server, key: str, config: dict | str, chunks: Iterable[bytes], *, pace_s: float = 0.0,
    finalize: bool = True, end_frame: bytes | str = b"", key_in_url: bool = True,
) -> Session:
    """Config, audio frames (every `pace_s` seconds when given: a microphone), the empty frame, then every
    message until the server closes. `key_in_url=False` connects without a key: the config must carry it."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    messages: list[dict] = []
    url = f"{server.ws_url}?apiKey={key}" if key_in_url else server.ws_url
    with connect(url, proxy=None, max_queue=None, open_timeout=30) as ws:
        start = time.monotonic()
        try:
            # A refused key may close the socket before the config is even sent: that is inside the try too.
            ws.send(config if isinstance(config, str) else json.dumps(config))
            for i, chunk in enumerate(chunks):
                if pace_s:
                    time.sleep(max(0.0, start + i * pace_s - time.monotonic()))
                ws.send(chunk)
            if not finalize:  # the client goes away mid-stream
                ws.close()
                return Session(messages, ws.close_code)
            ws.send(end_frame)
        except ConnectionClosed:
            pass  # the server refused the session: its error message is still in the queue
        try:
            while True:
                messages.append(json.loads(ws.recv(timeout=300)))
        except ConnectionClosed:
            pass
        return Session(messages, ws.close_code)


def assert_finished(session: Session) -> None:
    assert session.messages[-1] == {
        "tokens": [], "finished": True,
        "final_audio_proc_ms": session.messages[-1]["final_audio_proc_ms"],
        "total_audio_proc_ms": session.messages[-1]["total_audio_proc_ms"],
    }
    assert session.close_code == 1000
    assert all("error_code" not in m for m in session.messages)


def assert_each_final_once(finals: list[dict]) -> None:
    """Final tokens move strictly forward in time: a word sent final twice would step back."""
    for a, b in zip(finals, finals[1:], strict=False):
        assert a["start_ms"] <= a["end_ms"] <= b["start_ms"] <= b["end_ms"], (a, b)
