"""Fuzzy term matching: snapping near-miss spellings in a transcript to the request's terms.

Whisper only *steers* towards terms (prompt / hotwords), so `correct_words` adds a conservative post-pass
that snaps near-miss spellings ("Sonics", "speech seven") to the canonical term.

Two keys per string: an orthographic key (case, accents, punctuation and spaces dropped, digits spelled
out so "Speech7", "Speech 7" and "speech seven" agree) and a rough phonetic key (c/k/q, x/ks, y/i, ph/f...
merged) so "Sonics" and "Sonyx" land one edit from "Soniox". A window of 1..n words matches a term when
the phonetic keys are within a length-dependent edit budget (none for keys of 5 or fewer letters) and the
spellings are still >= 50 % alike. Guards keep ordinary text intact: windows made only of common words,
plain inflections of a term ("whispers" for "Whisper") and windows crossing punctuation never match.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache

from engines.types import Word

# Scripts written without spaces between words: a term there matches inside a run of characters.
NO_SPACE_SCRIPT = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\u0e00-\u0e7f]")
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
                self.max_window, min(8, len(term) + 1) if NO_SPACE_SCRIPT.search(term) else min(6, spaced)
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
