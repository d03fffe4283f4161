"""Fair sharing (issue 15.3): how long a short /stt waits while a long /stt runs, against the same short request
on the idle server, measured in the same run.

    .venv/bin/python scripts/bench_fairness.py [--model whisper:tiny.en] [--long-minutes 30] [--short-seconds 5]
                                               [--probes 5] [--env S7_X=Y ...] [--alone]

The real server (`python -m server.cli serve` in a subprocess, a throw-away data directory) gets, in order:

1. idle:   the short request (`--short-seconds` of real speech, WAV) `--probes` times, one after the other;
2. alone:  with `--alone`, the long request (`--long-minutes` of real speech) on its own, timed;
3. loaded: the long request again and, once it has run `--lead` seconds, the short request `--probes` times,
           one after the other with `--gap` seconds between them, while the long one is still running.

It prints each latency, then

    SUMMARY idle=I loaded=L ratio=R long=T [long_alone=A]

with I and L the median latencies (s), R = L / I (the issue's target: R <= 2) and T (A) the long request's wall
time with (without) the probes. `--env` passes settings to the server (e.g. `--env S7_MAX_BATCH_SIZE=2`), so
scheduling choices are compared on the same machine, back to back.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_stt import Server, bench_audio, write_wav  # noqa: E402

from engines.types import SAMPLE_RATE  # noqa: E402


def timed(server: Server, data: bytes) -> float:
    t0 = time.perf_counter()
    server.run(data, 1)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="whisper:tiny.en")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--long-minutes", type=float, default=30.0)
    ap.add_argument("--short-seconds", type=float, default=5.0)
    ap.add_argument("--probes", type=int, default=5, help="short requests in each phase")
    ap.add_argument("--lead", type=float, default=5.0, help="seconds the long request runs before the first probe")
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between probes under load")
    ap.add_argument("--alone", action="store_true", help="also time the long request on its own")
    ap.add_argument("--env", action="append", default=[], metavar="S7_X=Y", help="a server setting (repeatable)")
    ap.add_argument("--models-dir", type=Path, default=Path(os.environ.get("S7_MODELS_DIR", REPO / ".cache" / "models")))
    ap.add_argument("--testdata", type=Path, default=Path(os.environ.get("S7_TESTDATA", REPO.parent / "shared" / "testdata")))
    args = ap.parse_args()

    extra = dict(kv.split("=", 1) for kv in args.env)
    long_audio = bench_audio(args.testdata, args.long_minutes)
    short_audio = bench_audio(args.testdata, args.short_seconds / 60)
    print(f"# {args.model} on {args.device}: long {long_audio.size / SAMPLE_RATE:.0f} s, short "
          f"{short_audio.size / SAMPLE_RATE:.1f} s, settings {extra or 'default'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_fair_") as tmp:
        write_wav(Path(tmp) / "long.wav", long_audio)
        write_wav(Path(tmp) / "short.wav", short_audio)
        long_data, short_data = (Path(tmp) / "long.wav").read_bytes(), (Path(tmp) / "short.wav").read_bytes()
        server = Server(args.models_dir, args.device, args.model, int(extra.get("S7_CPU_THREADS", 0)),
                        int(extra.get("S7_MAX_BATCH_SIZE", 0)), extra_env=extra)
        try:
            timed(server, short_data)  # warm-up
            idle = [timed(server, short_data) for _ in range(args.probes)]
            print("  idle:   " + " ".join(f"{x:.2f}" for x in idle), flush=True)
            alone = timed(server, long_data) if args.alone else None
            if alone is not None:
                print(f"  long alone: {alone:.1f} s", flush=True)

            long_wall: list[float] = []
            runner = threading.Thread(target=lambda: long_wall.append(timed(server, long_data)))
            runner.start()
            time.sleep(args.lead)
            loaded = []
            for _ in range(args.probes):
                latency = timed(server, short_data)
                if not runner.is_alive():  # the long request ended during this probe: it was not all loaded
                    break
                loaded.append(latency)
                time.sleep(args.gap)
            runner.join()
            print("  loaded: " + " ".join(f"{x:.2f}" for x in loaded), flush=True)
            if len(loaded) < args.probes:
                sys.exit("the long request ended before the probes did: use a longer --long-minutes")
        finally:
            server.close()
    i, lo = statistics.median(idle), statistics.median(loaded)
    line = f"SUMMARY idle={i:.2f} loaded={lo:.2f} ratio={lo / i:.2f} long={long_wall[0]:.1f}"
    print(line + (f" long_alone={alone:.1f}" if alone is not None else ""))


if __name__ == "__main__":
    main()
