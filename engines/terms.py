"""Custom dictionaries: parsing the spec's dictionary fields, and applying terms to engine output.

Transcription terms arrive as `transcriptionTerms`, `customDictionary`, `terms` or `customTerms`;
translation terms as `translationTerms` or `translationDictionary`. Each value is JSON (a list of
strings, an object `{"source": "target"}`, a list of `{"source", "target"}` objects, or a JSON string)
or delimited text (comma, semicolon or newline separated; pairs written `a=b`, `a:b`, `a->b`, `a=>b`).
They are merged into the request's `context` (Soniox's shape: `context.terms`, `context.translation_terms`),
never replacing what the caller already put there.

Whisper only *steers* towards terms (a glossary in its prompt, engines.whisper); engines.term_matching snaps
near-miss spellings in its output to the terms, engines.translation_terms enforces translation pairs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

TRANSCRIPTION_FIELDS = (
    "transcriptionTerms",
    "customDictionary",
    "terms",
    "customTerms",
    "transcription_terms",
    "custom_dictionary",
    "custom_terms",
)
TRANSLATION_FIELDS = (
    "translationTerms",
    "translationDictionary",
    "translation_terms",
    "translation_dictionary",
)

# Bounds keep the fuzzy pass (terms x words) and decoder prompts cheap whatever a client sends.
MAX_TERMS = 1000
MAX_TERM_CHARS = 100
_PAIR_SEPARATORS = ("->", "=>", "\u2192", "=", ":")  # most explicit first, so "a->b:c" splits at "->"
_SPLIT_RE = re.compile(r"[\n\r;,]+")


class TermsError(ValueError):
    """A dictionary field cannot be understood; the message names the field (the server answers 400)."""


# ---------------------------------------------------------------------- parsing


def _load_json_like(value: str, what: str) -> Any:
    """Returns the decoded JSON when `value` looks like JSON, else the stripped text itself."""
    s = value.strip()
    if s[:1] in ("[", "{", '"'):
        try:
            return json.loads(s)
        except json.JSONDecodeError as exc:
            raise TermsError(
                f"{what} looks like JSON but does not parse: {exc.msg} (at char {exc.pos})"
            ) from None
        except RecursionError:
            raise TermsError(f"{what} is nested too deeply") from None
    return s


def _clean_term(term: Any, what: str) -> str:
    if isinstance(term, bool) or not isinstance(term, (str, int, float)):
        raise TermsError(f"{what} must contain strings, got {type(term).__name__}: {term!r}"[:200])
    s = " ".join(str(term).split())  # newlines/tabs inside a term would break prompts and matching
    if len(s) > MAX_TERM_CHARS:
        raise TermsError(f"{what}: term longer than {MAX_TERM_CHARS} characters: {s[:40]!r}...")
    return s


def parse_terms(value: str | list | None, what: str = "transcription terms") -> list[str]:
    """A transcription dictionary value -> its terms in order (empty entries dropped, not deduplicated)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [t for t in (_clean_term(v, what) for v in value) if t]
    if not isinstance(value, str):
        raise TermsError(f"{what} must be a JSON list of strings or delimited text")
    decoded = _load_json_like(value, what)
    if isinstance(decoded, list):
        return parse_terms(decoded, what)
    if isinstance(decoded, dict):
        raise TermsError(
            f"{what} must be a list of strings, not a JSON object (objects are for translationTerms)"
        )
    if not isinstance(decoded, str):
        raise TermsError(f"{what} must be a list of strings")
    return [t for t in (_clean_term(p, what) for p in _SPLIT_RE.split(decoded)) if t]


def _split_pair(entry: str, what: str) -> tuple[str, str]:
    for sep in _PAIR_SEPARATORS:
        if sep in entry:
            src, tgt = entry.split(sep, 1)
            return _clean_term(src, what), _clean_term(tgt, what)
    raise TermsError(
        f"{what}: {entry!r} is not a pair (write source=target, source:target or source->target)"
    )


def _pair_from_item(item: Any, what: str) -> tuple[str, str]:
    if isinstance(item, str):
        return _split_pair(item, what)
    if isinstance(item, Mapping):
        src, tgt = item.get("source"), item.get("target")
        if src is None or tgt is None:
            raise TermsError(f'{what}: list items must be {{"source": ..., "target": ...}} objects')
        return _clean_term(src, what), _clean_term(tgt, what)
    if isinstance(item, (list, tuple)) and len(item) == 2:
        return _clean_term(item[0], what), _clean_term(item[1], what)
    raise TermsError(f"{what}: cannot read {item!r} as a source/target pair"[:200])


def parse_translation_terms(value: Any, what: str = "translation terms") -> list[tuple[str, str]]:
    """A translation dictionary value -> (source, target) pairs in order; pairs missing either side dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        decoded = _load_json_like(value, what)
        if isinstance(decoded, str):
            entries = [e.strip() for e in _SPLIT_RE.split(decoded) if e.strip()]
            pairs = [_split_pair(e, what) for e in entries]
        else:
            return parse_translation_terms(decoded, what)
    elif isinstance(value, Mapping):
        pairs = [(_clean_term(k, what), _clean_term(v, what)) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        pairs = [_pair_from_item(item, what) for item in value]
    else:
        raise TermsError(f'{what} must be a JSON object {{"source": "target"}} or text such as a=b; c=d')
    return [(s, t) for s, t in pairs if s and t]


def _dedupe_terms(terms: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for t in terms:
        if t.casefold() not in seen:
            seen.add(t.casefold())
            out.append(t)
    return out


def build_context(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Merges every dictionary field into the request's `context` (a JSON object or its text).

    Keeps every other key of the given context. `terms` are deduplicated case-insensitively (first spelling
    wins); for `translation_terms` the first pair for a source term wins, so an explicit `context` beats the
    convenience fields, and earlier fields beat later ones.
    """
    raw = fields.get("context")
    context: dict[str, Any]
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        context = {}
    elif isinstance(raw, Mapping):
        context = dict(raw)
    elif isinstance(raw, str):
        try:
            decoded = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TermsError(f"context is not valid JSON: {exc.msg} (at char {exc.pos})") from None
        except RecursionError:
            raise TermsError("context is nested too deeply") from None
        if not isinstance(decoded, dict):
            raise TermsError("context must be a JSON object")
        context = decoded
    else:
        raise TermsError("context must be a JSON object")

    terms = parse_terms(context.get("terms"), "context.terms")
    for name in TRANSCRIPTION_FIELDS:
        if name in fields:
            terms += parse_terms(fields[name], name)
    terms = _dedupe_terms(terms)

    pairs = parse_translation_terms(context.get("translation_terms"), "context.translation_terms")
    for name in TRANSLATION_FIELDS:
        if name in fields:
            pairs += parse_translation_terms(fields[name], name)
    by_source: dict[str, tuple[str, str]] = {}
    for s, t in pairs:
        by_source.setdefault(s.casefold(), (s, t))

    if len(terms) > MAX_TERMS or len(by_source) > MAX_TERMS:
        raise TermsError(f"too many dictionary terms (at most {MAX_TERMS} of each kind)")
    context["terms"] = terms
    context["translation_terms"] = [{"source": s, "target": t} for s, t in by_source.values()]
    return context
