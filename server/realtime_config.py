"""The realtime WebSocket's first message: parsing and validating the session config (Soniox-shaped)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engines.types import MAX_ENDPOINT_DELAY_MS
from server.errors import ApiError
from server.stt_options import SttOptions, parse_bool, parse_language_hints, parse_stt_options

AUDIO_FORMATS = ("auto", "pcm_s16le", "pcm_f32le")


class ConfigError(ApiError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(status, "bad_config", message)


@dataclass(frozen=True)
class RealtimeConfig:
    audio_format: str
    sample_rate: int | None
    num_channels: int | None
    stt: SttOptions
    language_identification: bool
    endpoint_detection: bool
    language_a: str | None
    language_b: str | None
    # Soniox's bound on the time from the end of speech to its endpoint (MAX_ENDPOINT_DELAY_MS); None: default.
    max_endpoint_delay_ms: int | None = None

    @property
    def two_way(self) -> bool:
        return bool(self.language_a and self.language_b)

    @property
    def stream_hints(self) -> tuple[str, ...]:
        """Languages the stream prefers: the hints, and with two-way translation A and B too (so English
        speech in an en/sl session hinted only ["sl"] is still read as English, pane A)."""
        extra = (self.language_a, self.language_b) if self.two_way else ()
        return tuple(dict.fromkeys(h for h in (*self.stt.language_hints, *extra) if h))


def parse_config(raw: Any) -> RealtimeConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError("the first message must be a JSON object with the session config")
    fmt = str(raw.get("audio_format") or "auto").strip().lower()
    if fmt not in AUDIO_FORMATS:
        raise ConfigError(f"audio_format must be one of {', '.join(AUDIO_FORMATS)}")
    sr = raw.get("sample_rate")
    ch = raw.get("num_channels")
    if fmt.startswith("pcm"):
        if not isinstance(sr, int) or isinstance(sr, bool) or not 8000 <= sr <= 192000:
            raise ConfigError("raw PCM needs sample_rate (an integer, 8000-192000)")
        if ch is None:
            ch = 1
        if not isinstance(ch, int) or isinstance(ch, bool) or not 1 <= ch <= 8:
            raise ConfigError("num_channels must be an integer 1-8")
    try:
        stt = parse_stt_options({k: v for k, v in raw.items() if not isinstance(v, (dict, list)) or k in _LISTY})
    except ApiError as exc:
        raise ConfigError(exc.message) from None
    a = _lang(raw.get("languageA", raw.get("language_a")), "languageA")
    b = _lang(raw.get("languageB", raw.get("language_b")), "languageB")
    if (a is None) != (b is None):
        raise ConfigError("two-way translation needs both languageA and languageB (or neither)")
    if a is not None and a == b:
        raise ConfigError("languageA and languageB must differ")
    try:
        lid = parse_bool(raw.get("enable_language_identification"), "enable_language_identification")
        ep = parse_bool(raw.get("enable_endpoint_detection"), "enable_endpoint_detection")
        # Accepted for older clients and ignored: a pair missing one direction is always served now.
        parse_bool(raw.get("allow_missing_directions"), "allow_missing_directions")
    except ApiError as exc:
        raise ConfigError(exc.message) from None
    return RealtimeConfig(fmt, sr if fmt.startswith("pcm") else None, ch if fmt.startswith("pcm") else None, stt,
                          lid or a is not None, ep, a, b, _endpoint_delay(raw.get("max_endpoint_delay_ms")))


def _endpoint_delay(value: Any) -> int | None:
    if value is None:
        return None
    low, high = MAX_ENDPOINT_DELAY_MS
    whole = (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())
    if not whole or not low <= value <= high:
        raise ConfigError(f"max_endpoint_delay_ms must be an integer from {low} to {high} (milliseconds)")
    return int(value)


# Fields whose value may legitimately be a list or an object (dictionaries, hints, context).
_LISTY = {"language_hints", "languageHints", "transcriptionTerms", "customDictionary", "terms", "customTerms",
          "translationTerms", "translationDictionary", "context"}


def _lang(value: Any, name: str) -> str | None:
    if value is None or str(value).strip().lower() in {"", "none", "null"}:
        return None
    try:
        codes = parse_language_hints(str(value))
    except ApiError:
        raise ConfigError(f"{name} must be a language code such as en or de") from None
    if len(codes) != 1:
        raise ConfigError(f"{name} must be one language code")
    return codes[0]


def missing_directions(a: str, b: str, served: Sequence[tuple[str, str]]) -> list[str]:
    """Directions A->B and B->A that nothing serves (the session runs without them). Into English, Whisper's
    translate task always serves."""
    have = {tuple(p) for p in served}
    out = []
    for src, tgt in ((a, b), (b, a)):
        if tgt == "en" or (src, tgt) in have:
            continue
        out.append(f"{src}->{tgt}")
    return out


def decode_interval(setting_s: float, device: str) -> float:
    """Seconds of new audio between a session's re-decodes. A word is final at the first decode that heard
    enough audio after it, so this adds to the final-token lag; a short interval costs more decodes, which a
    GPU absorbs (tens of ms per window) and a CPU less so (a window encoded at its own length costs ~0.15 s
    with tiny.en on two cores). The stream stretches it further under load."""
    if setting_s > 0:
        return setting_s
    return 0.2 if device == "cuda" else 0.3
