"""Peak memory of the /stt service path on long inputs, as a multiple of the audio's float32 size.

    .venv/bin/python scripts/bench_memory.py [--minutes 30,60] [--format mp3|flac] [--rate 16000]
                                             [--stages decode,vad,stt,diarize] [--model tiny.en]
                                             [--models-dir DIR] [--trace] [--keep DIR]

Builds each long input from the real speech under ../shared/testdata/en (clips with 1 s pauses and a 15 s
silence every ten clips, repeated), encoded with PyAV into a temp dir. Then every (length, stage) case runs
in a FRESH subprocess, the way /stt runs it in-process (`server.transcription.decode_media`, then
`SttPipeline.run` with the same model manager, no minutes accounting):

- decode:  decode_media only (the decoded array is what every later stage also holds);
- vad:     decode + `engines.vad.speech_spans` over the whole recording;
- stt:     decode + the STT engine (VAD, features, batched decoding), diarization off;
- diarize: decode + STT + the built-in diarizer (diarization on).

Each child first warms up on a 4-minute input built the same way (one request through the same stages, with
full batches), so the baseline RSS includes the models and the engines' fixed working memory (for tiny.en
with batches of 8 on CPU, CTranslate2 needs ~0.5 GB for one batch's encoder/attention); "extra" is ru_maxrss after the case minus ru_maxrss after warm-up, i.e. the
per-request high-water mark. `ratio` = extra / (samples * 4 bytes). With --trace a second child per case
reports tracemalloc's peak (numpy registers its buffers with tracemalloc; ONNX Runtime's and CTranslate2's
own allocations are not traced, RSS covers them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TESTDATA = ROOT.parent / "shared" / "testdata"
STAGES = ("decode", "vad", "stt", "diarize")
WARMUP_MINUTES = 4.0


# ---------------------------------------------------------------- input


def build_input(minutes: float, fmt: str, rate: int, out_dir: Path) -> tuple[Path, int]:
    """Writes `minutes` of speech+silence to out_dir; returns the path and the 16 kHz sample count."""
    import av
    import numpy as np

    from engines.audio import decode_file

    clips = [decode_file(p) for p in sorted((TESTDATA / "en").glob("*.flac")) + sorted((TESTDATA / "en").glob("*.wav"))]
    target = int(minutes * 60 * 16000)
    path = out_dir / f"long_{minutes:g}min.{fmt}"
    codec = "libmp3lame" if fmt == "mp3" else fmt
    written = 0
    with av.open(str(path), "w") as out:
        stream = cast("av.audio.stream.AudioStream", out.add_stream(codec, rate=rate, layout="mono"))
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate,
                                     frame_size=stream.codec_context.frame_size or None)

        def emit(pcm: np.ndarray) -> None:
            nonlocal written
            pcm = pcm[: target - written]
            if pcm.size == 0:
                return
            written += pcm.size
            frame = av.AudioFrame.from_ndarray(pcm[None, :].astype(np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            for f in resampler.resample(frame):
                out.mux(stream.encode(f))

        i = 0
        while written < target:
            emit(clips[i % len(clips)])
            emit(np.zeros(16000 * (15 if i % 10 == 9 else 1), dtype=np.float32))
            i += 1
        for f in resampler.resample(None):
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))
    return path, written


# ---------------------------------------------------------------- child


def child(args: argparse.Namespace) -> None:
    import gc
    import tracemalloc

    from engines.manager import EngineConfig, ModelManager
    from engines.vad import speech_spans
    from server.stt_options import SttOptions
    from server.transcription import SttPipeline, decode_media

    models = ModelManager(EngineConfig(models_dir=Path(args.models_dir), device="cpu", diarizer="builtin"))
    pipeline = SttPipeline(models)
    options = SttOptions(diarize=args.stage == "diarize")

    def run(path: Path) -> int:
        audio = decode_media(path)
        if args.stage == "vad":
            speech_spans(audio)
        elif args.stage in ("stt", "diarize"):
            pipeline.run(f"{args.model}", audio, options, None)
        return int(audio.size)

    # Warm-up on a few minutes (full batches), as a server that has served one long file before: models
    # loaded, CTranslate2's and ONNX Runtime's working memory for a full batch already allocated.
    run(Path(args.warmup))
    gc.collect()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    samples = run(Path(args.file))
    wall = time.perf_counter() - t0
    peak_traced = tracemalloc.get_traced_memory()[1] if args.trace else 0
    extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"samples": samples, "base": base, "extra": extra, "traced": peak_traced, "wall": wall}))
    models.close()


# ---------------------------------------------------------------- parent


def run_case(args: argparse.Namespace, path: Path, warmup: Path, stage: str, trace: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", "--file", str(path), "--stage", stage,
           "--model", args.model, "--models-dir", args.models_dir, "--warmup", str(warmup)] + (["--trace"] if trace else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYANNOTE_METRICS_ENABLED="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"case {stage} on {path.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", default="30,60")
    p.add_argument("--format", default="mp3", choices=["mp3", "flac"])
    p.add_argument("--rate", type=int, default=16000, help="sample rate of the encoded file")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--models-dir", default=os.environ.get("S7_MODELS_DIR", str(ROOT / ".cache" / "models")))
    p.add_argument("--trace", action="store_true", help="also run each case under tracemalloc")
    p.add_argument("--keep", help="write the inputs here (reused when present) instead of a temp dir")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--warmup", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    stages = [s for s in args.stages.split(",") if s]
    for s in stages:
        if s not in STAGES:
            raise SystemExit(f"unknown stage {s!r} (choose from {', '.join(STAGES)})")
    with tempfile.TemporaryDirectory(prefix="s7-bench-mem-") as tmp:
        out_dir = Path(args.keep) if args.keep else Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"{'input':<22}{'stage':<9}{'audio MB':>9}{'extra RSS MB':>13}{'ratio':>7}"
              f"{'traced MB':>10}{'t ratio':>8}{'wall s':>8}", flush=True)
        warmup = out_dir / f"long_{WARMUP_MINUTES:g}min.{args.format}"
        if not warmup.is_file():
            build_input(WARMUP_MINUTES, args.format, args.rate, out_dir)
        for minutes in [float(m) for m in args.minutes.split(",") if m]:
            path = out_dir / f"long_{minutes:g}min.{args.format}"
            if not path.is_file():
                path, _ = build_input(minutes, args.format, args.rate, out_dir)
            for stage in stages:
                r = run_case(args, path, warmup, stage, False)
                audio_mb = r["samples"] * 4 / 2**20
                traced = run_case(args, path, warmup, stage, True)["traced"] if args.trace else 0
                size_mb = path.stat().st_size / 2**20
                print(f"{path.name + f' ({size_mb:.0f} MB)':<22}{stage:<9}{audio_mb:>9.1f}{r['extra'] / 2**20:>13.1f}"
                      f"{r['extra'] / 2**20 / audio_mb:>7.2f}"
                      f"{traced / 2**20:>10.1f}{traced / 2**20 / audio_mb:>8.2f}{r['wall']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
