"""Speech-to-text throughput: the server's POST /stt path against plain faster-whisper, on the same audio in
the same run.

    .venv/bin/python scripts/bench_stt.py [--model whisper:base] [--device auto|cpu|cuda] [--minutes 2]
                                          [--concurrency 1,8,32,64] [--models-dir DIR] [--cpu-threads N]
                                          [--batch-size N] [--workers-per-device N] [--repeat N]
                                          [--baselines batched-array,batched-path[,plain]]

Every request carries `--minutes` of real speech (the clips under ../shared/testdata/en, concatenated with
short pauses and repeated) as a 16 kHz WAV file. Paths, each at every concurrency level C (C requests at once):

- server:         the real server (`python -m server.cli serve` in a subprocess on a free port, a throw-away
                  data directory), C concurrent HTTP clients each POSTing the WAV to /stt. The server batches
                  the 30 s windows of all requests into shared CTranslate2 calls.
- batched-path:   `faster_whisper.BatchedInferencePipeline.transcribe(path)`, C threads sharing one model: the
                  same WAV file, its own decoding included (what a user of the library would write).
- batched-array:  the same pipeline given the audio already decoded (its strongest case: no decoding).
- plain:          `faster_whisper.WhisperModel.transcribe` (sequential 30 s loop); slow, only on request.

The baselines get the same model, compute type, beam size 5, VAD, word timestamps (the server always aligns
words: its segments are cut from them) and as many model replicas as the server (`--workers-per-device`,
faster-whisper's num_workers). RTFx is audio seconds per wall second over the whole level (C x audio / wall
time); with `--repeat N` each level runs N times and the median wall time counts. Each path is warmed up with
one full request first. During every level the GPU's utilisation (nvidia-smi, every 100 ms: mean over the
level) and memory (peak) are sampled, and the server's CPU use (its whole process tree, % of one core).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engines.audio import decode_file  # noqa: E402
from engines.manager import stt_replicas  # noqa: E402
from engines.types import SAMPLE_RATE  # noqa: E402

ADMIN_KEY = "s7_bench_admin_key_0123456789"


@dataclass
class Level:
    path: str
    concurrency: int
    audio_s: float  # per request
    wall_s: float
    words: float  # mean words per request: the paths did comparable work
    peak_gpu_mib: float | None
    gpu_util: float | None = None  # mean utilisation % during the level
    cpu_pct: float | None = None  # the server's process tree, % of one core

    @property
    def rtfx(self) -> float:
        return self.concurrency * self.audio_s / self.wall_s


# ---------------------------------------------------------------- data


def bench_audio(testdata: Path, minutes: float) -> np.ndarray:
    """The English test clips with 0.6 s pauses, repeated to `minutes` of 16 kHz mono audio."""
    clips = sorted((testdata / "en").glob("*.wav")) + sorted((testdata / "en").glob("*.flac"))
    if not clips:
        sys.exit(f"no test audio under {testdata}/en (set S7_TESTDATA)")
    gap = np.zeros(int(0.6 * SAMPLE_RATE), np.float32)
    pieces = [p for c in clips for p in (decode_file(c), gap)]
    one = np.concatenate(pieces)
    want = int(minutes * 60 * SAMPLE_RATE)
    return np.tile(one, want // one.size + 1)[:want]


def write_wav(path: Path, audio: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


# ---------------------------------------------------------------- GPU memory


class GpuSampler:
    """nvidia-smi every 100 ms in a thread: (time, utilisation %, memory MiB) samples, read per level."""

    def __init__(self, enabled: bool, index: int = 0) -> None:
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.index = index
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> tuple[float, float] | None:
        try:
            out = subprocess.run(
                ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5,
            ).stdout.strip()
            util, mem = out.splitlines()[0].split(",")
            return float(util), float(mem)
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            v = self._read()
            if v is not None:
                self.samples.append((time.perf_counter(), *v))
            self._stop.wait(0.1)

    def window(self, t0: float, t1: float) -> tuple[float | None, float | None]:
        """(mean utilisation %, peak memory MiB) of the samples taken between t0 and t1."""
        got = [(u, m) for t, u, m in self.samples if t0 <= t <= t1]
        if not got:
            return None, None
        return sum(u for u, _ in got) / len(got), max(m for _, m in got)

    def __enter__(self) -> GpuSampler:
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process and all its descendants (the server's front-end worker
    processes are grandchildren, under the forkserver)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    for pid, seconds in cpu.items():
        p = pid
        while p and p != root and p in parents:
            p = parents[p]
        if p == root:
            total += seconds
    return total


# ---------------------------------------------------------------- the server path


class Server:
    """The real server in a subprocess, so the clients' Python does not share its interpreter."""

    def __init__(self, models_dir: Path, device: str, model: str, cpu_threads: int, batch_size: int,
                 *, argv: Sequence[str] = ("-m", "server.cli", "serve"), extra_env: dict[str, str] | None = None) -> None:
        import httpx

        from server.launcher import ServerStartError, start_process

        self._tmp = tempfile.TemporaryDirectory(prefix="bench_stt_")
        env = {
            "S7_DATA_DIR": self._tmp.name, "S7_MODELS_DIR": str(models_dir), "S7_ADMIN_KEY": ADMIN_KEY,
            "S7_DEVICE": device, "S7_DEFAULT_STT": model, "S7_LOG_LEVEL": "warning", "S7_CPU_THREADS": str(cpu_threads),
            "S7_MAX_BATCH_SIZE": str(batch_size), "S7_STT_MAX_UPLOAD_MB": "2000",
            "S7_MAX_UPLOADS_PER_ACCOUNT": "0",  # every request is the bench account's
            # What server.cli sets before numpy loads; bench_frontend's server imports numpy before cli runs.
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1"),
            **(extra_env or {}),
        }
        try:
            self._server = start_process(env, command=(sys.executable, *argv), timeout_s=180)
        except ServerStartError as exc:
            self._tmp.cleanup()
            sys.exit(f"the server did not start: {exc}")
        self.url = self._server.url
        r = httpx.post(f"{self.url}/accounts", json={"apiKey": ADMIN_KEY, "startingMinutes": 1e8, "sttApiKey": model},
                       timeout=30)
        r.raise_for_status()
        self.key = r.json()["apiKey"]

    @property
    def pid(self) -> int:
        return self._server.proc.pid

    def run(self, data: bytes, concurrency: int, filename: str = "bench.wav") -> tuple[float, list[str]]:
        import httpx

        async def one(client: httpx.AsyncClient) -> str:
            r = await client.post("/stt", headers={"x-api-key": self.key},
                                  files={"audio": (filename, data, "application/octet-stream")})
            if r.status_code != 200:
                raise RuntimeError(f"/stt answered {r.status_code}: {r.text[:300]}")
            return str(r.json()["text"])

        async def level() -> tuple[float, list[str]]:
            limits = httpx.Limits(max_connections=concurrency + 1)
            async with httpx.AsyncClient(base_url=self.url, timeout=7200, limits=limits) as client:
                t0 = time.perf_counter()
                texts = await asyncio.gather(*(one(client) for _ in range(concurrency)))
                return time.perf_counter() - t0, list(texts)

        return asyncio.run(level())

    def close(self) -> None:
        self._server.stop()
        self._tmp.cleanup()


