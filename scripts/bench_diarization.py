#!/usr/bin/env python3
"""Accuracy and speed of the built-in diarizer on the reference clips in ../shared/testdata/diarization.

Prints one row per clip (duration, reference/hypothesis speaker counts, DER with a 0.25 s collar and its
parts, real-time factor) and a summary line. RTF = processing seconds / audio seconds, measured after a
warm-up run so model loading is not counted.

    .venv/bin/python scripts/bench_diarization.py [--device cpu|cuda] [--clips sample dev00] [--rttm-out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    from engines.audio import decode_file
    from engines.diarization.builtin import BuiltinDiarizer
    from engines.diarization.der import diarization_error_rate, read_rttm
    from engines.types import SAMPLE_RATE, DiarizationRequest

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("S7_TESTDATA", REPO.parent / "shared" / "testdata")) / "diarization",
    )
    ap.add_argument(
        "--weights",
        type=Path,
        default=Path(os.environ.get("S7_MODELS_DIR", REPO / ".cache" / "models")) / "ge2e" / "pretrained.pt",
    )
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--clips", nargs="*", help="clip names (default: every .wav with an .rttm)")
    ap.add_argument(
        "--oracle-count", action="store_true", help="pass the reference speaker count as numSpeakers"
    )
    ap.add_argument("--collar", type=float, default=0.25)
    ap.add_argument("--rttm-out", type=Path, help="write hypothesis RTTMs here")
    args = ap.parse_args()

    clips = args.clips or sorted(p.stem for p in args.data.glob("*.wav") if p.with_suffix(".rttm").is_file())
    diarizer = BuiltinDiarizer(args.weights, device=args.device)
    print(f"device {diarizer.device}, torch threads {_threads()}")
    print(
        f"{'clip':<10} {'dur s':>6} {'spk ref':>7} {'spk hyp':>7} {'DER %':>6} {'miss':>5} {'fa':>5} {'conf':>5} {'RTF':>6}"
    )
    total_err = total_ref = total_audio = total_time = 0.0
    warmed = False
    for name in clips:
        audio = decode_file(args.data / f"{name}.wav")
        ref = [t for turns in read_rttm(args.data / f"{name}.rttm").values() for t in turns]
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
            lines = [f"SPEAKER {name} 1 {s:.3f} {e - s:.3f} <NA> <NA> {lab} <NA> <NA>" for s, e, lab in hyp]
            (args.rttm_out / f"{name}.rttm").write_text("\n".join(lines) + "\n")
        print(
            f"{name:<10} {duration:6.1f} {n_ref:7d} {res.num_speakers:7d} {100 * der.der:6.1f} "
            f"{100 * der.missed:5.1f} {100 * der.false_alarm:5.1f} {100 * der.confusion:5.1f} {elapsed / duration:6.3f}"
        )
        total_err += der.der * der.total
        total_ref += der.total
        total_audio += duration
        total_time += elapsed
    if total_ref:
        print(
            f"overall: DER {100 * total_err / total_ref:.1f}% over {len(clips)} clips, "
            f"RTF {total_time / total_audio:.3f} on {diarizer.device} ({total_audio:.0f} s audio in {total_time:.1f} s)"
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
