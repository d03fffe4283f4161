"""Warm-up at start: load the default models and run each once, so the first request does not pay for it.

On CUDA the first call of a model compiles its kernels (15 s for Whisper base on an H200); on a CPU the
first load reads hundreds of MB. /healthz answers 503 `starting` until this is done, so a load balancer or
an orchestrator sends traffic only to a ready node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from engines.types import SAMPLE_RATE, ModelProvider, TtsRequest
from server.engine_specs import parse_spec
from server.settings import Settings

log = logging.getLogger("speech7.warmup")


@dataclass
class Readiness:
    ready: bool = False
    seconds: float = 0.0  # how long the warm-up took
    errors: list[str] = field(default_factory=list)  # models that could not be warmed (the server still runs)


def _warm(models: ModelProvider, settings: Settings, readiness: Readiness) -> None:
    engine, model = parse_spec(settings.default_stt)
    if engine == "whisper" and model:
        try:
            stt = models.stt(model)
            # Low noise, not silence: the decoder must run (VAD would skip silence), which compiles kernels.
            noise = (np.random.default_rng(0).standard_normal(2 * SAMPLE_RATE) * 1e-3).astype(np.float32)
            submit_window = getattr(stt, "submit_window", None)  # a realtime window: fills every decode path
            if callable(submit_window):
                submit_window(noise).result()
        except Exception as exc:  # a missing default model must not keep the server from serving others
            readiness.errors.append(f"{settings.default_stt}: {exc}")
    engine, voice = parse_spec(settings.default_tts)
    if engine == "piper" and voice:
        try:
            for _ in models.tts(voice).synthesize(TtsRequest("Ready.")):
                pass
        except Exception as exc:
            readiness.errors.append(f"{settings.default_tts}: {exc}")


async def warm_up(models: ModelProvider, settings: Settings, readiness: Readiness) -> None:
    began = time.perf_counter()
    await asyncio.to_thread(_warm, models, settings, readiness)
    readiness.seconds = time.perf_counter() - began
    readiness.ready = True
    for err in readiness.errors:
        log.warning("warm-up: %s", err)
    log.info("warm-up done in %.1f s", readiness.seconds)