# ---------------------------------------------------------------- faster-whisper baselines


def threaded(fn: Callable[[], str], concurrency: int) -> tuple[float, list[str]]:
    with ThreadPoolExecutor(concurrency) as pool:
        t0 = time.perf_counter()
        futures = [pool.submit(fn) for _ in range(concurrency)]
        texts = [f.result() for f in futures]
        return time.perf_counter() - t0, texts


def repeated(run: Callable[[], tuple[float, list[str]]], times: int) -> tuple[float, list[str]]:
    """The median wall time of `times` runs, with the texts of the last."""
    walls: list[float] = []
    texts: list[str] = []
    for _ in range(max(1, times)):
        wall, texts = run()
        walls.append(wall)
    return float(np.median(walls)), texts


def baseline_fns(model_dir: Path, device: str, compute_type: str, cpu_threads: int, batch_size: int, workers: int,
                 audio: np.ndarray, wav: Path, names: Sequence[str]) -> tuple[object, dict[str, Callable[[], str]]]:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    wm = WhisperModel(str(model_dir), device=device, compute_type=compute_type, cpu_threads=cpu_threads,
                      num_workers=workers)
    pipe = BatchedInferencePipeline(model=wm)

    def text(segments: object) -> str:
        return " ".join(s.text.strip() for s in segments)  # type: ignore[attr-defined]

    fns: dict[str, Callable[[], str]] = {
        "batched-array": lambda: text(pipe.transcribe(audio, beam_size=5, batch_size=batch_size, word_timestamps=True)[0]),
        "batched-path": lambda: text(pipe.transcribe(str(wav), beam_size=5, batch_size=batch_size, word_timestamps=True)[0]),
        "plain": lambda: text(wm.transcribe(audio, beam_size=5, vad_filter=True, word_timestamps=True)[0]),
    }
    return wm, {n: fns[n] for n in names}


