"""pyannote.audio speaker diarization from a local pipeline directory, strictly offline.

The operator copies a pipeline (e.g. speaker-diarization-community-1: config.yaml + segmentation/,
embedding/, plda/ folders) into `<models>/pyannote/<name>/`; config.yaml refers to its parts as
`$model/<subfolder>`, which pyannote resolves against that directory. Hub access is switched off
before pyannote is imported (HF_HUB_OFFLINE) so a config that names a hub model fails loudly instead of
trying the network, and pyannote's usage telemetry is off (PYANNOTE_METRICS_ENABLED=false).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from engines.diarization.refine import renumber
from engines.types import (
    SAMPLE_RATE,
    DiarizationRequest,
    DiarizationResult,
    EngineError,
    ModelMissingError,
    ProgressFn,
)

# pyannote's hook reports these steps in this order; each gets a share of the progress bar.
_STEPS = {
    "segmentation": (0.0, 0.4),
    "speaker_counting": (0.4, 0.45),
    "embeddings": (0.45, 0.9),
    "discrete_diarization": (0.9, 1.0),
}


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["PYANNOTE_METRICS_ENABLED"] = "false"


class PyannoteDiarizer:
    engine = "pyannote"

    def __init__(self, pipeline_dir: str | Path, device: str = "cpu") -> None:
        _offline()
        import torch
        from pyannote.audio import Pipeline

        path = Path(pipeline_dir)
        if not (path / "config.yaml").is_file():
            raise ModelMissingError(f"pyannote pipeline not found: expected {path}/config.yaml")
        self.model = path.name
        try:
            pipeline = Pipeline.from_pretrained(path)
        except Exception as e:  # a hub name in config.yaml, a missing checkpoint, a version mismatch
            raise ModelMissingError(f"cannot load the pyannote pipeline in {path}: {e}") from e
        if pipeline is None:
            raise ModelMissingError(f"cannot load the pyannote pipeline in {path}")
        self.device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
        pipeline.to(torch.device(self.device))
        self._pipeline = pipeline
        self._torch = torch
        self._lock = threading.Lock()  # a pipeline keeps per-call state (hook, inference caches)

    def diarize(self, request: DiarizationRequest, progress: ProgressFn | None = None) -> DiarizationResult:
        audio = np.asarray(request.audio, dtype=np.float32)
        if audio.ndim != 1:
            raise EngineError("diarization expects mono audio")
        if audio.size == 0 or float(np.max(np.abs(audio))) < 1e-4:
            # Digital silence has no speakers; an untrained or badly tuned pipeline could still invent some.
            return DiarizationResult(turns=(), num_speakers=0)
        report = progress or (lambda _f: None)
        kwargs: dict[str, Any] = {}
        if request.num_speakers is not None:
            kwargs["num_speakers"] = request.num_speakers
        else:
            if request.min_speakers is not None:
                kwargs["min_speakers"] = request.min_speakers
            if request.max_speakers is not None:
                kwargs["max_speakers"] = request.max_speakers
        waveform = self._torch.from_numpy(np.ascontiguousarray(audio))[None]
        with self._lock:
            output = self._pipeline(
                {"waveform": waveform, "sample_rate": SAMPLE_RATE}, hook=_Hook(report), **kwargs
            )
        annotation: Any = getattr(output, "speaker_diarization", output)  # 4.x DiarizeOutput; 3.x Annotation
        labels: dict[str, int] = {}
        turns = []
        for segment, _track, label in annotation.itertracks(yield_label=True):
            turns.append(
                (float(segment.start), float(segment.end), labels.setdefault(str(label), len(labels)))
            )
        result = renumber(turns)
        report(1.0)
        return DiarizationResult(turns=tuple(result), num_speakers=len({t.speaker for t in result}))


class _Hook:
    """pyannote calls hook(step_name, step_artifact, file=..., total=..., completed=...)."""

    def __init__(self, report: ProgressFn) -> None:
        self._report = report

    def __call__(
        self,
        step: str,
        _artifact: Any,
        file: Any = None,
        total: int | None = None,
        completed: int | None = None,
        **_kw: Any,
    ) -> None:
        lo, hi = _STEPS.get(step, (None, None))
        if lo is None or hi is None:
            return
        frac = completed / total if total and completed is not None else 1.0
        self._report(lo + (hi - lo) * min(1.0, max(0.0, frac)))
