"""Concurrent realtime STT sessions against a live server: how far final words lag behind the audio clock.

    .venv/bin/python scripts/bench_realtime.py [--streams 1,2,4,8] [--seconds 30] [--model whisper:tiny.en]
                                               [--device auto|cpu|cuda] [--models-dir DIR] [--max-p95 1.0] [--all]
    .venv/bin/python scripts/bench_realtime.py --streams 1,16,64,200 --device cuda --all   # whisper:base on a GPU
    .venv/bin/python scripts/bench_realtime.py --url http://host:8080 --key KEY ...   # an already running server
    .venv/bin/python scripts/bench_realtime.py --processes 4 --streams 200 --device cuda --all   # 4 processes, 1 box

Without `--url` the script starts `python -m server.cli serve` (a throw-away data directory, the models in
`--models-dir`, default `$S7_MODELS_DIR`, S7_REALTIME_MAX_SESSIONS above the largest level, no per-account
cap: every session is the bench account's) and creates an account whose `sttApiKey` is `--model` (default
whisper:base with --device cuda, else whisper:tiny.en). The server's admission by measured load stays on
(`--max-lag`, S7_REALTIME_MAX_LAG_S: 0 turns it off); sessions it refuses (503 before the upgrade) are
counted in the `ref` column and fail the level. Before each level the script waits until the server holds
no session of the previous one.

All sessions of a level run on this process's one asyncio loop (no thread per client), so hundreds of them
cost the client little; the table's `loop` column is how late that loop ran its timers (p99), which would
show a client too busy to measure.

Each level N opens N WebSocket sessions at once (starts spread over N/100 s, at least one), each streaming real speech
from `../shared/testdata` (clips joined with short pauses, so endpoints happen) as 16 kHz s16le in 100 ms
frames at the pace a microphone records them, then the empty frame. For every message the client notes
the arrival time against the stream's own audio clock (the moment the sample at `end_ms` was sent):

- final lag: arrival of a final word minus the audio time its end was sent (what a caption display waits);
- partial lag: the same for the last non-final word of each message (how live the greyed text is);
- update interval: time between successive token messages while audio flows (median, `upd`);
- finish: from the empty frame to the `finished` message (median, `fin`);
- WER of the joined final words against the clips' reference texts.

The table gives p50/p90/p95/p99 of both lags over every word of every session of the level (as Riva's
streaming benchmark reports latency percentiles per stream count), the WER, the mean size of the server's
decode batches during the level (from /metrics) and the client loop's lateness. A level passes when every
session finished and the p95 final lag is below `--max-p95`; the SUMMARY line names the largest passing N.
Levels stop at the first failure unless `--all`.

`--processes K` starts K server processes on one data directory (one SQLite database) behind HAProxy: the
cluster of docs/deploy.md on one box, which spreads the streams' per-frame Python over K interpreters (each
with its own model replicas and batches). The `cpu` column then sums them. On the 2-core development machine
the client starves beside two servers, so this waits for a box with cores to spare to say what it gains.

`--free-model` is a CPU proxy for the GPU box, where hundreds of streams share one interpreter: the started
server's batch worker returns, at once, one word per half second of each window instead of calling Whisper
(in this benchmark only), so the lag and the server's CPU (`cpu`, % of one core, its whole process tree)
measure what every stream costs besides the model: WebSocket frames, VAD, features, commits, messages. Its
WER column is meaningless.

The floor on an idle machine: a word is final at the first decode that heard `margin` (0.5 s) of audio after
it, decodes come every decode interval (0.3 s on a CPU, 0.2 s on a GPU) plus the decode itself, and a pause of
0.3 s finalizes the words before it; load shows as lag growing with N beyond that floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path

import numpy as np

from engines.wer import wer

REPO = Path(__file__).resolve().parents[1]
RATE = 16000
FRAME_S = 0.1
GAP_S = 0.8  # pause between clips: a little over the endpoint silence, as between sentences
# (audio file, reference text file); librispeech_1272-128104-0000.flac is left out: its audio is utterance
# 0001, not the text beside it.
CLIPS = ["en/jfk", *(f"en/LJ001-{i:04d}" for i in range(1, 11)), "en/librispeech_2412-153948-0000"]


# ---------------------------------------------------------------- audio and scoring


def _load(path: Path) -> np.ndarray:
    import soundfile as sf
    from scipy.signal import resample_poly

    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if sr != RATE:
        g = gcd(sr, RATE)
        mono = resample_poly(mono, RATE // g, sr // g)
    return mono.astype(np.float32)


def _find(testdata: Path, stem: str) -> Path:
    for ext in (".flac", ".wav"):
        if (testdata / (stem + ext)).is_file():
            return testdata / (stem + ext)
    raise SystemExit(f"missing test audio {testdata / stem}.*")


def build_streams(testdata: Path, count: int, seconds: float) -> list[tuple[bytes, str]]:
    """`count` programmes of at least `seconds`: clips in rotated order, so streams differ; s16le + reference."""
    clips = [(_load(_find(testdata, c)), (testdata / f"{c}.txt").read_text().strip()) for c in CLIPS]
    gap = np.zeros(int(GAP_S * RATE), dtype=np.float32)
    out = []
    for i in range(count):
        parts, refs, total, k = [], [], 0.0, i
        while total < seconds:
            audio, ref = clips[k % len(clips)]
            parts += [audio, gap]
            refs.append(ref)
            total += len(audio) / RATE + GAP_S
            k += 1
        pcm = np.clip(np.concatenate(parts), -1.0, 32767 / 32768) * 32768
        out.append((pcm.astype("<i2").tobytes(), " ".join(refs)))
    return out




# ---------------------------------------------------------------- one session


@dataclass
class Result:
    final_lags: list[float] = field(default_factory=list)
    partial_lags: list[float] = field(default_factory=list)
    intervals: list[float] = field(default_factory=list)
    text: str = ""
    reference: str = ""
    finish_s: float = 0.0  # empty frame sent -> finished message
    error: str | None = None
    refused: bool = False  # the server refused the session (HTTP 503/429 before the upgrade, or error 503/429)


async def run_session(ws_url: str, pcm: bytes, reference: str, delay: float) -> Result:
    import websockets

    res = Result(reference=reference)
    frame = int(FRAME_S * RATE) * 2
    await asyncio.sleep(delay)
    config = {"audio_format": "pcm_s16le", "sample_rate": RATE, "num_channels": 1, "enable_endpoint_detection": True}
    try:
        async with websockets.connect(ws_url, max_size=None, open_timeout=60, proxy=None) as ws:
            await ws.send(json.dumps(config))
            t0 = time.monotonic()  # audio clock: sample s was sent at t0 + s / RATE
            sent_all: list[float] = []

            async def send() -> None:
                for k, i in enumerate(range(0, len(pcm), frame)):
                    await asyncio.sleep(max(0.0, t0 + k * FRAME_S - time.monotonic()))
                    await ws.send(pcm[i : i + frame])
                sent_all.append(time.monotonic())
                await ws.send(b"")

            sender = asyncio.create_task(send())
            last_update = None
            async for raw in ws:
                now = time.monotonic()
                msg = json.loads(raw)
                if "error_code" in msg:
                    res.error = f"{msg['error_code']} {msg.get('error_message')}"
                    res.refused = msg["error_code"] in (429, 503)
                    break
                if msg.get("finished"):
                    res.finish_s = now - sent_all[0] if sent_all else 0.0
                    break
                tokens = [t for t in msg.get("tokens", []) if t["text"] != "<end>"]
                for t in tokens:
                    if t["is_final"]:
                        res.final_lags.append(now - (t0 + t["end_ms"] / 1000))
                        res.text += t["text"]
                pending = [t for t in tokens if not t["is_final"]]
                if pending:
                    res.partial_lags.append(now - (t0 + pending[-1]["end_ms"] / 1000))
                if tokens and not sent_all:
                    if last_update is not None:
                        res.intervals.append(now - last_update)
                    last_update = now
            sender.cancel()
            if res.error is None and not res.finish_s:
                res.error = f"closed without finishing (code {ws.close_code})"
    except Exception as exc:  # a refused or dropped session is a result of the level, not a crash
        from websockets.exceptions import InvalidStatus

        res.error = f"{type(exc).__name__}: {exc}"
        res.refused = isinstance(exc, InvalidStatus) and exc.response.status_code in (429, 503)
    return res


async def run_level(ws_url: str, programmes: list[tuple[bytes, str]], n: int, seed: int) -> tuple[list[Result], list[float]]:
    """The level's results, and how late the loop woke up for 10 ms timers meanwhile (seconds)."""
    rng = random.Random(seed)
    spread = max(1.0, n / 100)
    lateness: list[float] = []
    monitor = asyncio.create_task(_watch_loop(lateness))
    try:
        results = await asyncio.gather(*(
            run_session(ws_url, pcm, ref, rng.uniform(0.0, spread)) for pcm, ref in programmes[:n]
        ))
    finally:
        monitor.cancel()
    return list(results), lateness