# ---------------------------------------------------------------- main


def pick_device(requested: str) -> str:
    import ctranslate2

    has_cuda = ctranslate2.get_cuda_device_count() > 0
    if requested == "cuda" and not has_cuda:
        sys.exit("--device cuda, but CTranslate2 sees no CUDA device")
    return requested if requested != "auto" else ("cuda" if has_cuda else "cpu")


def mean_words(texts: Sequence[str]) -> float:
    return sum(len(t.split()) for t in texts) / max(1, len(texts))


def print_table(levels: Sequence[Level], header: str) -> None:
    print(header)
    print(f"{'path':<14} {'conc':>5} {'audio/req s':>11} {'wall s':>8} {'RTFx':>8} {'words/req':>9} "
          f"{'GPU util %':>10} {'peak GPU MiB':>12} {'server CPU %':>12}")
    for lv in levels:
        def cell(v: float | None) -> str:
            return f"{v:.0f}" if v is not None else "-"

        print(f"{lv.path:<14} {lv.concurrency:>5} {lv.audio_s:>11.1f} {lv.wall_s:>8.2f} {lv.rtfx:>8.1f} "
              f"{lv.words:>9.0f} {cell(lv.gpu_util):>10} {cell(lv.peak_gpu_mib):>12} {cell(lv.cpu_pct):>12}")


