"""Custom dictionaries: every accepted input format, context merging, errors, and the correction passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engines.term_matching import correct_terms, correct_timed_words, correct_words
from engines.terms import TermsError, build_context, parse_terms, parse_translation_terms
from engines.translation_terms import enforce_translation_terms
from engines.types import Word

TERMS = ["Speech7", "Soniox", "Piper", "Whisper", "CTranslate2", "Kubernetes", "PostgreSQL", "Tiedemann"]


# ---------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "value",
    [
        '["Speech7", "Soniox"]',
        ["Speech7", "Soniox"],
        "Speech7, Soniox",
        "Speech7;Soniox",
        "Speech7\nSoniox\n",
        "  Speech7 ;\r\n Soniox ,, ",
        '"Speech7, Soniox"',  # a JSON string holding delimited text
    ],
)
def test_parse_terms_formats(value: object) -> None:
    assert parse_terms(value) == ["Speech7", "Soniox"]  # type: ignore[arg-type]


def test_parse_terms_empty_and_multiword() -> None:
    assert parse_terms(None) == []
    assert parse_terms("") == []
    assert parse_terms("[]") == []
    assert parse_terms('["New  York", "Jörg Tiedemann"]') == ["New York", "Jörg Tiedemann"]


@pytest.mark.parametrize(
    "value",
    [
        '{"račun": "invoice"}',
        {"račun": "invoice"},
        '[{"source": "račun", "target": "invoice"}]',
        [{"source": "račun", "target": "invoice"}],
        [["račun", "invoice"]],
        "račun=invoice",
        "račun:invoice",
        "račun -> invoice",
        "račun=>invoice",
        '["račun=invoice"]',
        '"račun=invoice"',
    ],
)
def test_parse_translation_terms_formats(value: object) -> None:
    assert parse_translation_terms(value) == [("račun", "invoice")]


def test_parse_translation_terms_delimited_lists() -> None:
    assert parse_translation_terms("račun=invoice; plačilo=payment\nrok: deadline, a->b") == [
        ("račun", "invoice"),
        ("plačilo", "payment"),
        ("rok", "deadline"),
        ("a", "b"),
    ]
    # The most explicit separator wins, so a target may contain a colon.
    assert parse_translation_terms("meeting -> Meeting: 10 am") == [("meeting", "Meeting: 10 am")]


@pytest.mark.parametrize(
    ("func", "value", "fragment"),
    [
        (parse_terms, '["Speech7", ', "does not parse"),
        (parse_terms, '{"a": "b"}', "not a JSON object"),
        (parse_terms, '[["nested"]]', "must contain strings"),
        (parse_terms, "[true]", "must contain strings"),
        (parse_terms, ["x" * 101], "longer than"),
        (parse_translation_terms, '{"račun": ', "does not parse"),
        (parse_translation_terms, '{"račun": ["invoice"]}', "must contain strings"),
        (parse_translation_terms, '[{"source": "račun"}]', "source"),
        (parse_translation_terms, "račun invoice", "not a pair"),
        (parse_translation_terms, "[42]", "pair"),
    ],
)
def test_malformed_values_raise_terms_error(func, value, fragment) -> None:
    with pytest.raises(TermsError, match=fragment):
        func(value)
    assert issubclass(TermsError, ValueError)  # the server maps it to 400


# ---------------------------------------------------------------------- context merging


def test_build_context_collects_every_field_name() -> None:
    ctx = build_context(
        {
            "transcriptionTerms": '["Speech7", "Soniox"]',
            "customDictionary": "Piper; Whisper",
            "terms": "Soniox, Kubernetes",  # Soniox again: deduplicated, first spelling kept
            "customTerms": ["speech7", "PostgreSQL"],
            "translationTerms": '{"račun": "invoice"}',
            "translationDictionary": "plačilo=payment",
            "languageHints": "en",  # unrelated fields are ignored
        }
    )
    assert ctx["terms"] == ["Speech7", "Soniox", "Piper", "Whisper", "Kubernetes", "PostgreSQL"]
    assert ctx["translation_terms"] == [
        {"source": "račun", "target": "invoice"},
        {"source": "plačilo", "target": "payment"},
    ]


def test_build_context_merges_into_existing_context() -> None:
    context = {
        "general": [{"key": "domain", "value": "finance"}],
        "text": "Quarterly review",
        "terms": ["Speech7"],
        "translation_terms": [{"source": "račun", "target": "bill"}],
    }
    ctx = build_context(
        {
            "context": json.dumps(context),
            "transcriptionTerms": '["Soniox", "Speech7"]',
            "translationTerms": '{"račun": "invoice", "rok": "deadline"}',
        }
    )
    assert ctx["general"] == context["general"] and ctx["text"] == "Quarterly review"  # kept, not replaced
    assert ctx["terms"] == ["Speech7", "Soniox"]
    # The explicit context pair wins over the convenience field for the same source term.
    assert ctx["translation_terms"] == [
        {"source": "račun", "target": "bill"},
        {"source": "rok", "target": "deadline"},
    ]
    # A context given as an object (the realtime config) works the same and is not mutated.
    ctx2 = build_context({"context": context, "terms": "Piper"})
    assert ctx2["terms"] == ["Speech7", "Piper"] and context["terms"] == ["Speech7"]


def test_build_context_without_dictionaries() -> None:
    assert build_context({}) == {"terms": [], "translation_terms": []}
    assert build_context({"context": "", "terms": ""}) == {"terms": [], "translation_terms": []}


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"context": "{not json"}, "context is not valid JSON"),
        ({"context": "[1, 2]"}, "context must be a JSON object"),
        ({"context": '{"terms": {"a": 1}}'}, "context.terms"),
        ({"context": '{"translation_terms": [{"from": "a"}]}'}, "context.translation_terms"),
        ({"transcriptionTerms": '{"Speech7": 1}'}, "transcriptionTerms"),
        ({"translationDictionary": "just words"}, "translationDictionary"),
        ({"customTerms": ",".join(f"term{i}" for i in range(1001))}, "too many"),
    ],
)
def test_build_context_errors_name_the_field(fields, fragment) -> None:
    with pytest.raises(TermsError, match=fragment):
        build_context(fields)


# ---------------------------------------------------------------------- transcription corrections


@pytest.mark.parametrize(
    ("asr", "expected"),
    [
        ("We compared Sonics and Speech seven.", "We compared Soniox and Speech7."),
        ("Sonyx is fast, and speech 7 is local.", "Soniox is fast, and Speech7 is local."),
        ("It runs on cooper netties with post gress QL.", "It runs on Kubernetes with PostgreSQL."),
        ("Convert it with C translate 2, then (whisper)!", "Convert it with CTranslate2, then (Whisper)!"),
        ("Paper by Tiedeman et al.", "Paper by Tiedemann et al."),
    ],
)
def test_correct_terms_fixes_realistic_asr_output(asr: str, expected: str) -> None:
    assert correct_terms(asr, TERMS) == expected


@pytest.mark.parametrize(
    "sentence",
    [
        "The paper whispers about the sonic boom we heard in speech seventeen.",
        "I see the ice, it is a nice day to speak seven languages.",
        "He was speaking to the sonic team, and they said the pipeline is slow.",
        "The meeting is about the budget for next year, and we need to review the sales numbers.",
    ],
)
def test_no_false_corrections_on_normal_sentences(sentence: str) -> None:
    assert correct_terms(sentence, TERMS) == sentence


def test_no_false_corrections_on_reference_transcripts(testdata: Path) -> None:
    texts = sorted(testdata.glob("*/*.txt"))
    assert texts, "reference transcripts missing"
    for f in texts:
        text = f.read_text(encoding="utf-8")
        assert correct_terms(text, TERMS + ["Argos", "NASA", "račun"]) == text, f.name


def test_correct_words_keeps_alignment_and_punctuation() -> None:
    words = [" We", " tried", " speech", " seven,", " and", " Sonics."]
    assert correct_words(words, TERMS) == [" We", " tried", " Speech7,", "", " and", " Soniox."]
    # A speaker change between the two words forbids joining them.
    assert correct_words([" speech", " seven"], TERMS, breaks=[False, True]) == [" speech", " seven"]
    # Punctuation after the first word also ends the window.
    assert correct_words([" speech.", " Seven"], TERMS) == [" speech.", " Seven"]


def test_correct_timed_words_merges_spans() -> None:
    words = [
        Word(" Try", 0.0, 0.3),
        Word(" speech", 0.4, 0.7, 0.9),
        Word(" seven.", 0.7, 1.1, 0.6),
        Word(" Now", 1.5, 1.8),
    ]
    out = correct_timed_words(words, TERMS)
    assert [(w.text, w.start, w.end) for w in out] == [
        (" Try", 0.0, 0.3),
        (" Speech7.", 0.4, 1.1),
        (" Now", 1.5, 1.8),
    ]
    assert out[1].probability == pytest.approx(0.6)


def test_short_terms_are_not_fuzzed() -> None:
    # "AI" is too short to tell from ordinary words: nothing is rewritten.
    assert correct_terms("I will say hi to the team.", ["AI"]) == "I will say hi to the team."


def test_enforce_replaces_copied_source_term() -> None:
    assert (
        enforce_translation_terms("Račun je tu.", "Račun is here.", [("račun", "invoice")])
        == "Invoice is here."
    )


def test_enforce_replaces_known_rendering() -> None:
    out = enforce_translation_terms(
        "Pošlji mi račun.", "Send me the bill.", [("račun", "invoice")], {"račun": ["Bills"]}
    )
    assert out == "Send me the invoice."


def test_enforce_leaves_correct_or_unrelated_translations() -> None:
    pairs = [("račun", "invoice")]
    assert (
        enforce_translation_terms("Pošlji mi račun.", "Send me the invoices.", pairs)
        == "Send me the invoices."
    )
    assert (
        enforce_translation_terms("Dober dan.", "Good day, bill.", pairs, {"račun": ["bill"]})
        == "Good day, bill."
    )
    # No copy, no known rendering, no near miss: the text is left alone rather than guessed at.
    assert enforce_translation_terms("Pošlji mi račun.", "Send me the bill.", pairs) == "Send me the bill."


def test_enforce_fixes_near_miss_of_target() -> None:
    out = enforce_translation_terms("Uporabljamo Soniox.", "We use Sonics.", [("Soniox", "Soniox")])
    assert out == "We use Soniox."