async def _watch_loop(lateness: list[float]) -> None:
    while True:
        before = time.monotonic()
        await asyncio.sleep(0.01)
        lateness.append(max(0.0, time.monotonic() - before - 0.01))


# ---------------------------------------------------------------- the server


class Server:
    """`speech7 serve` in a subprocess (its own interpreter: the client's event loop does not share a GIL
    with the decoding), or `--processes` of them behind HAProxy, or an existing server given by URL and key."""

    def __init__(self, args: argparse.Namespace) -> None:
        import httpx

        from server.launcher import ServerProcess

        self.servers: list[ServerProcess] = []
        self._stack = contextlib.ExitStack()
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.admin: str | None = None
        if args.url:
            self.url, self.key = args.url.rstrip("/"), args.key
            self._metric_urls = [self.url]
        else:
            self._start(args)
        self.health = httpx.get(f"{self.url}/healthz", timeout=10).json()
        caps = httpx.get(f"{self.url}/account/capabilities", headers={"x-api-key": self.key}, timeout=60).json()
        self.stt = caps.get("stt") or {}

    def _start(self, args: argparse.Namespace) -> None:
        """Starts `args.processes` servers (behind HAProxy when several) and the bench account."""
        import httpx

        from server.launcher import SERVE, ServerStartError, start_process

        self._tmp = tempfile.TemporaryDirectory(prefix="bench-realtime-")
        admin = "s7_bench_realtime_admin_0123456789"
        env = {"S7_DATA_DIR": self._tmp.name, "S7_ADMIN_KEY": admin, "S7_MODELS_DIR": str(args.models_dir),
               "S7_DEVICE": args.device, "S7_LOG_LEVEL": "warning", "HF_HUB_OFFLINE": "1",
               # The default ceiling (64) would refuse the larger levels' sessions, and the per-account cap
               # (8) all but a few: the bench streams every session from one account.
               "S7_REALTIME_MAX_SESSIONS": str(max(args.levels) + 8),
               "S7_REALTIME_MAX_SESSIONS_PER_ACCOUNT": "0"}
        if args.max_lag is not None:
            env["S7_REALTIME_MAX_LAG_S"] = str(args.max_lag)
        self.admin = admin
        command = (sys.executable, str(Path(__file__).resolve()), "--serve-free-model") if args.free_model else SERVE
        try:
            # One after the other: the first creates the tables and the admin account that the others share.
            for i in range(args.processes):
                self.servers.append(start_process(env, command=command, timeout_s=240,
                                                  log=Path(self._tmp.name) / f"server{i}.log"))
            if len(self.servers) > 1:
                from server.balancer import Node, running_haproxy

                nodes = [Node(f"p{i}", s.url.removeprefix("http://")) for i, s in enumerate(self.servers)]
                self.url = self._stack.enter_context(running_haproxy(nodes)).url
            else:
                self.url = self.servers[0].url
        except (ServerStartError, FileNotFoundError, RuntimeError) as exc:
            self.close()
            raise SystemExit(f"the server did not start: {exc}") from None
        self._metric_urls = [s.url for s in self.servers]
        body = {"apiKey": admin, "startingMinutes": 100_000, "companyName": "bench", "sttApiKey": args.model}
        r = httpx.post(f"{self.url}/accounts", json=body, timeout=30)
        if r.status_code != 201:
            raise SystemExit(f"could not create the bench account: {r.status_code} {r.text}")
        self.key = r.json()["apiKey"]

    def metrics(self) -> list[str]:
        """Every server process's GET /metrics lines (with the admin key when this script started them:
        /metrics may be protected); a balancer would answer for one process only."""
        import httpx

        headers = {"x-api-key": self.admin or self.key or ""}
        lines: list[str] = []
        for url in self._metric_urls:
            try:
                r = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
            except httpx.HTTPError:
                continue
            lines += r.text.splitlines() if r.status_code == 200 else []
        return lines

    def batch_counters(self) -> tuple[float, float]:
        """(batches, items) the server's models ran so far, from /metrics; zeros when it has none."""
        batches = items = 0.0
        for line in self.metrics():
            if line.startswith("s7_batch_batches{"):
                batches += float(line.rsplit(" ", 1)[1])
            elif line.startswith("s7_batch_items{"):
                items += float(line.rsplit(" ", 1)[1])
        return batches, items

    def wait_idle(self, timeout_s: float = 60.0) -> None:
        """Until no server process holds a realtime session (one frees a slot just after the client saw the
        close), so that a level is not refused for the previous level's sessions; bounded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            live = [float(x.rsplit(" ", 1)[1]) for x in self.metrics() if x.startswith("s7_realtime_sessions ")]
            if sum(live) == 0:
                return
            time.sleep(0.2)

    def cpu_seconds(self) -> float:
        """CPU time of the started server processes' trees so far (NaN for a server given by URL)."""
        if not self.servers:
            return float("nan")
        from bench_stt import tree_cpu_seconds

        return sum(tree_cpu_seconds(s.proc.pid) for s in self.servers)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + f"/stt/realtime?apiKey={self.key}"

    def close(self) -> None:
        self._stack.close()
        for server in self.servers:
            server.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


