"""Provider keys become engine selection. The one place that parses `sttApiKey` / `ttsApiKey`.

The hosted Speech7 API stores an account's keys for its STT and TTS providers; here every model runs locally,
so a provider key says which local engine serves the account:

* a value naming a local engine (`whisper:base`, `piper:en_US-joe-medium`, or a bare installed model name
  such as `tiny.en`) selects it;
* any other non-empty value (a key for a hosted provider, e.g. the reference's `"your-stt-provider-key"`)
  marks the capability configured and uses the server's default engine;
* `""` or `off` means not configured (requests are refused with 403);
* absent (NULL, never set) means the server's default engine.

What an account stores is the outcome, never a foreign secret: a local spec, `off`, or `provider-key:` plus the
masked key (`mask`), which is also all that is ever shown back. A value that names a local engine which is not
installed (or the other capability's engine) is refused, so a typo does not fall through to the default.

The functions are pure (the installed models are passed in); `EngineSpecs` is the typed entry point the server
uses, holding the defaults from the settings and asking the catalog what is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from models.catalog import Catalog

OFF = "off"
FOREIGN = "provider-key:"  # stored prefix of a hosted provider's key (only its mask follows)
MAX_PROVIDER_KEY_CHARS = 4096  # what an admin may send; the stored form is short
# Which local engine serves which capability; a provider key naming the other one is a mistake worth a 400.
ENGINES = {"stt": "whisper", "tts": "piper"}
WHAT = {"stt": "STT", "tts": "TTS"}


@dataclass(frozen=True)
class Selection:
    configured: bool
    engine: str = ""
    model: str = ""
    # "account": the account's provider key names this engine; "default": the server's default serves it
    # (no provider key, or a key for a hosted provider).
    source: str = "account"

    @property
    def spec(self) -> str:
        return f"{self.engine}:{self.model}" if self.configured else OFF


class SpecError(ValueError):
    pass


def parse_spec(value: str) -> tuple[str, str]:
    v = value.strip()
    if ":" not in v:
        return v.lower(), ""
    engine, model = v.split(":", 1)
    return engine.strip().lower(), model.strip()


def mask(value: str) -> str:
    """What may be shown of a foreign provider key: its first 4 characters when that leaves most of it
    hidden, nothing of a short one."""
    return value[:4] + "…" if len(value) >= 12 else "…"


def is_off(stored: str | None) -> bool:
    return stored is not None and stored.strip().lower() == OFF


def to_store(kind: str, value: str | None, installed: Sequence[str]) -> str | None:
    """The stored form of a provider key an admin sent (kind: stt | tts), or SpecError for a value that names
    a local engine this server cannot serve it with."""
    if value is None:
        return None
    v = value.strip()
    if v == "" or v.lower() == OFF:
        return OFF
    engine, model = parse_spec(v)
    mine = ENGINES[kind]
    if engine in ENGINES.values():
        if engine != mine:
            raise SpecError(f"{engine} does not serve {WHAT[kind]}: use {mine}:<model> (or 'off')")
        if not model:
            raise SpecError(f"{v!r} names no model: use {mine}:<model>, installed: {', '.join(installed) or 'none'}")
        _require_installed(kind, model, installed)
        return f"{mine}:{model}"
    if v in installed:  # a bare model name; each capability looks only at its own engine's models
        return f"{mine}:{v}"
    return FOREIGN + mask(v)


def display(stored: str | None) -> str | None:
    """What GET /accounts, GET /account and PATCH responses show: the spec, `off`, the masked foreign key."""
    if stored is not None and stored.startswith(FOREIGN):
        return stored[len(FOREIGN):]
    return stored


def resolve(stored: str | None, default: str, kind: str, installed: Sequence[str]) -> Selection:
    """The selection that serves an account's stored provider key (or SpecError when its model is gone)."""
    if stored is None or stored.startswith(FOREIGN):
        if is_off(default):
            return Selection(False, source="default")
        sel = _local(default, kind, installed)
        return Selection(True, sel.engine, sel.model, source="default")
    if is_off(stored):
        return Selection(False)
    return _local(stored, kind, installed)


def _local(spec: str, kind: str, installed: Sequence[str]) -> Selection:
    engine, model = parse_spec(spec)
    if engine != ENGINES[kind]:
        raise SpecError(f"unknown {WHAT[kind]} engine {engine!r}: use {ENGINES[kind]}:<model> (or 'off')")
    _require_installed(kind, model, installed)
    return Selection(True, engine, model)


def _require_installed(kind: str, model: str, installed: Sequence[str]) -> None:
    if model not in installed:
        raise SpecError(
            f"{WHAT[kind]} model {model!r} is not installed (installed: {', '.join(installed) or 'none'}); "
            "add it with scripts/models import"
        )


class EngineSpecs:
    """Parses account provider keys against the server's defaults and the models installed right now."""

    def __init__(self, catalog: Catalog, *, default_stt: str, default_tts: str) -> None:
        self._catalog = catalog
        self._default_stt = default_stt
        self._default_tts = default_tts

    def _installed(self, kind: str) -> list[str]:
        return self._catalog.whisper_models() if kind == "stt" else self._catalog.piper_voices()

    def stt(self, stored: str | None) -> Selection:
        return resolve(stored, self._default_stt, "stt", self._installed("stt"))

    def tts(self, stored: str | None) -> Selection:
        return resolve(stored, self._default_tts, "tts", self._installed("tts"))

    def voice(self, name: str) -> Selection:
        """A voice a request names instead of the account's (POST /tts `voice`)."""
        return _local(f"piper:{name}", "tts", self._installed("tts"))

    def to_store(self, kind: str, value: str | None) -> str | None:
        """What to store for a provider key an admin sent (kind: stt | tts); SpecError for a local engine
        this server does not have."""
        return to_store(kind, value, self._installed(kind))