def summary(levels: Sequence[Level]) -> str:
    by = {(lv.path, lv.concurrency): lv for lv in levels}
    parts = []
    for c in sorted({lv.concurrency for lv in levels}):
        s = by.get(("server", c))
        if s is None:
            continue
        cells = [f"server {s.rtfx:.1f}x"]
        for base in ("batched-path", "batched-array", "plain"):
            b = by.get((base, c))
            if b:
                cells.append(f"{s.rtfx / b.rtfx:.2f}x {base}")
        if s.gpu_util is not None:
            cells.append(f"GPU {s.gpu_util:.0f}%")
        parts.append(f"C={c}: " + ", ".join(cells))
    return "SUMMARY (RTFx, server vs faster-whisper) " + " | ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="whisper:base", help="whisper:<name> under <models-dir>/whisper/")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--minutes", type=float, default=2.0, help="minutes of audio per request")
    ap.add_argument("--concurrency", default="1,8,32,64", help="comma-separated concurrency levels")
    ap.add_argument("--models-dir", type=Path, default=Path(os.environ.get("S7_MODELS_DIR", REPO / ".cache" / "models")))
    ap.add_argument("--testdata", type=Path, default=Path(os.environ.get("S7_TESTDATA", REPO.parent / "shared" / "testdata")))
    ap.add_argument("--cpu-threads", type=int, default=0, help="CTranslate2 intra threads (0: its default)")
    ap.add_argument("--batch-size", type=int, default=0, help="max batch (0: 16 on CUDA, 8 on CPU)")
    ap.add_argument("--workers-per-device", type=int, default=0, help="model replicas (0: the server's default, 3 on CUDA, 2 on CPU)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per level; the median wall time counts")
    ap.add_argument("--baselines", default="batched-array,batched-path", help="any of batched-array, "
                    "batched-path, plain (comma-separated; empty: only the server)")
    args = ap.parse_args()
    if args.device != "cpu":  # the baselines load CTranslate2 in this process: it needs a cuBLAS too
        from engines.cuda_libs import reexec_with_cuda_libs

        reexec_with_cuda_libs(Path(tempfile.gettempdir()) / "speech7-cuda-libs", [str(Path(__file__).resolve()), *sys.argv[1:]])

    model = args.model if args.model.startswith("whisper:") else f"whisper:{args.model}"
    model_dir = args.models_dir / "whisper" / model.split(":", 1)[1]
    if not (model_dir / "model.bin").is_file():
        sys.exit(f"{model_dir}/model.bin is missing: install the model (scripts/models) or pass --models-dir")
    levels_c = [int(x) for x in args.concurrency.split(",") if x.strip()]
    device = pick_device(args.device)
    compute_type = "float16" if device == "cuda" else "int8"
    batch = args.batch_size or (16 if device == "cuda" else 8)
    workers = stt_replicas(args.workers_per_device, device)
    baselines = [b for b in args.baselines.split(",") if b.strip()]
    audio = bench_audio(args.testdata, args.minutes)
    audio_s = audio.size / SAMPLE_RATE
    print(f"# {model} on {device} ({compute_type}), {audio_s:.0f} s of audio per request, batch {batch}, "
          f"{workers} replica(s), concurrency {levels_c}", flush=True)

    results: list[Level] = []
    with tempfile.TemporaryDirectory(prefix="bench_stt_audio_") as tmp, GpuSampler(device == "cuda") as gpu:
        wav = Path(tmp) / "bench.wav"
        write_wav(wav, audio)
        data = wav.read_bytes()
        server = Server(args.models_dir, device, model, args.cpu_threads, batch,
                        extra_env={"S7_STT_WORKERS_PER_DEVICE": str(workers)})
        try:
            # Warm-up with one full request, as the baselines get below: the first request of a size
            # pays for growing the allocator's pools, which would be charged to the first timed level.
            server.run(data, 1)
            for c in levels_c:
                cpu0, t0 = tree_cpu_seconds(server.pid), time.perf_counter()
                wall, texts = repeated(functools.partial(server.run, data, c), args.repeat)
                t1 = time.perf_counter()
                util, mem = gpu.window(t0, t1)
                cpu = (tree_cpu_seconds(server.pid) - cpu0) / (t1 - t0) * 100
                results.append(Level("server", c, audio_s, wall, mean_words(texts), mem, util, cpu))
                print(f"  server        C={c}: {wall:.2f} s, GPU {util if util is not None else '-'} %, "
                      f"CPU {cpu:.0f} %", flush=True)
        finally:
            server.close()

        if baselines:
            time.sleep(1.0)  # let the server's GPU memory go before sampling the next path
            wm, fns = baseline_fns(model_dir, device, compute_type, args.cpu_threads, batch, workers, audio, wav,
                                   baselines)
            for fn in fns.values():  # warm-up, one full request per path (lazy initialisation, pools)
                fn()
            for name, fn in fns.items():
                for c in levels_c:
                    t0 = time.perf_counter()
                    wall, texts = repeated(functools.partial(threaded, fn, c), args.repeat)
                    util, mem = gpu.window(t0, time.perf_counter())
                    results.append(Level(name, c, audio_s, wall, mean_words(texts), mem, util))
                    print(f"  {name:<13} C={c}: {wall:.2f} s", flush=True)
            del wm

    print()
    print_table(results, f"{model} on {device}: RTFx = audio seconds per wall second (C requests of {audio_s:.0f} s at once)")
    print(summary(results))


if __name__ == "__main__":
    main()
