"""Translation terms: a translation that missed a requested term pair gets the target term put in."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

from engines.term_matching import NO_SPACE_SCRIPT, correct_timed_words, correct_words, split_affixes
from engines.types import Word


def _term_regex(term: str, stem: bool = False) -> re.Pattern[str]:
    """Matches `term` case-insensitively; in spaced scripts at word boundaries, allowing up to 3 extra
    letters after a term of 4+ letters so inflected forms (račun -> računa, invoice -> invoices) count.
    `stem` first drops a plural ending, so a rendering "Invoices" also finds "invoice"."""
    if NO_SPACE_SCRIPT.search(term):
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
