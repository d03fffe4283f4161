"""Piper TTS latency and throughput: time to first chunk, time to first MP3 byte, total time, real-time factor.

    .venv/bin/python scripts/bench_tts.py [--device auto|cpu|cuda] [--voice PATH.onnx] [--repeats N]
                                          [--http --models-dir DIR]

Each case streams sentences through `Mp3StreamEncoder` exactly like the /tts response does. The baseline
in the same run is the non-streaming alternative: a server that synthesizes everything before sending
would deliver its first byte at "total", so `total / first MP3 byte` is what streaming buys.

`--http` also runs the real server (uvicorn on a free local port, a throw-away data directory, the voices in
`--models-dir`, default `$S7_MODELS_DIR`) and times POST /tts as a client sees it: first byte received and
last byte received. `HTTP/engine 1st` is the server's overhead on the first byte (auth, minutes, queueing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.mp3 import Mp3StreamEncoder  # noqa: E402
from engines.piper_tts import PiperEngine, default_voice_paths, split_sentences  # noqa: E402
from engines.types import TtsRequest  # noqa: E402

SHORT_TEXT = "Hello from Speech7. This is a short test of the local text to speech engine."

_PARAGRAPH = (
    "The committee met on Tuesday morning to review the budget for the coming year. "
    "Several members raised concerns about the rising cost of maintenance, especially for the older buildings "
    "near the river. After a long discussion, they agreed to postpone the decision until the engineers had "
    "finished their inspection. Meanwhile, the library will extend its opening hours during the exam period, "
    "and the sports center will offer free classes for residents over sixty. Questions about these changes "
    "can be sent to the town office by email or by phone, and answers will be published on the website. "
)


def long_text(words: int = 500) -> str:
    pool = _PARAGRAPH.split()
    return " ".join(pool[i % len(pool)] for i in range(words)).rstrip(",") + "."


@dataclass
class Run:
    first_chunk_s: float
    first_mp3_byte_s: float
    total_s: float
    audio_s: float
    mp3_bytes: int


def measure(engine: PiperEngine, text: str) -> Run:
    enc = Mp3StreamEncoder(engine.sample_rate)
    t0 = time.perf_counter()
    first_chunk = first_byte = None
    samples = size = 0
    for chunk in engine.synthesize(TtsRequest(text)):
        if first_chunk is None:
            first_chunk = time.perf_counter() - t0
        data = enc.encode(chunk.pcm)
        if data and first_byte is None:
            first_byte = time.perf_counter() - t0
        samples += chunk.pcm.size
        size += len(data)
    tail = enc.flush()
    total = time.perf_counter() - t0
    size += len(tail)
    if first_byte is None:
        first_byte = total
    return Run(first_chunk or total, first_byte, total, samples / engine.sample_rate, size)


@dataclass
class HttpRun:
    first_byte_s: float
    total_s: float


class LiveServer:
    """The app under uvicorn in a thread, with an account that has minutes enough for every case."""

    def __init__(self, models_dir: Path, device: str) -> None:
        import tempfile

        import httpx

        from server.app import create_app
        from server.launcher import ThreadedServer
        from server.settings import Settings

        self._tmp = tempfile.TemporaryDirectory(prefix="bench-tts-")
        admin = "s7_bench_admin_key_0123456789"
        settings = Settings(data_dir=Path(self._tmp.name), admin_key=admin, models_dir=models_dir, device=device)
        # Bounded wait for the socket (model loading happens on the first request).
        self._server = ThreadedServer(create_app(settings), timeout_s=60)
        self.url = self._server.url
        r = httpx.post(f"{self.url}/accounts", json={"apiKey": admin, "startingMinutes": 10_000}, timeout=30)
        r.raise_for_status()
        self.key = r.json()["apiKey"]

    def measure(self, text: str, voice: str) -> HttpRun:
        import httpx

        body = {"apiKey": self.key, "text": text, "voice": voice}
        t0 = time.perf_counter()
        first = None
        with httpx.stream("POST", f"{self.url}/tts", json=body, timeout=600) as r:
            r.raise_for_status()
            for chunk in r.iter_bytes():
                if chunk and first is None:
                    first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        return HttpRun(first if first is not None else total, total)

    def close(self) -> None:
        self._server.stop()
        self._tmp.cleanup()


def pick_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import onnxruntime

    return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument(
        "--voice", type=Path, help="voice .onnx (its .onnx.json beside it); default en_US-joe-medium"
    )
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed runs per case after one warm-up (median shown)"
    )
    ap.add_argument("--http", action="store_true", help="also time POST /tts through a local server")
    ap.add_argument(
        "--models-dir", type=Path, default=os.environ.get("S7_MODELS_DIR"),
        help="models directory for --http (the voice must be in its piper/ folder); default $S7_MODELS_DIR",
    )
    args = ap.parse_args()
    if args.http and not args.models_dir:
        ap.error("--http needs --models-dir (or S7_MODELS_DIR)")

    onnx, cfg = (
        (args.voice, args.voice.with_name(args.voice.name + ".json")) if args.voice else default_voice_paths()
    )
    device = pick_device(args.device)
    t0 = time.perf_counter()
    engine = PiperEngine(onnx, cfg, voice_name=onnx.name.removesuffix(".onnx"), device=device)
    load_s = time.perf_counter() - t0
    measure(engine, SHORT_TEXT)  # warm-up: first session.run allocates arenas

    server = LiveServer(args.models_dir, device) if args.http else None
    if server is not None:
        server.measure(SHORT_TEXT, engine.model)  # warm-up: loads the voice inside the server
    cases = [("short", SHORT_TEXT), ("500 words", long_text(500))]
    print(
        f"voice {engine.model} @ {engine.sample_rate} Hz, device {device}, load {load_s:.2f} s, "
        f"median of {args.repeats} runs"
    )
    header = (
        f"{'case':<10} {'words':>5} {'sent':>4} {'audio s':>8} {'1st chunk s':>11} {'1st MP3 s':>10} "
        f"{'total s':>8} {'RTF':>6} {'total/1st MP3':>13} {'MP3 kB':>7}"
    )
    if server is not None:
        header += f" {'HTTP 1st s':>10} {'HTTP total s':>12} {'HTTP/engine 1st':>15}"
    print(header)
    print("-" * len(header))
    summary = []
    for name, text in cases:
        runs = [measure(engine, text) for _ in range(max(1, args.repeats))]

        def med(attr: str, runs: list[Run] = runs) -> float:
            return statistics.median(getattr(r, attr) for r in runs)

        fc, fb, tot, aud = med("first_chunk_s"), med("first_mp3_byte_s"), med("total_s"), med("audio_s")
        rtf = tot / aud if aud else float("nan")
        row = (
            f"{name:<10} {len(text.split()):>5} {len(split_sentences(text)):>4} {aud:>8.2f} {fc:>11.3f} "
            f"{fb:>10.3f} {tot:>8.2f} {rtf:>6.3f} {tot / fb:>12.1f}x {med('mp3_bytes') / 1000:>7.1f}"
        )
        note = f"{name}: first MP3 byte {fb * 1000:.0f} ms, RTF {rtf:.3f}"
        if server is not None:
            http = [server.measure(text, engine.model) for _ in range(max(1, args.repeats))]
            hfb = statistics.median(h.first_byte_s for h in http)
            htot = statistics.median(h.total_s for h in http)
            row += f" {hfb:>10.3f} {htot:>12.2f} {hfb / fb:>14.2f}x"
            note += f", HTTP first byte {hfb * 1000:.0f} ms"
        print(row)
        summary.append(note)
    if server is not None:
        server.close()
    print(f"summary ({device}): " + "; ".join(summary))


if __name__ == "__main__":
    main()
