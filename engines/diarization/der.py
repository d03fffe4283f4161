"""Diarization error rate (NIST md-eval style) and a small RTTM reader; pure numpy + scipy.

DER = (missed speech + false alarm + speaker confusion) / total reference speech, counted per
speaker on a 10 ms grid, so overlapped speech counts once per speaker. Hypothesis labels are mapped
to reference labels one-to-one to maximise the matched time (Hungarian algorithm). Frames within
`collar` seconds either side of any reference boundary are not scored (md-eval's `-c 0.25`;
pyannote.metrics calls the same thing `collar=0.5`, the total width).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Turn = tuple[float, float, str]  # (start s, end s, speaker label)
STEP = 0.01


@dataclass(frozen=True)
class DerResult:
    der: float  # fraction, e.g. 0.12 for 12 %
    missed: float
    false_alarm: float
    confusion: float
    total: float  # scored reference speech, speaker-seconds

    def __str__(self) -> str:
        return (
            f"DER {100 * self.der:.1f}% (miss {100 * self.missed:.1f}, fa {100 * self.false_alarm:.1f}, "
            f"conf {100 * self.confusion:.1f}; {self.total:.1f} s)"
        )


def read_rttm(path: str | Path) -> dict[str, list[Turn]]:
    """SPEAKER lines of an RTTM file, grouped by file id: {file: [(start, end, speaker), ...]}."""
    out: dict[str, list[Turn]] = {}
    for line in Path(path).read_text().splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[0] != "SPEAKER":
            continue
        start, dur = float(fields[3]), float(fields[4])
        out.setdefault(fields[1], []).append((start, start + dur, fields[7]))
    return out


def _activity(turns: Sequence[Turn], labels: list[str], n: int) -> np.ndarray:
    """(len(labels), n) boolean matrix: speaker k talks in frame i (frame midpoint inside a turn)."""
    act = np.zeros((len(labels), n), dtype=bool)
    index = {lab: k for k, lab in enumerate(labels)}
    for start, end, lab in turns:
        a = max(0, int(np.ceil(start / STEP - 0.5)))
        b = min(n, int(np.ceil(end / STEP - 0.5)))
        if b > a:
            act[index[lab], a:b] = True
    return act


def _scored_mask(reference: Sequence[Turn], n: int, collar: float) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    if collar <= 0:
        return mask
    for start, end, _ in reference:
        for t in (start, end):
            a = max(0, int(np.ceil((t - collar) / STEP - 0.5)))
            b = min(n, int(np.ceil((t + collar) / STEP - 0.5)))
            mask[a:b] = False
    return mask


def diarization_error_rate(
    reference: Iterable[Turn],
    hypothesis: Iterable[Turn],
    collar: float = 0.25,
    region: tuple[float, float] | None = None,
) -> DerResult:
    """DER of `hypothesis` against `reference`, scored over `region` (default: 0 .. last turn end)."""
    from scipy.optimize import linear_sum_assignment

    ref, hyp = list(reference), list(hypothesis)
    lo, hi = region if region is not None else (0.0, max([t[1] for t in ref + hyp], default=0.0))
    n = int(round(hi / STEP))
    ref_labels = sorted({t[2] for t in ref})
    hyp_labels = sorted({t[2] for t in hyp})
    r = _activity(ref, ref_labels, n)
    h = _activity(hyp, hyp_labels, n)
    scored = _scored_mask(ref, n, collar)
    scored[: int(round(lo / STEP))] = False
    r, h = r[:, scored], h[:, scored]

    n_ref, n_hyp = r.sum(axis=0), h.sum(axis=0)
    total = float(n_ref.sum())
    if total == 0:
        fa = float(n_hyp.sum()) * STEP
        return DerResult(der=float("inf") if fa else 0.0, missed=0.0, false_alarm=fa, confusion=0.0, total=0.0)
    # Matched frames for every (reference, hypothesis) speaker pair; best one-to-one mapping.
    matched = 0.0
    if len(ref_labels) and len(hyp_labels):
        overlap = r.astype(np.float64) @ h.T.astype(np.float64)
        rows, cols = linear_sum_assignment(-overlap)
        matched = float(overlap[rows, cols].sum())
    missed = float(np.maximum(n_ref - n_hyp, 0).sum())
    false_alarm = float(np.maximum(n_hyp - n_ref, 0).sum())
    confusion = float(np.minimum(n_ref, n_hyp).sum()) - matched
    return DerResult(
        der=(missed + false_alarm + confusion) / total,
        missed=missed / total,
        false_alarm=false_alarm / total,
        confusion=confusion / total,
        total=total * STEP,
    )
