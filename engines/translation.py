"""Text translation with CTranslate2 models (OPUS-MT / Argos conversions) and SentencePiece.

Layout: one directory per direction under a root (the catalog's `models/translation/`), each holding a CT2
`model.bin` (+ config/vocabulary files), SentencePiece model(s) (`sentencepiece.model`, or `source.spm` +
`target.spm` as OPUS-MT conversions ship them) and a file naming the pair: `s7-translation.json`
`{"source": "zh", "target": "en"}`, or Argos' `metadata.json` (`from_code`, `to_code`).
`import_argos_model` turns an `.argosmodel` package into such a directory.

Models load lazily on first use, one lock per model, and CT2 translators are safe to share between threads.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.translation_terms import enforce_translation_terms
from engines.types import EngineError, ModelMissingError, TranslationRequest, TranslationResult

META_FILE = "s7-translation.json"
# Sentence ends: Latin punctuation followed by a space (so "3.5" stays whole), CJK punctuation, newlines.
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+|(?<=[\u3002\uff01\uff1f])\s*|\n+")
_NO_SPACE_TARGETS = {"zh", "ja", "th", "lo", "my", "km"}  # languages written without spaces between sentences
_MAX_TOKENS = 400  # OPUS-MT was trained on sentences; longer inputs are split before translating


@dataclass
class _Model:
    name: str
    path: Path
    source: str
    target: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    loaded: tuple[Any, Any, Any] | None = None  # (ctranslate2.Translator, source spm, target spm)
    renderings: OrderedDict[str, list[str]] = field(
        default_factory=OrderedDict
    )  # term -> its default translation


def _norm_lang(code: str) -> str:
    return code.strip().lower().replace("_", "-").split("-")[0]


def read_pair(model_dir: Path) -> tuple[str, str] | None:
    """The (source, target) a model directory declares, or None when it names none."""
    for name, keys in ((META_FILE, ("source", "target")), ("metadata.json", ("from_code", "to_code"))):
        f = model_dir / name
        if f.is_file():
            try:
                meta = json.loads(f.read_text(encoding="utf-8"))
                src, tgt = str(meta[keys[0]]), str(meta[keys[1]])
            except (ValueError, KeyError, TypeError):
                continue
            if src.strip() and tgt.strip():
                return _norm_lang(src), _norm_lang(tgt)
    return None


def _spm_paths(model_dir: Path) -> tuple[Path, Path] | None:
    shared = model_dir / "sentencepiece.model"
    src, tgt = model_dir / "source.spm", model_dir / "target.spm"
    if src.is_file():
        return src, tgt if tgt.is_file() else src
    if shared.is_file():
        return shared, shared
    return None


def _ct2_dir(model_dir: Path) -> Path | None:
    # Imported models keep model.bin at the top; an unpacked Argos package has it under model/.
    for d in (model_dir, model_dir / "model"):
        if (d / "model.bin").is_file():
            return d
    return None


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_RE.split(text) if s and s.strip()]


def _detokenize(pieces: Sequence[str]) -> str:
    # Joining pieces by hand rather than spm.decode: a source-side SentencePiece model (Argos ships one
    # shared file) does not know many target pieces and would copy their "▁" markers into the text.
    return "".join(pieces).replace("\u2581", " ").strip()


class Ct2Translator:
    """Every CT2 model directory under `root`, served as one `engines.types.Translator`."""

    engine = "ct2"

    def __init__(
        self,
        root: Path,
        *,
        device: str = "cpu",
        compute_type: str = "auto",
        beam_size: int = 2,
        intra_threads: int = 0,
        max_decoding_length: int = 256,
    ) -> None:
        self.root = Path(root)
        self.device = device
        self.compute_type = compute_type
        self.beam_size = min(4, max(2, beam_size))
        self.intra_threads = intra_threads
        self.max_decoding_length = max_decoding_length
        self._models: dict[tuple[str, str], _Model] = {}
        if self.root.is_dir():
            for d in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
                pair = read_pair(d)
                if pair and _ct2_dir(d) and _spm_paths(d) and pair not in self._models:
                    self._models[pair] = _Model(d.name, d, *pair)
        self.model = "+".join(m.name for m in self._models.values()) or "none"

    def pairs(self) -> Sequence[tuple[str, str]]:
        return list(self._models)

    def _get(self, source: str, target: str) -> _Model:
        pair = (_norm_lang(source), _norm_lang(target))
        m = self._models.get(pair)
        if m is None:
            have = ", ".join(f"{s}->{t}" for s, t in self._models) or "none"
            raise ModelMissingError(
                f"no translation model for {pair[0]}->{pair[1]} (installed: {have}); copy a CTranslate2 "
                f"conversion into {self.root}/ or import an Argos package"
            )
        return m

    def _load(self, m: _Model) -> tuple[Any, Any, Any]:
        with m.lock:
            if m.loaded is None:
                import ctranslate2
                import sentencepiece

                ct2_dir, spms = _ct2_dir(m.path), _spm_paths(m.path)
                if ct2_dir is None or spms is None:
                    raise EngineError(
                        f"translation model {m.name} is incomplete (model.bin or SentencePiece missing)"
                    )
                try:
                    tr = ctranslate2.Translator(
                        str(ct2_dir),
                        device=self.device,
                        compute_type=self.compute_type,
                        intra_threads=self.intra_threads,
                    )
                    sp_src = sentencepiece.SentencePieceProcessor(model_file=str(spms[0]))
                    sp_tgt = sentencepiece.SentencePieceProcessor(model_file=str(spms[1]))
                except (RuntimeError, ValueError, OSError) as exc:
                    raise EngineError(f"cannot load translation model {m.name}: {exc}") from exc
                m.loaded = (tr, sp_src, sp_tgt)
            return m.loaded

    def _translate_sentences(self, m: _Model, sentences: Sequence[str]) -> list[str]:
        if not sentences:
            return []
        tr, sp_src, _ = self._load(m)
        batch = [sp_src.encode(s, out_type=str)[:_MAX_TOKENS] for s in sentences]
        results = tr.translate_batch(
            batch, beam_size=self.beam_size, max_batch_size=32, max_decoding_length=self.max_decoding_length
        )
        return [_detokenize(r.hypotheses[0]) if r.hypotheses else "" for r in results]

    def _renderings(self, m: _Model, sources: Sequence[str]) -> dict[str, list[str]]:
        """What the model makes of each bare source term: the likely wrong rendering to swap (cached)."""
        with m.lock:
            todo = [s for s in sources if s not in m.renderings]
        if todo:
            for s, out in zip(todo, self._translate_sentences(m, todo), strict=True):
                cleaned = out.strip(" .!?\u3002").strip()
                variants = [
                    v
                    for v in dict.fromkeys([cleaned, re.sub(r"^(the|a|an)\s+", "", cleaned, flags=re.I)])
                    if v
                ]
                with m.lock:
                    m.renderings[s] = variants
                    while len(m.renderings) > 2048:
                        m.renderings.popitem(last=False)
        with m.lock:
            return {s: list(m.renderings.get(s, [])) for s in sources}

    def translate(self, request: TranslationRequest) -> TranslationResult:
        m = self._get(request.source, request.target)
        per_text = [split_sentences(t) for t in request.texts]
        flat = self._translate_sentences(m, [s for ss in per_text for s in ss])
        joiner = "" if m.target in _NO_SPACE_TARGETS else " "
        out: list[str] = []
        k = 0
        for ss in per_text:
            out.append(joiner.join(flat[k : k + len(ss)]))
            k += len(ss)
        if request.terms:
            used = [
                (s, t) for s, t in request.terms if any(s.casefold() in x.casefold() for x in request.texts)
            ]
            renderings = self._renderings(m, [s for s, _ in used]) if used else {}
            out = [
                enforce_translation_terms(src, dst, used, renderings)
                for src, dst in zip(request.texts, out, strict=True)
            ]
        return TranslationResult(tuple(out))


def import_argos_model(argos_zip: Path, dest_root: Path) -> Path:
    """Unpacks an `.argosmodel` (zip: `<name>/model/` CT2 model, `<name>/sentencepiece.model`,
    `<name>/metadata.json`) into `dest_root/<from>-<to>-argos/`, replacing an earlier import."""
    try:
        zf = zipfile.ZipFile(argos_zip)
    except (OSError, zipfile.BadZipFile) as exc:
        raise EngineError(f"{argos_zip} is not an Argos package (zip): {exc}") from exc
    with zf:
        names = zf.namelist()
        meta_name = next((n for n in names if n.count("/") == 1 and n.endswith("/metadata.json")), None)
        if meta_name is None:
            raise EngineError(f"{argos_zip}: no <name>/metadata.json, not an Argos package")
        top = meta_name.split("/")[0] + "/"
        try:
            meta = json.loads(zf.read(meta_name))
            src, tgt = _norm_lang(meta["from_code"]), _norm_lang(meta["to_code"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EngineError(f"{argos_zip}: metadata.json lacks from_code/to_code") from exc
        if not re.fullmatch(r"[a-z]{2,3}", src) or not re.fullmatch(r"[a-z]{2,3}", tgt):
            raise EngineError(f"{argos_zip}: unexpected language codes {src!r}, {tgt!r}")
        # Only known members are written, each to a fixed flat name: no path from the zip reaches the disk.
        wanted = {
            top + "metadata.json": "metadata.json",
            top + "sentencepiece.model": "sentencepiece.model",
            top + "README.md": "README.md",
        }
        for n in names:
            rest = n[len(top + "model/") :] if n.startswith(top + "model/") else ""
            if rest and "/" not in rest and not rest.startswith("."):
                wanted[n] = rest
        if top + "model/model.bin" not in names or top + "sentencepiece.model" not in names:
            raise EngineError(
                f"{argos_zip}: needs model/model.bin and sentencepiece.model (older BPE packages are not supported)"
            )
        dest_root = Path(dest_root)
        dest_root.mkdir(parents=True, exist_ok=True)
        dest = dest_root / f"{src}-{tgt}-argos"
        staging = Path(tempfile.mkdtemp(prefix=".import-", dir=dest_root))
        try:
            for member, flat in wanted.items():
                if member in names:
                    with zf.open(member) as fin, open(staging / flat, "wb") as fout:
                        shutil.copyfileobj(fin, fout, 1 << 20)
            (staging / META_FILE).write_text(
                json.dumps(
                    {
                        "source": src,
                        "target": tgt,
                        "origin": "argos",
                        "package_version": meta.get("package_version"),
                    }
                )
                + "\n",
                encoding="utf-8",
            )
            old = dest_root / f".old-{dest.name}"
            if dest.exists():
                shutil.rmtree(old, ignore_errors=True)
                dest.rename(old)
            staging.rename(dest)  # same filesystem: the new model appears complete or not at all
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return dest
