"""Prometheus text-format metrics: request counts and latency per route, audio seconds processed, and the
engines' own gauges (batch queue depth, batch sizes), rendered on GET /metrics."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# Pipeline stages are shorter than requests: a batch or a 30 s decode takes milliseconds on a GPU.
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
# Where a request's time goes (issue: which stage starves the GPU must be visible in production).
STAGES = ("upload", "decode", "vad", "queue_wait", "encode_generate", "align", "diarization", "tts_synthesis")


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.latency_count: dict[tuple[str, str], int] = defaultdict(int)
        self.latency_buckets: dict[tuple[str, str, float], int] = defaultdict(int)
        self.audio_seconds: dict[str, float] = defaultdict(float)
        self.stage_sum: dict[str, float] = defaultdict(float)
        self.stage_count: dict[str, int] = defaultdict(int)
        self.stage_buckets: dict[tuple[str, float], int] = defaultdict(int)
        self._sources: list[Callable[[], Iterable[str]]] = []

    def add_source(self, lines: Callable[[], Iterable[str]]) -> None:
        """A service's own lines (the realtime sessions' gauges), rendered with the rest; called on the loop."""
        self._sources.append(lines)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """One timing of a pipeline stage (engines call this from any thread, through a StageFn)."""
        with self._lock:
            self.stage_sum[stage] += seconds
            self.stage_count[stage] += 1
            for b in STAGE_BUCKETS:
                if seconds <= b:
                    self.stage_buckets[(stage, b)] += 1

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            self.latency_sum[(method, route)] += seconds
            self.latency_count[(method, route)] += 1
            for b in LATENCY_BUCKETS:
                if seconds <= b:
                    self.latency_buckets[(method, route, b)] += 1

    def add_audio(self, kind: str, seconds: float) -> None:
        with self._lock:
            self.audio_seconds[kind] += seconds

    def render(self, engines: dict[str, Any], jobs: dict[str, int] | None = None) -> str:
        lines: list[str] = []
        with self._lock:
            lines += ["# HELP s7_requests_total HTTP requests by route and status", "# TYPE s7_requests_total counter"]
            for (m, r, s), n in sorted(self.requests.items()):
                lines.append(f's7_requests_total{{method="{m}",route="{r}",status="{s}"}} {n}')
            lines += ["# HELP s7_request_seconds Request latency", "# TYPE s7_request_seconds histogram"]
            for (m, r), count in sorted(self.latency_count.items()):
                for b in LATENCY_BUCKETS:
                    n = self.latency_buckets.get((m, r, b), 0)
                    lines.append(f's7_request_seconds_bucket{{method="{m}",route="{r}",le="{b}"}} {n}')
                lines.append(f's7_request_seconds_bucket{{method="{m}",route="{r}",le="+Inf"}} {count}')
                lines.append(f's7_request_seconds_sum{{method="{m}",route="{r}"}} {self.latency_sum[(m, r)]:.6f}')
                lines.append(f's7_request_seconds_count{{method="{m}",route="{r}"}} {count}')
            lines += ["# HELP s7_stage_seconds Time per pipeline stage (upload, decode, vad, queue_wait, "
                      "encode_generate, align, diarization, tts_synthesis)", "# TYPE s7_stage_seconds histogram"]
            for stage in sorted(set(STAGES) | set(self.stage_count)):
                count = self.stage_count.get(stage, 0)
                for b in STAGE_BUCKETS:
                    n = self.stage_buckets.get((stage, b), 0)
                    lines.append(f's7_stage_seconds_bucket{{stage="{stage}",le="{b}"}} {n}')
                lines.append(f's7_stage_seconds_bucket{{stage="{stage}",le="+Inf"}} {count}')
                lines.append(f's7_stage_seconds_sum{{stage="{stage}"}} {self.stage_sum.get(stage, 0.0):.6f}')
                lines.append(f's7_stage_seconds_count{{stage="{stage}"}} {count}')
            lines += ["# HELP s7_audio_seconds_total Audio processed, by kind", "# TYPE s7_audio_seconds_total counter"]
            for kind, secs in sorted(self.audio_seconds.items()):
                lines.append(f's7_audio_seconds_total{{kind="{kind}"}} {secs:.3f}')
        lines += list(_engine_lines(engines))
        for source in self._sources:
            lines += list(source())
        if jobs is not None:
            lines += ["# HELP s7_subtitle_jobs Subtitle jobs by status", "# TYPE s7_subtitle_jobs gauge"]
            for status, n in sorted(jobs.items()):
                lines.append(f's7_subtitle_jobs{{status="{status}"}} {n}')
        lines += list(_gpu_lines())
        return "\n".join(lines) + "\n"


def _engine_lines(engines: dict[str, Any]) -> Iterable[str]:
    yield "# HELP s7_model_loaded Loaded models"
    yield "# TYPE s7_model_loaded gauge"
    for key, eng in sorted(engines.items()):
        yield f's7_model_loaded{{model="{key}",device="{getattr(eng, "device", "")}"}} 1'
    for key, eng in sorted(engines.items()):
        stats_fn = getattr(eng, "batch_stats", None)
        if not callable(stats_fn):
            continue
        stats = stats_fn()
        if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
            stats = {**dataclasses.asdict(stats), "mean_size": getattr(stats, "mean_batch_size", 0.0)}
        for name, value in sorted(stats.items()):
            if isinstance(value, dict):  # e.g. batch size histogram
                for label, n in sorted(value.items()):
                    yield f's7_batch_{name}{{model="{key}",size="{label}"}} {n}'
            elif isinstance(value, (int, float)):
                yield f's7_batch_{name}{{model="{key}"}} {value}'


def _gpu_lines() -> Iterable[str]:
    # NVML sees every allocation on the device (CTranslate2's and onnxruntime's too, which torch's
    # allocator counters miss), so it is asked first; torch is the fallback when NVML is absent.
    nvml = _nvml_readings()
    used = [u for u, _ in nvml] if nvml is not None else _torch_allocated_bytes()
    if not used:
        return
    yield "# HELP s7_gpu_memory_used_bytes GPU memory in use per device"
    yield "# TYPE s7_gpu_memory_used_bytes gauge"
    for i, n in enumerate(used):
        yield f's7_gpu_memory_used_bytes{{device="{i}"}} {n}'
    if nvml is not None:
        yield "# HELP s7_gpu_utilization_ratio Share of the last sample period the GPU ran kernels (NVML)"
        yield "# TYPE s7_gpu_utilization_ratio gauge"
        for i, (_, util) in enumerate(nvml):
            yield f's7_gpu_utilization_ratio{{device="{i}"}} {util / 100:.2f}'


def _nvml_readings() -> list[tuple[int, int]] | None:
    """(memory used in bytes, utilisation in %) per device, from the driver's NVML; None without one."""
    import ctypes

    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None

    class MemoryInfo(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

    class Utilization(ctypes.Structure):
        _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]

    try:
        if nvml.nvmlInit_v2() != 0:
            return None
        count = ctypes.c_uint()
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return None
        out = []
        for i in range(count.value):
            handle = ctypes.c_void_p()
            info = MemoryInfo()
            util = Utilization()
            if nvml.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)) != 0:
                return None
            if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(info)) != 0:
                return None
            busy = util.gpu if nvml.nvmlDeviceGetUtilizationRates(handle, ctypes.byref(util)) == 0 else 0
            out.append((int(info.used), int(busy)))
        return out
    except AttributeError:
        return None


def _torch_allocated_bytes() -> list[int] | None:
    import sys

    torch = sys.modules.get("torch")  # only when something already imported torch: never import it for this
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        return [int(torch.cuda.memory_allocated(i)) for i in range(torch.cuda.device_count())]
    except Exception:
        return None


class MetricsMiddleware:
    """Pure ASGI so streaming responses are timed to their last byte and WebSockets pass through."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], path, status["code"], time.perf_counter() - start)
