"""Boundary refinement: re-segment speech at a fine step once the speakers are known, and build turns.

Clustering works on 1.5 s windows, so a speaker change can only be placed to within a window. Here every
step (0.1 s) of speech gets a score per speaker (cosine similarity of a short-window embedding to each
speaker's centroid), and a Viterbi pass picks the best label path with a fixed cost per speaker change.
The change cost is what keeps short, ambiguous windows from flickering between speakers while letting a
clear change land on the right 0.1 s step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engines.types import SpeakerTurn


def viterbi(scores: np.ndarray, switch_penalty: float) -> np.ndarray:
    """Best label per step for `scores` (steps, speakers), maximising sum(score) - penalty * changes."""
    n, k = scores.shape
    if n == 0:
        return np.zeros(0, dtype=int)
    if k == 1:
        return np.zeros(n, dtype=int)
    back = np.zeros((n, k), dtype=np.int64)
    total = scores[0].astype(np.float64).copy()
    stay = np.eye(k, dtype=bool)
    for t in range(1, n):
        # cand[i, j]: come from i, be in j now.
        cand = total[:, None] - np.where(stay, 0.0, switch_penalty)
        back[t] = np.argmax(cand, axis=0)
        total = cand[back[t], np.arange(k)] + scores[t]
    path = np.zeros(n, dtype=int)
    path[-1] = int(np.argmax(total))
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def labelled_turns(
    spans: Sequence[tuple[float, float]],
    times: np.ndarray,
    labels: np.ndarray,
    step: float,
    max_gap: float = 0.0,
    min_turn: float = 0.0,
) -> list[tuple[float, float, int]]:
    """(start, end, label) turns from speech spans (seconds) and per-step labels at `times` (step centres,
    original timeline); labels as given, so more turns can join them before `renumber`.

    Each span is cut where the label changes (midway between the two steps); gaps of at most `max_gap`
    seconds between turns of one speaker are bridged (annotators do not split a turn at a breath), and turns
    shorter than `min_turn` are dropped.
    """
    pieces: list[tuple[float, float, int]] = []
    order = np.argsort(times)
    times, labels = times[order], labels[order]
    for start, end in spans:
        lo, hi = np.searchsorted(times, [start, end])
        if hi <= lo:  # no step inside the span: the nearest step's label
            if len(times) == 0:
                continue
            near = int(np.clip(np.searchsorted(times, (start + end) / 2), 0, len(times) - 1))
            pieces.append((start, end, int(labels[near])))
            continue
        seg_start, current = start, int(labels[lo])
        for i in range(lo + 1, hi):
            lab = int(labels[i])
            if lab != current and times[i] - times[i - 1] <= 1.5 * step:
                cut = (times[i - 1] + times[i]) / 2
                pieces.append((seg_start, cut, current))
                seg_start, current = cut, lab
        pieces.append((seg_start, end, current))
    merged: list[list[float]] = []
    for s, e, lab in pieces:
        if merged and merged[-1][2] == lab and s - merged[-1][1] <= max_gap + 1e-9:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e, lab])
    return [(s, e, int(lab)) for s, e, lab in merged if e - s >= min_turn]


def overlap_turns(
    times: np.ndarray, scores: np.ndarray, labels: np.ndarray, overlapped: np.ndarray, step: float, min_steps: int
) -> list[tuple[float, float, int]]:
    """Second-speaker turns where speech is overlapped: at each step flagged in `overlapped`, the speaker
    that scores best after the step's own label (`scores`: steps x speakers, as for `viterbi`).

    Runs of fewer than `min_steps` consecutive flagged steps for one speaker are dropped (a detector's
    blips), and a run ends where the steps are not consecutive in time (a cut between speech spans)."""
    n, k = scores.shape
    if n == 0 or k < 2:
        return []
    other = scores.astype(np.float64).copy()
    other[np.arange(n), labels] = -np.inf
    second = np.argmax(other, axis=1)
    out: list[tuple[float, float, int]] = []
    run_start = 0
    for i in range(1, n + 1):
        same = (
            i < n
            and overlapped[i] == overlapped[i - 1]
            and second[i] == second[i - 1]
            and times[i] - times[i - 1] <= 1.5 * step
        )
        if same:
            continue
        if overlapped[run_start] and i - run_start >= min_steps:
            out.append((float(times[run_start] - step / 2), float(times[i - 1] + step / 2), int(second[run_start])))
        run_start = i
    return out


def renumber(turns: Sequence[tuple[float, float, int]]) -> list[SpeakerTurn]:
    """Speakers numbered 0.. by first appearance in time (the API's `speakerN` contract)."""
    order: dict[int, int] = {}
    out = []
    for s, e, lab in sorted(turns, key=lambda t: (t[0], t[1])):
        out.append(
            SpeakerTurn(
                start=round(float(s), 3), end=round(float(e), 3), speaker=order.setdefault(lab, len(order))
            )
        )
    return out
