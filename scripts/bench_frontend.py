"""The server's STT front end on the CPU: how far it scales with concurrent requests when the model is free.

    .venv/bin/python scripts/bench_frontend.py [--seconds 120] [--concurrency 1,2,4,8] [--format wav|flac|mp3]
                                               [--repeat 3] [--model whisper:base]

A CPU-measurable proxy for the GPU box, where the model call is fast and the front end decides whether the GPU
is fed: the real server (`python -m server.cli serve` behaviour, in a subprocess) runs its whole front end,
upload -> decode -> VAD -> chunking -> log-Mel features -> hand-off to the batch worker, in the same
thread/process layout as in production, but *in this benchmark only* the batch worker's model call is
replaced by one that stacks the features (as the real one does) and returns empty text at once.

It prints, for each concurrency level C (C requests of `--seconds` of real speech at once, `--repeat` runs,
median wall time), the aggregate audio seconds per wall second and the server's CPU use (its whole process
tree), then `single`: one request against a server held to one thread (one front-end worker,
OMP/BLAS/CTranslate2 threads = 1). Its last line is

    SUMMARY scaling=S single=N

with N = the single request's audio-s per wall-s and S = the C = 8 aggregate over N (the targets on a 2-core
machine: S >= 1.7, N no lower than before the front end moved to worker processes).

Reference, both measured back to back on the 2-core development machine with this script (120 s WAV,
--repeat 3, the defaults), 2026-11-27:
    commit 6b2e9e3 (the front end in server threads):  single=320.9 audio-s/s, C=8 401.6, scaling=1.25
    this front end (worker processes, block log-Mel):   single=397.8 audio-s/s, C=8 734.4, scaling=1.85
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_stt import Server, bench_audio, tree_cpu_seconds, write_wav  # noqa: E402

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "S7_CPU_THREADS": "1",
              "S7_FRONTEND_WORKERS": "1"}


# ---------------------------------------------------------------- the server side (runs in the subprocess)


def serve_with_free_model() -> None:
    """`python -m server.cli serve`, with the batch worker's model call replaced (this benchmark only)."""
    from engines import whisper_batch

    def free_model(self: whisper_batch.BatchRunner, items: list) -> list:
        np.stack([it.features for it in items])  # what the real call does with them before the GPU
        for it in items:
            if it.slot is not None and it.slot.language is None:
                it.slot.language, it.slot.probability = "en", 1.0
        return [whisper_batch.Decoded("") for _ in items]

    whisper_batch.BatchRunner.run = free_model  # type: ignore[method-assign]
    from server.cli import main

    sys.exit(main(["serve"]))


# ---------------------------------------------------------------- measuring


def level(server: Server, data: bytes, filename: str, c: int, repeat: int) -> tuple[float, float]:
    """(median wall seconds, server CPU % over the runs)."""
    walls = []
    cpu0, t0 = tree_cpu_seconds(server.pid), time.perf_counter()
    for _ in range(max(1, repeat)):
        wall, _texts = server.run(data, c, filename)
        walls.append(wall)
    cpu = (tree_cpu_seconds(server.pid) - cpu0) / (time.perf_counter() - t0) * 100
    return float(np.median(walls)), cpu


def encode(audio: np.ndarray, fmt: str, tmp: Path) -> Path:
    path = tmp / f"bench.{fmt}"
    if fmt == "wav":
        write_wav(path, audio)
        return path
    import av

    codec = {"flac": "flac", "mp3": "libmp3lame"}[fmt]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(audio[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=120.0, help="audio per request")
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--format", default="wav", choices=["wav", "flac", "mp3"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", default="whisper:base", help="only its tokenizer and feature settings are used")
    ap.add_argument("--models-dir", type=Path, default=Path(os.environ.get("S7_MODELS_DIR", REPO / ".cache" / "models")))
    ap.add_argument("--testdata", type=Path, default=Path(os.environ.get("S7_TESTDATA", REPO.parent / "shared" / "testdata")))
    args = ap.parse_args()
    if args.serve:
        serve_with_free_model()
        return
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    audio = bench_audio(args.testdata, args.seconds / 60)
    print(f"# front end only (model call replaced), {args.seconds:.0f} s {args.format} per request, "
          f"{os.cpu_count()} CPUs, concurrency {levels}, repeat {args.repeat}", flush=True)
    argv = (str(Path(__file__).resolve()), "--serve")
    with tempfile.TemporaryDirectory(prefix="bench_frontend_") as tmp:
        path = encode(audio, args.format, Path(tmp))
        data, name = path.read_bytes(), path.name
        rows = []
        server = Server(args.models_dir, "cpu", args.model, 0, 8, argv=argv)
        try:
            server.run(data, 2, name)  # warm-up: model load, worker processes, allocator pools
            for c in levels:
                wall, cpu = level(server, data, name, c, args.repeat)
                rows.append((f"C={c}", c, wall, cpu))
                print(f"  C={c}: {wall:.2f} s", flush=True)
        finally:
            server.close()
        single = Server(args.models_dir, "cpu", args.model, 1, 8, argv=argv, extra_env=ONE_THREAD)
        try:
            single.run(data, 1, name)
            wall, cpu = level(single, data, name, 1, args.repeat)
            rows.append(("single", 1, wall, cpu))
        finally:
            single.close()
    print()
    print(f"{'level':<8} {'requests':>8} {'wall s':>8} {'audio-s/s':>10} {'server CPU %':>12}")
    for label, c, wall, cpu in rows:
        print(f"{label:<8} {c:>8} {wall:>8.2f} {c * args.seconds / wall:>10.1f} {cpu:>12.0f}")
    n = args.seconds / rows[-1][2]
    at8 = next((c * args.seconds / wall for label, c, wall, _ in rows if label == "C=8"), None)
    scaling = f"{at8 / n:.2f}" if at8 else "n/a"
    print(f"SUMMARY scaling={scaling} single={n:.1f}")


if __name__ == "__main__":
    main()
