"""Where the TTS duration estimate's constants come from (engines/tts_estimate.py), and how good it is.

    .venv/bin/python scripts/calibrate_tts.py [--voice PATH.onnx] [--testdata DIR] [--speeds 1.0,0.5,2.0]

Synthesizes a corpus (prose, digits, dates, money, URLs, abbreviations, lists, single letters, plus the
reference transcripts under the test data when present) with the voice at each speed, fits seconds per
phoneme, per pause mark and per synthesis unit (times length_scale) and frames of rounding per phoneme by least
squares over the units, and prints, per text and speed, the real duration against three estimates fed the
same text:

* `chars`: the strongest character-based estimate, seconds = characters / (the corpus's characters per second
  at speed 1) / speed;
* `old`: what the server reserved before (characters / 10 + 2 seconds, an intended upper bound);
* `phon`: the phoneme estimate with the constants in engines/tts_estimate.py (pace 1.0, no learning).

The summary line gives each estimate's range of real/estimate over the corpus: LOW and HIGH in
engines/tts_estimate.py must bracket `phon`'s range.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.piper_tts import PiperEngine, default_voice_paths, split_sentences  # noqa: E402
from engines.tts_estimate import HIGH, HOP_SAMPLES, LOW, PhonemeCounts, count_unit, total  # noqa: E402
from engines.types import TtsRequest  # noqa: E402

CORPUS = [
    "Hello world from the API.",
    "Hello from Speech7",
    "The weather is sunny today. We will walk to the park after lunch. Please bring some water.",
    " ".join(["The committee met on Tuesday to review the budget for the coming year."] * 3),
    "123456 " * 40,  # 240 digits that expand to about seventy seconds of words
    "1234567890 " * 4,
    "Call 555-0199 or visit 42 Main St. by 5 p.m. on Jan. 3rd, 2025.",
    "A, B, C, D, E, F, G.",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism.",
    "Yes. No. Maybe. Okay. Sure. Fine. Right.",
    "$1,234.56 was paid on 12/31/2024 at 11:59 PM; the invoice #A-7781 remains open.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.",
    "https://example.com/path/to/page?query=1",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen",
    "Item one\nItem two\nItem three\nItem four",
    "Dr. Smith, Mrs. Jones and Prof. Brown met at 10:30 a.m. (sharp!) to discuss the Q3 results.",
]


def reference_texts(testdata: Path) -> list[str]:
    found = sorted(testdata.glob("en/*.txt")) + sorted(testdata.glob("video/*.txt"))
    return [p.read_text("utf-8").strip() for p in found if p.read_text("utf-8").strip()]


def measure(engine: PiperEngine, text: str, speed: float) -> tuple[list[PhonemeCounts], list[float]]:
    """Per synthesis unit: phoneme counts and real seconds."""
    voice = engine._voice  # the phonemizer Piper itself uses
    counts = [count_unit(voice.phonemize(unit)) for unit in split_sentences(text)]
    seconds = [len(c.pcm) / c.sample_rate for c in engine.synthesize(TtsRequest(text, speed))]
    return counts, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voice", type=Path, help="a Piper .onnx (its .onnx.json beside it); default: the bundled voice")
    ap.add_argument("--testdata", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "testdata")
    ap.add_argument("--speeds", default="1.0,0.5,2.0", help="comma-separated speeds (0.5-2.0), all used in the fit")
    args = ap.parse_args()
    onnx, cfg = (args.voice, args.voice.with_name(args.voice.name + ".json")) if args.voice else default_voice_paths()
    engine = PiperEngine(onnx, cfg, voice_name=onnx.stem)
    texts = CORPUS + (reference_texts(args.testdata) if args.testdata.is_dir() else [])
    speeds = [float(s) for s in args.speeds.split(",")]
    frame_s = HOP_SAMPLES / engine.sample_rate

    runs = [(speed, text, *measure(engine, text, speed)) for speed in speeds for text in texts]
    rows, y = [], []
    for speed, _, counts, seconds in runs:
        ls = engine._voice_length_scale / speed
        rows += [[c.phonemes * ls, c.pauses * ls, c.units * ls, (c.phonemes + c.pauses) * frame_s] for c in counts]
        y += seconds
    coef, *_ = np.linalg.lstsq(np.array(rows, float), np.array(y), rcond=None)
    at_1 = [(t, sum(s)) for sp, t, _, s in runs if sp == 1.0]
    cps = sum(len(t) for t, _ in at_1) / sum(s for _, s in at_1) if at_1 else 15.0
    print(f"voice {onnx.stem}: {len(texts)} texts x {len(speeds)} speeds, {len(y)} units, {sum(y):.0f} s of audio")
    print(f"fit: {coef[0]:.4f} s/phoneme  {coef[1]:.4f} s/pause  {coef[2]:.3f} s/unit  {coef[3]:.3f} frames/phoneme "
          f"of rounding   ({cps:.1f} chars/s at speed 1)\n")

    ratios: dict[str, dict[float, list[float]]] = {"chars": {}, "old": {}, "phon": {}}
    print(f"{'speed':>5} {'chars':>6} {'real s':>7} {'chars':>6} {'old':>6} {'phon':>6}  text")
    for speed, text, counts, seconds in runs:
        real = sum(seconds)
        est = {
            "chars": len(text) / cps / speed,
            "old": (len(text) / 10.0 + 2.0) / speed,
            "phon": total(counts).seconds(engine._voice_length_scale / speed, engine.sample_rate),
        }
        for k, v in est.items():
            ratios[k].setdefault(speed, []).append(real / v)
        line = " ".join(f"{real / v:6.2f}" for v in est.values())
        print(f"{speed:5.2f} {len(text):6d} {real:7.1f} {line}  {text[:60]!r}")
    print("\nreal/estimate, min-max by speed:")
    for k, by_speed in ratios.items():
        print(f"  {k:5s} " + "  ".join(f"{sp}: {min(v):.2f}-{max(v):.2f}" for sp, v in by_speed.items()))
    phon = [r for v in ratios["phon"].values() for r in v]
    ok = LOW <= min(phon) and max(phon) <= HIGH
    print(f"summary: phon real/est {min(phon):.2f}-{max(phon):.2f}, chars "
          f"{min(min(v) for v in ratios['chars'].values()):.2f}-{max(max(v) for v in ratios['chars'].values()):.2f}, "
          f"old {min(min(v) for v in ratios['old'].values()):.2f}-{max(max(v) for v in ratios['old'].values()):.2f}; "
          f"LOW {LOW} HIGH {HIGH} {'bracket' if ok else 'DO NOT bracket'} phon")


if __name__ == "__main__":
    main()
