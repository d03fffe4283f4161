"""One settings object, read once from the environment (prefix `S7_`) and passed down explicitly.

Nothing else in the project reads `os.environ`: `Settings.from_env()` is called by the CLI entry point
and tests build `Settings(...)` directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from models.catalog import DEFAULT_DATA_DIR, resolve_models_dir


def _parse_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str = ""  # empty: sqlite+aiosqlite:///<data_dir>/speech7.db
    admin_key: str = ""  # empty: a key is generated on first start and printed once
    device: str = "auto"  # auto | cpu | cuda
    models_dir: Path | None = None  # default <data_dir>/models
    default_stt: str = "whisper:base"
    default_tts: str = "piper:en_US-joe-medium"
    default_diarizer: str = "builtin"  # builtin | pyannote:<dir name under models/pyannote> | off
    stt_max_upload_mb: float = 200.0
    subtitle_max_upload_mb: float = 25.0
    # Uploads one account may have in progress at once, per server process (429 beyond; 0: no cap).
    max_uploads_per_account: int = 4
    # A request body (upload or JSON) that sends nothing for this long is dropped with 408 and its file removed.
    upload_idle_timeout_s: float = 60.0
    # A connection must send a request's headers within this long (from connecting, or from the previous
    # response), else it is closed: slow-header clients cannot hold connections (uvicorn has no such limit).
    header_timeout_s: float = 20.0
    tts_max_words: int = 500
    # Billing minimum for TTS (the spec's "min 500 chars / 20 words"): short texts are accepted but billed
    # as at least one quantum; see README.
    compute_type: str = ""  # empty: int8 on CPU, float16 on CUDA
    cpu_threads: int = 0
    max_batch_size: int = 0  # 0: 8 on CPU, 16 on CUDA
    batch_window_ms: float = 10.0
    # Whisper replicas per device, each fed by its own batch worker (0: 3 on CUDA, so batches' CPU sides
    # overlap each other's kernels: measured 1066x -> 1310x at C=64 on an H200 with base; 2 on CPU, so a
    # short request runs beside a long file's batch: engines.manager.stt_replicas).
    stt_workers_per_device: int = 0
    # Processes that decode uploads and run Silero VAD (-1: one per core; 0: threads of the server process).
    frontend_workers: int = -1
    # The longest audio one request may decode to, whatever the account's balance (a small file can decode
    # to hours); longer media is refused after reading this much.
    max_audio_hours: float = 6.0
    device_index: tuple[int, ...] = (0,)
    # Where stored speeches and subtitle job files live: "local" (files under data_dir) or "database" (the
    # blobs tables, so nodes behind a load balancer share them without a common disk). Empty: database with
    # a PostgreSQL database_url, else local.
    blob_store: str = ""
    blob_chunk_kb: int = 1024  # bytes per row of the database store (what one read or write holds in memory)
    # Subtitle jobs run at once per process: a long job does not hold up short ones (the batch queue
    # interleaves their windows).
    job_workers: int = 2
    job_retention_hours: float = 24.0
    job_poll_seconds: float = 1.0
    job_stale_seconds: float = 120.0  # a processing job whose heartbeat is older than this is re-queued
    # Live WS /stt/realtime sessions per process, whatever the load: the hard ceiling (503 before the upgrade).
    realtime_max_sessions: int = 64
    # Live sessions one account may hold per process (429; 0: no cap), so one tenant cannot take every slot.
    realtime_max_sessions_per_account: int = 8
    # Admission by measured load: no new session while the median live session's p95 final-token lag is above
    # this and the STT model is saturated (server/realtime_admission.py); 0 turns it off.
    realtime_max_lag_s: float = 2.0
    # A session that sends no audio (nor {"type": "keepalive"}) for this long is closed (error 408, close 4408).
    realtime_idle_s: float = 20.0
    realtime_decode_interval_s: float = 0.0  # 0: 0.3 s on CPU, 0.2 s on CUDA (see realtime_config)
    # Load and run the default STT model and TTS voice at start; /healthz says 503 "starting" until done.
    warmup: bool = True
    log_level: str = "info"
    # GET /metrics needs `Authorization: Bearer <token>` with this token, or an admin API key; empty: admin only.
    metrics_token: str = ""
    session_secret: str = ""  # empty: random per process (admin web sessions end on restart)
    # Wyoming (Home Assistant's voice protocol), served by this process beside HTTP when a URI is set, e.g.
    # tcp://0.0.0.0:10300. The protocol carries no credentials, so every Wyoming request is billed to the
    # account whose API key is wyoming_api_key; the server refuses to start with a URI and no valid key.
    wyoming_uri: str = ""
    wyoming_api_key: str = ""

    @property
    def resolved_models_dir(self) -> Path:
        return resolve_models_dir(self.models_dir, self.data_dir)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(Path(self.data_dir) / 'speech7.db').resolve()}"

    @property
    def stt_max_upload_bytes(self) -> int:
        return int(self.stt_max_upload_mb * 1024 * 1024)

    @property
    def subtitle_max_upload_bytes(self) -> int:
        return int(self.subtitle_max_upload_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get("S7_" + f.name.upper())
            if raw is None:
                continue
            kwargs[f.name] = _coerce(f.name, raw, getattr(cls, f.name, None) if hasattr(cls, f.name) else None)
        return cls(**kwargs)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _coerce(name: str, raw: str, default: Any) -> Any:
    try:
        if name in {"data_dir", "models_dir"}:
            return Path(raw)
        if name == "device_index":
            return tuple(int(x) for x in raw.replace(" ", "").split(",") if x)
        if isinstance(default, bool):
            return _parse_bool(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return raw
    except ValueError as exc:
        raise ValueError(f"invalid value for S7_{name.upper()}: {raw!r}") from exc


def resolve_device(requested: str, cuda_available: bool) -> str:
    """`auto` means CUDA when a GPU is usable, else CPU; an explicit `cuda` without a GPU is an error."""
    if requested == "auto":
        return "cuda" if cuda_available else "cpu"
    if requested == "cuda" and not cuda_available:
        raise RuntimeError("S7_DEVICE=cuda but no CUDA device is usable by CTranslate2")
    if requested not in {"cpu", "cuda"}:
        raise ValueError(f"S7_DEVICE must be auto, cpu or cuda, not {requested!r}")
    return requested
