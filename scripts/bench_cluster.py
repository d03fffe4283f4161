"""Scale-out throughput: aggregate POST /stt RTFx through HAProxy with 1 and then 2 backend processes, each
pinned to its own core, on this machine; prints the ratio (target >= 1.7x) and a SUMMARY line.

    .venv/bin/python scripts/bench_cluster.py [--model whisper:tiny.en] [--seconds 20] [--requests 8]
                                              [--concurrency 4] [--repeat 1] [--database-url URL]

Each backend is `speech7 serve` under `taskset -c <core>` with one inference thread, one front-end worker
and OMP_NUM_THREADS=1, so a backend is one core's worth of server (its front-end worker inherits the
affinity). Both levels get the same offered load: `--requests` requests of `--seconds` of real speech (the
clips under ../shared/testdata/en), `--concurrency` at a time, sent through the balancer (server/balancer.py:
the cluster configuration, leastconn, health checks on /healthz). RTFx = requests x audio seconds / wall
seconds. The nodes share one database (`--database-url`, default a SQLite file all of them open: /stt
touches it twice per request, to reserve and to settle; a production cluster uses PostgreSQL).

The client and HAProxy are not pinned: on a 2-core machine they take a little from the backends' cores, so
the ratio is a lower bound. The load average before and after is printed: on a shared machine the figure is
noisy, re-measure on a quiet one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_stt import bench_audio, tree_cpu_seconds, write_wav  # noqa: E402

from server.balancer import PIN_HEADER, Node, running_haproxy  # noqa: E402
from server.launcher import SERVE, ServerProcess, start_process  # noqa: E402

ADMIN_KEY = "s7_bench_admin_key_0123456789"
ONE_CORE = {"S7_CPU_THREADS": "1", "S7_FRONTEND_WORKERS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}
TARGET = 1.7


@dataclass
class Level:
    backends: int
    requests: int
    audio_s: float  # per request
    wall_s: float
    served: Counter[str]  # requests per backend
    cpu_pct: list[float]  # each backend's process tree, % of one core
    cpu_s: float  # all backends' CPU seconds over the level's runs
    runs: int

    @property
    def rtfx(self) -> float:
        return self.requests * self.audio_s / self.wall_s

    @property
    def audio_per_cpu_s(self) -> float:
        """Audio seconds per backend CPU second: what a node does with the core it gets. Equal at both levels
        means a second node costs nothing extra, whatever else the machine was running."""
        return self.runs * self.requests * self.audio_s / self.cpu_s if self.cpu_s else 0.0


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextlib.contextmanager
def cluster(backends: int, root: Path, args: argparse.Namespace, db_url: str) -> Iterator[tuple[str, list[ServerProcess]]]:
    """`backends` nodes on cores 0..n-1 behind HAProxy; yields (balancer URL, nodes)."""
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        nodes = []
        for core in range(backends):
            env = {
                **ONE_CORE, "S7_DATA_DIR": str(root / f"node{core}"), "S7_DATABASE_URL": db_url,
                "S7_MODELS_DIR": str(args.models_dir), "S7_ADMIN_KEY": ADMIN_KEY, "S7_DEVICE": "cpu",
                "S7_DEFAULT_STT": args.model, "S7_JOB_WORKERS": "0", "S7_LOG_LEVEL": "warning",
                "S7_MAX_UPLOADS_PER_ACCOUNT": "0",
            }
            node = start_process(env, command=("taskset", "-c", str(core), *SERVE), log=root / f"node{core}.log",
                                 timeout_s=300)
            stack.callback(node.stop)
            nodes.append(node)
        lb = stack.enter_context(running_haproxy(
            [Node(f"n{i + 1}", n.url.removeprefix("http://")) for i, n in enumerate(nodes)], pin_header=True))
        yield lb.url, nodes


def post(url: str, key: str, wav: bytes, headers: dict[str, str] | None = None) -> str:
    """One /stt request; returns the node that served it (and fails loudly on an error or empty text)."""
    import httpx

    r = httpx.post(f"{url}/stt", headers={"x-api-key": key, **(headers or {})},
                   files={"audio": ("bench.wav", wav, "audio/wav")}, timeout=600)
    if r.status_code != 200 or not r.json()["text"].strip():
        sys.exit(f"/stt failed: {r.status_code} {r.text[:300]}")
    return str(r.headers["x-served-by"])


def run_level(backends: int, root: Path, args: argparse.Namespace, db_url: str, wav: bytes, audio_s: float) -> Level:
    import httpx

    with cluster(backends, root / f"level{backends}", args, db_url) as (url, nodes):
        r = httpx.post(f"{url}/accounts", json={"apiKey": ADMIN_KEY, "startingMinutes": 1e8, "sttApiKey": args.model},
                       timeout=30)
        r.raise_for_status()
        key = r.json()["apiKey"]
        for i in range(backends):  # one request per node first: front-end workers forked, caches warm
            post(url, key, wav, {PIN_HEADER: f"n{i + 1}"})
        walls, served = [], Counter[str]()
        cpu0 = [tree_cpu_seconds(n.proc.pid) for n in nodes]
        began = time.perf_counter()
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                served.update(pool.map(lambda _: post(url, key, wav), range(args.requests)))
            walls.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - began
        used = [tree_cpu_seconds(n.proc.pid) - c0 for n, c0 in zip(nodes, cpu0, strict=True)]
    return Level(backends, args.requests, audio_s, statistics.median(walls), served,
                 [u / elapsed * 100 for u in used], sum(used), args.repeat)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="whisper:tiny.en")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per request")
    parser.add_argument("--requests", type=int, default=8, help="requests per level (and per repeat)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight, at both levels")
    parser.add_argument("--repeat", type=int, default=1, help="runs per level; the median wall time counts")
    parser.add_argument("--database-url", default="", help="shared database (default: a SQLite file)")
    parser.add_argument("--models-dir", type=Path, default=Path(os.environ.get("S7_MODELS_DIR", REPO / ".cache/models")))
    parser.add_argument("--testdata", type=Path, default=Path(os.environ.get("S7_TESTDATA", REPO.parent / "shared/testdata")))
    args = parser.parse_args()
    if shutil.which("taskset") is None:
        sys.exit("taskset not found (util-linux)")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs at least 2 cores (one per backend)")

    with tempfile.TemporaryDirectory(prefix="bench_cluster_") as tmp:
        root = Path(tmp)
        wav_path = root / "bench.wav"
        write_wav(wav_path, bench_audio(args.testdata, args.seconds / 60))
        wav = wav_path.read_bytes()
        db_url = args.database_url or f"sqlite+aiosqlite:///{root / 'cluster.db'}"
        before = load_average()
        print(f"load average before: {before} ({os.cpu_count()} CPUs; other work on this machine skews the figures)")
        levels = [run_level(n, root, args, db_url, wav, args.seconds) for n in (1, 2)]
        after = load_average()

    print(f"\nmodel {args.model}, {args.requests} x {args.seconds:g} s of speech, {args.concurrency} in flight, "
          f"each backend on one core")
    print(f"{'backends':>8} {'wall s':>8} {'RTFx':>7} {'audio s/CPU s':>14}  served by            "
          "backend CPU (% of a core)")
    for lv in levels:
        served = " ".join(f"{k}:{v}" for k, v in sorted(lv.served.items()))
        cpu = ", ".join(f"{c:.0f}" for c in lv.cpu_pct)
        print(f"{lv.backends:>8} {lv.wall_s:>8.2f} {lv.rtfx:>7.1f} {lv.audio_per_cpu_s:>14.1f}  {served:<20} {cpu}")
    if min(c for lv in levels for c in lv.cpu_pct) < 80:
        print("note: a backend got less than 80% of its core: other processes competed for the CPUs, so the RTFx "
              "ratio says more about this machine's load than about the cluster")
    ratio = levels[1].rtfx / levels[0].rtfx
    verdict = "meets" if ratio >= TARGET else "below"
    print(f"\n2 backends / 1 backend: {ratio:.2f}x ({verdict} the target of {TARGET:g}x)")
    print(f"load average after: {after}")
    print(f"SUMMARY bench_cluster model={args.model} rtfx_1={levels[0].rtfx:.1f} rtfx_2={levels[1].rtfx:.1f} "
          f"ratio={ratio:.2f} target={TARGET:g} audio_per_cpu_s_1={levels[0].audio_per_cpu_s:.1f} "
          f"audio_per_cpu_s_2={levels[1].audio_per_cpu_s:.1f} load_before={before.split()[0]} load_after={after.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
