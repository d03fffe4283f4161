#!/usr/bin/env python3
"""Accuracy and speed of the built-in diarizer on the reference clips in ../shared/testdata/diarization.

Prints one row per clip (duration, reference/estimated speaker count, DER with a 0.25 s collar, overlapped
speech scored, and its parts, real-time factor), grouped by split, then each group's mean and the overall
mean and worst clip against issue 18's targets (mean <= 20 %, no clip above 40 %). No speaker-count hint is
passed unless --oracle-count.

`ref s` is the clip's scored reference speech in speaker-seconds (after the collar): the DER's denominator.
Where it is a few seconds (trn01: 2.0, trn02: 0.19) a fraction of a second of error moves the clip's DER by tens
of points, so each group also prints the pooled DER (all errors over all scored speech, as md-eval scores a
list of files), next to the per-clip mean the issue's target is stated in.

Splits: the diarizer's constants were chosen on `sample`, `dev00`, `dev01` and `trn00`-`trn04` (TUNED_ON);
`trn05`-`trn09` are held out, and tests/test_diarization.py asserts its thresholds on those. Overlap
detection uses segmentation-3.0 when <models>/segmentation holds it (scripts/models install), as the server
does; its training data include AMI, the corpus of every trn* clip, so its share of the gain may be optimistic.

    .venv/bin/python scripts/bench_diarization.py [--clips sample trn00] [--oracle-count] [--rttm-out DIR]
    .venv/bin/python scripts/bench_diarization.py --tile-minutes 5,10   # RTF and peak memory on long audio
    .venv/bin/python scripts/bench_diarization.py --api                 # the same clips through POST /stt

--tile-minutes: the clips played back to back up to N minutes (a long meeting), diarized in a fresh child
process per length after a warm-up; prints RTF and the peak-RSS growth over the warmed-up process, so two
lengths show whether memory grows linearly. RTF = processing seconds / audio seconds.

--api: every clip through POST /stt (enableSpeakerDiarization, wordTimestamps, whisper tiny.en) on an
in-process app. The words' speaker labels are scored against the RTTM as turns, next to the engine's own DER
on the same audio; `agree` is the share of word time whose API speaker is the engine's speaker there (after
the best one-to-one renaming): what the merge of words into turns and the speaker names lose or keep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TUNED_ON = ("sample", "dev00", "dev01", "trn00", "trn01", "trn02", "trn03", "trn04")
TARGET_MEAN, TARGET_MAX = 0.20, 0.40


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("S7_TESTDATA", REPO.parent / "shared" / "testdata")) / "diarization",
    )
    ap.add_argument(
        "--models-dir", type=Path, default=Path(os.environ.get("S7_MODELS_DIR", REPO / ".cache" / "models"))
    )
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--clips", nargs="*", help="clip names (default: every .wav with an .rttm)")
    ap.add_argument("--oracle-count", action="store_true", help="pass the reference speaker count")
    ap.add_argument("--collar", type=float, default=0.25)
    ap.add_argument("--rttm-out", type=Path, help="write hypothesis RTTMs here")
    ap.add_argument("--tile-minutes", help="comma-separated lengths, e.g. 5,10: RTF and memory on long audio")
    ap.add_argument("--api", action="store_true", help="score POST /stt's word speakers next to the engine")
    ap.add_argument("--tile-child", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()

    clips = args.clips or sorted(p.stem for p in args.data.glob("*.wav") if p.with_suffix(".rttm").is_file())
    if args.tile_child is not None:
        print(json.dumps(_tile_child(args, clips, args.tile_child)))
        return 0
    if args.tile_minutes:
        return _tiles(args, [float(m) for m in args.tile_minutes.split(",")])
    if args.api:
        return asyncio.run(_api(args, clips))
    return _clips(args, clips)


# ---------------------------------------------------------------- per clip


def _load(data: Path, name: str) -> tuple[Any, list[tuple[float, float, str]]]:
    from engines.audio import decode_file
    from engines.diarization.der import read_rttm

    ref = [t for turns in read_rttm(data / f"{name}.rttm").values() for t in turns]
    return decode_file(data / f"{name}.wav"), ref


def _diarizer(args: argparse.Namespace) -> Any:
    from engines.diarization.builtin import BuiltinDiarizer

    return BuiltinDiarizer.from_models_dir(args.models_dir, device=args.device)


def _clips(args: argparse.Namespace, clips: list[str]) -> int:
    from engines.diarization.der import diarization_error_rate
    from engines.types import SAMPLE_RATE, DiarizationRequest

    diarizer = _diarizer(args)
    overlap = "segmentation-3.0" if diarizer.overlap is not None else "off (no segmentation weights)"
    print(
        f"device {diarizer.device}, torch threads {_threads()}, collar {args.collar} s, overlap scored, "
        f"overlap detection {overlap}"
    )
    header = f"{'clip':<8} {'dur s':>6} {'spk ref':>7} {'spk est':>7} {'ref s':>6} {'DER %':>6} {'miss':>5} {'fa':>5} {'conf':>5} {'RTF':>6}"
    rows: dict[
        str, tuple[float, float, float, float]
    ] = {}  # name -> (DER, audio s, processing s, scored ref s)
    warmed = False
    for group, names in _groups(clips):
        print(f"-- {group}")
        print(header)
        for name in names:
            audio, ref = _load(args.data, name)
            n_ref = len({t[2] for t in ref})
            req = DiarizationRequest(audio, num_speakers=n_ref if args.oracle_count else None)
            if not warmed:
                diarizer.diarize(req)
                warmed = True
            t0 = time.perf_counter()
            res = diarizer.diarize(req)
            elapsed = time.perf_counter() - t0
            duration = len(audio) / SAMPLE_RATE
            hyp = [(t.start, t.end, f"spk{t.speaker}") for t in res.turns]
            der = diarization_error_rate(ref, hyp, collar=args.collar, region=(0.0, duration))
            if args.rttm_out:
                args.rttm_out.mkdir(parents=True, exist_ok=True)
                lines = [
                    f"SPEAKER {name} 1 {s:.3f} {e - s:.3f} <NA> <NA> {lab} <NA> <NA>" for s, e, lab in hyp
                ]
                (args.rttm_out / f"{name}.rttm").write_text("\n".join(lines) + "\n")
            print(
                f"{name:<8} {duration:6.1f} {n_ref:7d} {res.num_speakers:7d} {der.total:6.2f} {100 * der.der:6.1f} "
                f"{100 * der.missed:5.1f} {100 * der.false_alarm:5.1f} {100 * der.confusion:5.1f} {elapsed / duration:6.3f}"
            )
            rows[name] = (der.der, duration, elapsed, der.total)
        _summary(group, {n: rows[n] for n in names})
    if len(rows) > 1:
        _summary("all clips", rows)
        ders = [r[0] for r in rows.values()]
        mean, worst = sum(ders) / len(ders), max(ders)
        print(
            f"issue 18 targets: mean {100 * mean:.1f}% {'<=' if mean <= TARGET_MEAN else '>'} {100 * TARGET_MEAN:.0f}%, "
            f"worst {100 * worst:.1f}% {'<=' if worst <= TARGET_MAX else '>'} {100 * TARGET_MAX:.0f}%"
        )
    return 0


def _groups(clips: list[str]) -> list[tuple[str, list[str]]]:
    tuned = [c for c in clips if c in TUNED_ON]
    held = [c for c in clips if c not in TUNED_ON]
    out = []
    if tuned:
        out.append(("tuned on (constants chosen on these)", tuned))
    if held:
        out.append(("held out", held))
    return out


def _summary(group: str, rows: dict[str, tuple[float, float, float, float]]) -> None:
    ders = [r[0] for r in rows.values()]
    audio = sum(r[1] for r in rows.values())
    spent = sum(r[2] for r in rows.values())
    scored = sum(r[3] for r in rows.values())
    pooled = sum(r[0] * r[3] for r in rows.values()) / scored if scored else float("nan")
    print(
        f"   {group}: mean DER {100 * sum(ders) / len(ders):.1f}% over {len(ders)} clips, "
        f"pooled {100 * pooled:.1f}% of {scored:.0f} speaker-s, worst {100 * max(ders):.1f}%, "
        f"RTF {spent / audio:.3f} ({audio:.0f} s audio in {spent:.1f} s)"
    )


# ---------------------------------------------------------------- long audio


def _tiles(args: argparse.Namespace, minutes: list[float]) -> int:
    print(f"clips tiled to each length, fresh process each; torch threads {_threads()}")
    print(
        f"{'minutes':>7} {'RTF':>6} {'seconds':>8} {'speakers':>8} {'peak RSS growth MB':>18} {'MB per audio min':>16}"
    )
    for m in minutes:
        cmd = [sys.executable, __file__, "--tile-child", str(m), "--data", str(args.data)]
        cmd += ["--models-dir", str(args.models_dir), "--device", args.device]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(
            f"{m:7g} {r['rtf']:6.3f} {r['seconds']:8.1f} {r['speakers']:8d} {r['rss_growth_mb']:18.0f} "
            f"{r['rss_growth_mb'] / m:16.1f}"
        )
    return 0


def _tile_child(args: argparse.Namespace, clips: list[str], minutes: float) -> dict[str, Any]:
    import numpy as np

    from engines.types import SAMPLE_RATE, DiarizationRequest

    pieces = [_load(args.data, c)[0] for c in clips]
    target = int(minutes * 60 * SAMPLE_RATE)
    reps = -(-target // sum(len(p) for p in pieces))
    audio = np.concatenate(pieces * reps)[:target]
    diarizer = _diarizer(args)
    diarizer.diarize(DiarizationRequest(audio[: 60 * SAMPLE_RATE]))  # warm-up: models and fixed buffers
    base = _rss_mb()
    t0 = time.perf_counter()
    res = diarizer.diarize(DiarizationRequest(audio))
    elapsed = time.perf_counter() - t0
    return {
        "rtf": elapsed / (len(audio) / SAMPLE_RATE),
        "seconds": elapsed,
        "speakers": res.num_speakers,
        "rss_growth_mb": _rss_mb() - base,
    }


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


# ---------------------------------------------------------------- through the API


async def _api(args: argparse.Namespace, clips: list[str]) -> int:
    import httpx

    from engines.diarization.der import diarization_error_rate
    from engines.types import SAMPLE_RATE, DiarizationRequest
    from server.app import create_app
    from server.settings import Settings

    admin = "bench-admin-key-0123456789"
    diarizer = _diarizer(args)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), admin_key=admin, models_dir=args.models_dir)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as c:
                r = await c.post(
                    "/accounts", json={"apiKey": admin, "startingMinutes": 60, "sttApiKey": "whisper:tiny.en"}
                )
                r.raise_for_status()
                key = r.json()["apiKey"]
                print(
                    f"{'clip':<8} {'DER engine %':>12} {'DER api words %':>15} {'agree %':>8} {'spk engine':>10} {'spk api':>7}"
                )
                for name in clips:
                    audio, ref = _load(args.data, name)
                    duration = len(audio) / SAMPLE_RATE
                    res = diarizer.diarize(DiarizationRequest(audio))
                    engine = [(t.start, t.end, f"e{t.speaker}") for t in res.turns]
                    with open(args.data / f"{name}.wav", "rb") as fh:
                        r = await c.post(
                            "/stt",
                            headers={"x-api-key": key},
                            data={"enableSpeakerDiarization": "true", "wordTimestamps": "true"},
                            files={"audio": (f"{name}.wav", fh, "audio/wav")},
                        )
                    r.raise_for_status()
                    words = [
                        (w["startMs"] / 1000, w["endMs"] / 1000, str(w["speaker"]))
                        for e in r.json()["transcript"]
                        for w in e.get("words", [])
                        if w["speaker"] is not None and w["endMs"] > w["startMs"]
                    ]
                    d_engine = diarization_error_rate(ref, engine, collar=args.collar, region=(0.0, duration))
                    d_api = diarization_error_rate(ref, words, collar=args.collar, region=(0.0, duration))
                    # Engine turns scored against the API's words as if they were the reference, no collar:
                    # confusion there is word time the API labelled differently from the engine.
                    agree = diarization_error_rate(words, engine, collar=0.0, region=(0.0, duration))
                    share = 1.0 - agree.confusion if agree.total else float("nan")
                    print(
                        f"{name:<8} {100 * d_engine.der:12.1f} {100 * d_api.der:15.1f} {100 * share:8.1f} "
                        f"{res.num_speakers:10d} {len({w[2] for w in words}):7d}"
                    )
    return 0


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


if __name__ == "__main__":
    raise SystemExit(main())
