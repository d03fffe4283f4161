"""Custom dictionaries: parsing the spec's dictionary fields, and applying terms to engine output.

Transcription terms arrive as `transcriptionTerms`, `customDictionary`, `terms` or `customTerms`;
translation terms as `translationTerms` or `translationDictionary`. Each value is JSON (a list of
strings, an object `{"source": "target"}`, a list of `{"source", "target"}` objects, or a JSON string)
or delimited text (comma, semicolon or newline separated; pairs written `a=b`, `a:b`, `a->b`, `a=>b`).
They are merged into the request's `context` (Soniox's shape: `context.terms`, `context.translation_terms`),
never replacing what the caller already put there.

Whisper only *steers* towards terms (prompt / hotwords), so `correct_words` adds a conservative post-pass
that snaps near-miss spellings ("Sonics", "speech seven") to the canonical term.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any

from engines.types import Word

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
_NO_SPACE_SCRIPT = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\u0e00-\u0e7f]")


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


# ---------------------------------------------------------------------- fuzzy term matching
#
# Two keys per string: an orthographic key (case, accents, punctuation and spaces dropped, digits spelled
# out so "Speech7", "Speech 7" and "speech seven" agree) and a rough phonetic key (c/k/q, x/ks, y/i, ph/f...
# merged) so "Sonics" and "Sonyx" land one edit from "Soniox". A window of 1..n words matches a term when
# the phonetic keys are within a length-dependent edit budget (none for keys of 5 or fewer letters) and the
# spellings are still >= 50 % alike. Guards keep ordinary text intact: windows made only of common words,
# plain inflections of a term ("whispers" for "Whisper") and windows crossing punctuation never match.

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split()
)
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_COMMON = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been am do does did have has "
    "had i you he she it we they me him her us them my your his its our their this that these those there here "
    "what which who when where why how not no yes so too very can could will would shall should may might must "
    "just only also then than now up down out over under again all any each few more most other some such "
    "one two three four five six seven eight nine ten first new good time year day way make like get go see "
    "know say said take come think look want give use find tell ask work seem feel try leave call okay oh".split()
)
_INFLECTIONS = ("s", "es", "ed", "d", "ing", "er", "ers")
_AFFIX_RE = re.compile(r"^(\s*[^\w]*)(.*?)([^\w]*)$", re.DOTALL)
# fmt: off
_PHONETIC_RULES = [(re.compile(a), b) for a, b in (
    (r"^kn", "n"), (r"^wr", "r"), (r"^wh", "w"), (r"ph", "f"), (r"th", "t"), (r"gh", "g"), (r"ck", "k"),
    (r"ch(?=r)", "k"), (r"ch", "\u00e7"), (r"c(?=[eiy])", "s"), (r"[cq]", "k"), (r"x", "ks"), (r"z", "s"),
    (r"(?<=.)y", "i"), (r"ee|ea", "i"), (r"oo", "u"), (r"(.)\1+", r"\1"),
)]
# fmt: on


def _number_words(m: re.Match[str]) -> str:
    n = m.group(0)
    v = int(n)
    if len(n) <= 2 and v < 100:
        return _ONES[v] if v < 20 else _TENS[v // 10 - 2] + (_ONES[v % 10] if v % 10 else "")
    return "".join(_ONES[int(d)] for d in n)  # years and codes come out digit by digit either way


@lru_cache(maxsize=1 << 16)  # transcripts repeat their words; keys are pure functions of the text
def _ortho_key(s: str) -> str:
    s = unicodedata.normalize("NFKD", s.casefold())
    s = re.sub(r"\d+", _number_words, s)
    return "".join(ch for ch in s if ch.isalnum() and not unicodedata.combining(ch))


@lru_cache(maxsize=1 << 16)
def _phon_key(ortho: str) -> str:
    for pattern, repl in _PHONETIC_RULES:
        ortho = pattern.sub(repl, ortho)
    return ortho


def _band(length: int) -> int:
    """Phonetic edits allowed between keys of this (larger) length."""
    return 0 if length <= 5 else 1 if length <= 8 else 2 if length <= 12 else 3


def _levenshtein(a: str, b: str, cutoff: int) -> int:
    """Edit distance, or cutoff + 1 as soon as it must exceed `cutoff`."""
    if abs(len(a) - len(b)) > cutoff:
        return cutoff + 1
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        if min(cur) > cutoff:
            return cutoff + 1
        prev = cur
    return prev[-1]


def split_affixes(token: str) -> tuple[str, str, str]:
    """(leading space and punctuation, the word, trailing punctuation)."""
    m = _AFFIX_RE.match(token)
    assert m is not None  # the pattern matches any string
    return m.group(1), m.group(2), m.group(3)


class TermMatcher:
    """The keys of a term list, computed once per request."""

    def __init__(self, terms: Sequence[str]) -> None:
        self.exact: dict[str, str] = {}
        self.by_initial: dict[str, list[tuple[str, str, str]]] = {}  # phon[0] -> (phon, ortho, term)
        self.max_window = 1
        for term in terms:
            ortho = _ortho_key(term)
            if len(ortho) < 3:
                continue  # "AI", "Qt": too short to tell from ordinary words
            self.exact.setdefault(ortho, term)
            phon = _phon_key(ortho)
            self.by_initial.setdefault(phon[0], []).append((phon, ortho, term))
            spaced = len(term.split()) + 2
            self.max_window = max(
                self.max_window, min(8, len(term) + 1) if _NO_SPACE_SCRIPT.search(term) else min(6, spaced)
            )

    def best(self, key: str, content: int) -> tuple[float, float, str] | None:
        """(phonetic distance, spelling distance, term) of the closest acceptable term, both normalized.

        `content` is how many letters of `key` come from uncommon words: the edit budget follows it, so
        "speak seven" is not one slip away from "Speech7" just because "seven" pads the length.
        """
        term = self.exact.get(key)
        if term is not None:
            return 0.0, 0.0, term
        phon = _phon_key(key)
        best: tuple[float, float, str] | None = None
        for t_phon, t_ortho, term in self.by_initial.get(phon[:1], ()):
            if any(key == t_ortho + sfx or t_ortho == key + sfx for sfx in _INFLECTIONS):
                continue
            longest = max(len(phon), len(t_phon))
            budget = _band(longest if content >= len(key) else min(longest, content))
            d = _levenshtein(phon, t_phon, budget)
            if d > budget:
                continue
            o_len = max(len(key), len(t_ortho))
            o_d = _levenshtein(key, t_ortho, o_len // 2)
            if o_d > o_len // 2:
                continue
            cand = (d / longest, o_d / o_len, term)
            if best is None or cand[:2] < best[:2]:
                best = cand
        return best


def match_span(
    matcher: TermMatcher, words: Sequence[str], i: int, breaks: Sequence[bool] | None
) -> tuple[int, str] | None:
    """The best (word count, term) for a window starting at word i, or None."""
    best: tuple[float, float, int, str] | None = None
    cores: list[str] = []
    for n in range(1, matcher.max_window + 1):
        k = i + n - 1
        if k >= len(words) or (n > 1 and ((breaks and breaks[k]) or split_affixes(words[k - 1])[2])):
            break  # no window crosses punctuation, a speaker change or the end
        core = split_affixes(words[k])[1]
        if not core:
            break
        cores.append(core)
        if all(c.casefold() in _COMMON for c in cores):
            continue
        key = _ortho_key("".join(cores))
        if len(key) < 3:
            continue
        content = len(_ortho_key("".join(c for c in cores if c.casefold() not in _COMMON)))
        hit = matcher.best(key, content)
        if hit is not None and (best is None or (hit[0], hit[1], n) < best[:3]):
            best = (hit[0], hit[1], n, hit[2])
    return None if best is None else (best[2], best[3])


# ---------------------------------------------------------------------- transcription post-pass


def correct_words(
    words: Sequence[str], terms: Sequence[str], breaks: Sequence[bool] | None = None
) -> list[str]:
    """Snaps near-miss spellings of `terms` in a word sequence to the canonical term.

    Returns a list of the same length: a match spanning several words puts the term (with the first word's
    leading space/punctuation and the last word's trailing punctuation) in the first slot and "" in the
    others, so callers can keep word timestamps aligned (see `correct_timed_words`). `breaks[i]` true
    forbids a match that joins word i-1 and word i (a speaker change, for example).
    """
    out = list(words)
    if not terms or not words:
        return out
    matcher = TermMatcher(terms)
    i = 0
    while i < len(words):
        hit = match_span(matcher, words, i, breaks)
        if hit is None:
            i += 1
            continue
        n, term = hit
        lead, _, _ = split_affixes(words[i])
        _, _, trail = split_affixes(words[i + n - 1])
        out[i] = lead + term + trail
        for k in range(i + 1, i + n):
            out[k] = ""
        i += n
    return out


def correct_timed_words(words: Sequence[Word], terms: Sequence[str]) -> list[Word]:
    """`correct_words` over timed words: merged words become one word spanning their times."""
    if not terms or not words:
        return list(words)
    breaks = [i > 0 and words[i].speaker != words[i - 1].speaker for i in range(len(words))]
    texts = correct_words([w.text for w in words], terms, breaks)
    out: list[Word] = []
    i = 0
    while i < len(words):
        j = i + 1
        while j < len(words) and texts[j] == "" and words[j].text != "":
            j += 1  # words[i+1:j] were folded into words[i]
        span = words[i:j]
        out.append(
            replace(
                words[i],
                text=texts[i],
                end=max(w.end for w in span),
                probability=min(w.probability for w in span),
            )
        )
        i = j
    return out


def correct_terms(text: str, terms: Sequence[str]) -> str:
    """`correct_words` over plain text split at whitespace (the whitespace itself is kept)."""
    if not terms or not text.strip():
        return text
    tokens = re.findall(r"\s*\S+", text)
    tail = text[len("".join(tokens)) :]
    return "".join(correct_words(tokens, terms)) + tail


def hotwords_prompt(terms: Sequence[str], max_chars: int = 400) -> str | None:
    """Terms as a short comma-separated decoder prompt (Whisper keeps ~224 prompt tokens; stay well under)."""
    out: list[str] = []
    used = 0
    for t in _dedupe_terms(" ".join(t.split()) for t in terms if t and t.strip()):
        if used + len(t) + 2 > max_chars:
            break
        out.append(t)
        used += len(t) + 2
    return ", ".join(out) if out else None


# ---------------------------------------------------------------------- translation post-pass


def _term_regex(term: str, stem: bool = False) -> re.Pattern[str]:
    """Matches `term` case-insensitively; in spaced scripts at word boundaries, allowing up to 3 extra
    letters after a term of 4+ letters so inflected forms (račun -> računa, invoice -> invoices) count.
    `stem` first drops a plural ending, so a rendering "Invoices" also finds "invoice"."""
    if _NO_SPACE_SCRIPT.search(term):
        return re.compile(re.escape(term), re.IGNORECASE)
    if stem and len(term) >= 5:
        term = re.sub(r"(?i)(?<=[^aeiou])es$|s$", "", term)
    body = re.escape(term)
    suffix = r"\w{0,3}" if len(term) >= 4 else ""
    return re.compile(rf"(?<!\w){body}{suffix}(?!\w)", re.IGNORECASE)


def _cased_like(replacement: str, before: str) -> str:
    """Capitalizes a lower-case replacement at a sentence start; elsewhere the term's own casing wins."""
    head = before.rstrip()
    if replacement[:1].islower() and (not head or head[-1] in ".!?\u3002\uff01\uff1f"):
        return replacement[:1].upper() + replacement[1:]
    return replacement


def _replace_first(text: str, pattern: re.Pattern[str], target: str) -> str | None:
    m = pattern.search(text)
    if m is None:
        return None
    return text[: m.start()] + _cased_like(target, text[: m.start()]) + text[m.end() :]


def enforce_translation_terms(
    source_text: str,
    translated_text: str,
    pairs: Sequence[tuple[str, str]],
    renderings: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """Makes each required target appear in the translation when its source term occurs in the source.

    Heuristic, per pair whose source term is in `source_text` but whose target is not yet in the translation:
    1. the source term was copied through untranslated (names, codes) -> replace that copy;
    2. `renderings[source]` lists what the translator makes of the term on its own (the Ct2Translator
       translates the bare term); the first of those found in the translation is the wrong rendering -> replace;
    3. a near-miss of the target itself (another inflection or casing) -> replace it;
    4. otherwise the wrong rendering cannot be located and the translation is left as it is (inserting the
       term at a guessed place would produce worse text than a synonym).
    Each pair replaces at most one occurrence per source occurrence.
    """
    out = translated_text
    for source, target in pairs:
        src_re = _term_regex(source)
        count = len(src_re.findall(source_text))
        if count == 0:
            continue
        tgt_re = _term_regex(target)
        for _ in range(count - len(tgt_re.findall(out))):
            known = (renderings or {}).get(source, ())
            candidates = [src_re] + [_term_regex(r, stem=True) for r in known if r.strip()]
            new = None
            for pattern in candidates:
                new = _replace_first(out, pattern, target)
                if new is not None:
                    break
            if new is None:
                new = _replace_near_miss(out, target)
            if new is None:
                break
            out = new
    return out


def _replace_near_miss(text: str, target: str) -> str | None:
    """Replaces the first 1..n-word window that `correct_words` would snap to `target`."""
    tokens = re.findall(r"\s*\S+", text)
    fixed = correct_words(tokens, [target])
    if fixed == tokens:
        return None
    i = next(k for k, (a, b) in enumerate(zip(tokens, fixed, strict=True)) if a != b)
    lead, core, trail = split_affixes(fixed[i])
    fixed[i] = lead + _cased_like(core, "".join(tokens[:i]) + lead) + trail
    j = i + 1
    while j < len(fixed) and fixed[j] == "":
        j += 1
    return "".join(tokens[:i]) + "".join(fixed[i:j]) + "".join(tokens[j:]) + text[len("".join(tokens)) :]


def translated_timed_words(words: Sequence[Word], pairs: Sequence[tuple[str, str]]) -> list[Word]:
    """The translation-term pass over a translation that exists only as timed words (Whisper's translate
    task gives no source text to compare with): a source term copied through untranslated (names, codes;
    inflections allowed, exact spelling otherwise) becomes its target, then near-misses of a target snap
    to it. Source terms are not fuzzed: a foreign term one letter from an English word would eat it."""
    if not pairs or not words:
        return list(words)
    copies = [(_term_regex(source), target) for source, target in pairs]
    out: list[Word] = []
    for w in words:
        lead, core, trail = split_affixes(w.text)
        for pattern, target in copies:
            if core and pattern.fullmatch(core):
                w = replace(w, text=lead + target + trail)
                break
        out.append(w)
    return correct_timed_words(out, [target for _, target in pairs])
