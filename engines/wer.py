"""Word error rate, the usual ASR score: lower-cased words, punctuation dropped, Levenshtein over words.

Used by the tests and the benchmarks to judge transcripts against reference texts; pure Python.
"""

from __future__ import annotations

import re

_NOT_WORD = re.compile(r"[^\w\s']")


def words(text: str) -> list[str]:
    """Lower-cased words with punctuation (but not apostrophes) removed."""
    return _NOT_WORD.sub(" ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words; 0.0 for a perfect match."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))  # one row of the edit-distance table, updated in place
    for i, r in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[-1] / max(len(ref), 1)
