"""Model lifetime: the manager is built in the app's lifespan, loads each model lazily on first use, shares
one loaded instance between all requests and accounts, and closes them at shutdown. No module globals.

Loading runs in a worker thread (it takes seconds) and is guarded per model so concurrent first requests
wait for one load instead of starting several.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.types import (
    Diarizer,
    ModelMissingError,
    SpeakerEncoder,
    StageFn,
    SttEngine,
    Translator,
    TtsEngine,
)

log = logging.getLogger("speech7.models")


@dataclass(frozen=True)
class EngineConfig:
    models_dir: Path
    device: str  # resolved: cpu | cuda
    compute_type: str = ""
    cpu_threads: int = 0
    max_batch_size: int = 0
    batch_window_ms: float = 10.0
    device_index: tuple[int, ...] = (0,)
    diarizer: str = "builtin"  # builtin | pyannote:<name> | off
    stt_workers_per_device: int = 0  # 0: 3 on CUDA, 2 on CPU (see stt_replicas)
    on_stage: StageFn | None = None  # per-stage timings for the server's metrics


def ct2_threads(configured: int, cores: int) -> int:
    """CTranslate2 threads per model call on the CPU: `configured` (S7_CPU_THREADS), else the cores this
    process may use, at most 4. CTranslate2's own default is 4 OpenMP threads whatever the machine: on 2 cores
    they contend with the request threads and front-end processes (realtime p95 final lag, 4 tiny.en streams
    on 2 cores: 1.60-1.84 s with 4 threads, 1.49-1.74 s with 2; bench_realtime --streams 4)."""
    return configured if configured > 0 else max(1, min(4, cores))


def stt_replicas(configured: int, device: str) -> int:
    """Whisper replicas per device (S7_STT_WORKERS_PER_DEVICE), each fed by its own batch worker; a request
    goes to the least busy one. 0: 3 on CUDA, where one batch's CPU side overlaps another's kernels; 2 on a
    CPU, where a batch of a long file takes seconds and cannot be interrupted, so a second replica lets a short
    request or a live stream run beside it instead of after it (CTranslate2 shares the weights between
    replicas). Measured on 2 cores with tiny.en: a 5 s /stt while a 30-minute /stt runs takes 8.6 s with one
    replica, 0.60 s with two (0.50 s idle; bench_fairness, medians); realtime p95 final lag at 4 streams 1.69
    -> 1.02 s (bench_realtime); one request alone unchanged, 4 at once 14 % faster (bench_stt)."""
    return configured if configured > 0 else (3 if device == "cuda" else 2)


def cuda_available() -> bool:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except Exception:  # no CUDA runtime at all
        return False


class ModelManager:
    """The production `engines.types.ModelProvider`."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._models: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # ------------------------------------------------------------------ generic lazy loading
    def _get(self, key: str, factory: Callable[[], Any]) -> Any:
        model = self._models.get(key)
        if model is not None:
            return model
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            model = self._models.get(key)
            if model is None:
                log.info("loading %s on %s", key, self.config.device)
                model = factory()
                self._models[key] = model
        return model

    def loaded(self) -> dict[str, str]:
        """key -> device, for /healthz."""
        return {k: getattr(m, "device", self.config.device) for k, m in self._models.items()}

    def instances(self) -> dict[str, Any]:
        return dict(self._models)

    # ------------------------------------------------------------------ capabilities
    def stt(self, model: str) -> SttEngine:
        def load() -> SttEngine:
            from engines.frontend import usable_cores
            from engines.whisper import WhisperEngine

            d = self.config.models_dir / "whisper" / model
            if not (d / "model.bin").is_file():
                raise ModelMissingError(
                    f"Whisper model {model!r} is not installed in {d.parent}: copy a faster-whisper CTranslate2 "
                    "directory there with scripts/models import whisper PATH --name NAME"
                )
            return WhisperEngine(
                d, model_name=model, device=self.config.device, compute_type=self.config.compute_type or None,
                cpu_threads=ct2_threads(self.config.cpu_threads, usable_cores()), device_index=self.config.device_index,
                max_batch_size=self.config.max_batch_size or None, batch_window_ms=self.config.batch_window_ms,
                workers_per_device=stt_replicas(self.config.stt_workers_per_device, self.config.device),
                on_stage=self.config.on_stage,
            )

        return self._get(f"whisper:{model}", load)

    def tts(self, voice: str) -> TtsEngine:
        def load() -> TtsEngine:
            from engines.piper_tts import PiperEngine

            onnx = self.config.models_dir / "piper" / f"{voice}.onnx"
            cfg = onnx.with_name(onnx.name + ".json")
            if not onnx.is_file() or not cfg.is_file():
                raise ModelMissingError(
                    f"Piper voice {voice!r} is not installed: put {voice}.onnx and {voice}.onnx.json in {onnx.parent}"
                )
            return PiperEngine(onnx, cfg, voice_name=voice, device=self.config.device)

        return self._get(f"piper:{voice}", load)

    def diarizer(self) -> Diarizer:
        spec = self.config.diarizer

        def load() -> Diarizer:
            if spec.startswith("pyannote"):
                from engines.diarization.pyannote_engine import PyannoteDiarizer

                name = spec.split(":", 1)[1] if ":" in spec else ""
                d = self.config.models_dir / "pyannote" / name
                if not name or not (d / "config.yaml").is_file():
                    raise ModelMissingError(f"pyannote pipeline {name!r} not found: expected {d}/config.yaml")
                return PyannoteDiarizer(d, device=self.config.device)
            from engines.diarization.builtin import BuiltinDiarizer

            return BuiltinDiarizer.from_models_dir(self.config.models_dir, device=self.config.device)

        return self._get(f"diarizer:{spec}", load)

    def speaker_encoder(self) -> SpeakerEncoder:
        """The GE2E encoder on its own: realtime sessions label speakers with it whatever diarizer serves files."""

        def load() -> SpeakerEncoder:
            from engines.diarization.ge2e import Ge2eEncoder

            return Ge2eEncoder(self.config.models_dir / "ge2e" / "pretrained.pt", device=self.config.device)

        return self._get("ge2e", load)

    def translator(self) -> Translator:
        def load() -> Translator:
            from engines.frontend import usable_cores
            from engines.translation import Ct2Translator

            return Ct2Translator(self.config.models_dir / "translation", device=self.config.device,
                                 intra_threads=ct2_threads(self.config.cpu_threads, usable_cores()))

        return self._get("translation:ct2", load)

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        for key, model in list(self._models.items()):
            closer = getattr(model, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception:  # shutdown must go on
                    log.exception("closing %s failed", key)
        self._models.clear()