# ---------------------------------------------------------------- report


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


QUANTILES = (50, 90, 95, 99)


def table_head() -> list[str]:
    lags = " ".join(f"{'p' + str(q):>5}" for q in QUANTILES)
    first = f"{'':>14}  {'final-token lag (s)':^23}  {'partial lag (s)':^23}"
    return [first, f"{'N':>4} {'ok':>4} {'ref':>4}  {lags}  {lags}  {'upd':>5} {'fin':>5} {'WER':>6} {'batch':>6} "
                   f"{'loop':>6} {'cpu':>5}"]


def table_row(n: int, results: list[Result], batch: float, lateness: list[float], cpu: float) -> str:
    ok = [r for r in results if r.error is None]
    final = [x for r in ok for x in r.final_lags]
    partial = [x for r in ok for x in r.partial_lags]
    werr = statistics.mean(wer(r.reference, r.text) for r in ok) if ok else float("nan")
    lags = "  ".join(" ".join(f"{pct(v, q):>5.2f}" for q in QUANTILES) for v in (final, partial))
    update = pct([x for r in ok for x in r.intervals], 50)
    finish = pct([r.finish_s for r in ok], 50)
    refused = sum(r.refused for r in results)
    return (f"{n:>4} {len(ok):>4} {refused:>4}  {lags}  {update:>5.2f} {finish:>5.2f} {werr:>6.3f} {batch:>6.1f} "
            f"{pct(lateness, 99):>6.3f} {cpu:>5.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="1,2,4,8", help="concurrency levels, comma-separated")
    ap.add_argument("--seconds", type=float, default=30.0, help="audio per stream (whole clips, at least this)")
    ap.add_argument("--model", help="the bench account's sttApiKey (default whisper:base on cuda, else whisper:tiny.en)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--models-dir", type=Path, default=os.environ.get("S7_MODELS_DIR"))
    ap.add_argument("--testdata", type=Path, default=Path(os.environ.get("S7_TESTDATA", REPO.parent / "shared" / "testdata")))
    ap.add_argument("--url", help="an already running server (then --key is needed)")
    ap.add_argument("--key", help="API key for --url")
    ap.add_argument("--max-p95", type=float, default=1.0, help="pass threshold on the p95 final lag, seconds")
    ap.add_argument("--max-lag", type=float, help="the started server's S7_REALTIME_MAX_LAG_S (admission by "
                    "measured lag; 0: off; default: the server's)")
    ap.add_argument("--all", action="store_true", help="run every level even after one fails")
    ap.add_argument("--show-text", action="store_true", help="print each level's first transcript and reference")
    ap.add_argument("--processes", type=int, default=1, help="server processes to start, sharing one data "
                    "directory behind HAProxy (see above)")
    ap.add_argument("--free-model", action="store_true", help="the started server answers every decode at once "
                    "(a CPU proxy for what streams cost besides the model; see above)")
    args = ap.parse_args()
    if args.url and not args.key:
        ap.error("--url needs --key")
    if not args.url and not args.models_dir:
        ap.error("--models-dir (or S7_MODELS_DIR) is needed to start a server")
    if args.processes < 1 or (args.url and args.processes != 1):
        ap.error("--processes must be >= 1, and cannot go with --url")
    args.levels = levels = sorted({int(x) for x in args.streams.split(",") if x.strip()})
    if not levels or levels[0] < 1:
        ap.error("--streams must list positive integers")
    args.model = args.model or ("whisper:base" if args.device == "cuda" else "whisper:tiny.en")

    programmes = build_streams(args.testdata, max(levels), args.seconds)
    server = Server(args)
    try:
        device = server.health.get("device") or server.stt.get("device") or "?"
        model = server.stt.get("model") or args.model
        print(f"server {server.url}: device {device}, STT {model}, ~{args.seconds:.0f} s of speech per stream, "
              f"{FRAME_S * 1000:.0f} ms frames paced in real time")
        # Warm-up: the first session loads the model; its timing is not part of any level.
        warm, _ = asyncio.run(run_level(server.ws_url, [(programmes[0][0][: RATE * 2 * 3], "")], 1, 0))
        if warm[0].error:
            raise SystemExit(f"warm-up session failed: {warm[0].error}")
        head = table_head()
        print("\n".join(head))
        print("-" * len(head[-1]))
        best, tried = 0, []
        for n in levels:
            server.wait_idle()
            counters = server.batch_counters()
            cpu0, t0 = server.cpu_seconds(), time.perf_counter()
            results, lateness = asyncio.run(run_level(server.ws_url, programmes, n, seed=n))
            cpu = (server.cpu_seconds() - cpu0) / (time.perf_counter() - t0) * 100
            batches, items = (b - a for a, b in zip(counters, server.batch_counters(), strict=True))
            tried.append(n)
            print(table_row(n, results, items / batches if batches else float("nan"), lateness, cpu), flush=True)
            errors = sorted({r.error for r in results if r.error})
            for error in errors[:5]:  # hundreds of refused sessions say the same thing
                print(f"    session error ({sum(r.error == error for r in results)}x): {error}")
            if args.show_text and results:
                print(f"    text: {results[0].text.strip()}\n    reference: {results[0].reference}")
            final = [x for r in results if r.error is None for x in r.final_lags]
            passed = all(r.error is None for r in results) and bool(final) and pct(final, 95) < args.max_p95
            if passed:
                best = n
            elif not args.all:
                break
        verdict = f"max N = {best}" if best else "no level passed"
        print(f"SUMMARY ({device}, {model}): {verdict} with p95 final-token lag < {args.max_p95:g} s "
              f"(levels tried: {','.join(map(str, tried))})")
    finally:
        server.close()


def serve_with_free_model() -> None:
    """`python -m server.cli serve`, with the batch worker's model call replaced (this benchmark only): one
    word per half second of each window's audio, so that streams commit words and move on as with a model."""
    from engines import whisper_batch

    def free_model(self: whisper_batch.BatchRunner, items: list) -> list:
        out = []
        for it in items:
            if it.slot is not None and it.slot.language is None:
                it.slot.language, it.slot.probability = "en", 1.0
            words = tuple((" w", i * 0.5 + 0.05, i * 0.5 + 0.45, 0.9) for i in range(int(it.frames / 100 / 0.5)))
            out.append(whisper_batch.Decoded("".join(w[0] for w in words), words))
        return out

    whisper_batch.BatchRunner.run = free_model  # type: ignore[method-assign]
    from server.cli import main as serve

    sys.exit(serve(["serve"]))


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve-free-model"]:
        serve_with_free_model()
    main()
