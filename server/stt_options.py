"""Parsing the options that /stt, /subtitle, subtitle jobs and realtime share: language hints, task,
diarization and its speaker labels, and the dictionaries merged into the provider context."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from server.errors import bad_request

LANG_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")
LABEL_RE = re.compile(r"^speaker(\d{1,2})Label$")


@dataclass(frozen=True)
class SttOptions:
    language_hints: tuple[str, ...] = ()  # preferred languages; detection still runs
    language: str | None = None  # forced: decode in this language without detection
    task: str = "transcribe"
    diarize: bool = False
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    speaker_labels: Mapping[int, str] = field(default_factory=dict)  # 1-based speaker number -> label
    terms: tuple[str, ...] = ()
    translation_terms: tuple[tuple[str, str], ...] = ()
    context: Mapping[str, Any] = field(default_factory=dict)
    word_timestamps: bool = False
    model: str | None = None  # an installed Whisper model chosen per request; None: the account's engine
    prompt: str = ""  # Whisper's initial prompt (the OpenAI API's `prompt`): text the audio continues

    def to_json(self) -> str:
        return json.dumps(
            {
                "language_hints": list(self.language_hints), "language": self.language, "task": self.task,
                "diarize": self.diarize,
                "num_speakers": self.num_speakers, "min_speakers": self.min_speakers, "max_speakers": self.max_speakers,
                "speaker_labels": {str(k): v for k, v in self.speaker_labels.items()}, "terms": list(self.terms),
                "translation_terms": [list(p) for p in self.translation_terms], "context": dict(self.context),
                "word_timestamps": self.word_timestamps, "model": self.model, "prompt": self.prompt,
            }
        )

    @classmethod
    def from_json(cls, raw: str) -> SttOptions:
        d = json.loads(raw)
        return cls(
            language_hints=tuple(d["language_hints"]), language=d.get("language"), task=d["task"], diarize=d["diarize"],
            num_speakers=d["num_speakers"], min_speakers=d["min_speakers"], max_speakers=d["max_speakers"],
            speaker_labels={int(k): v for k, v in d["speaker_labels"].items()}, terms=tuple(d["terms"]),
            translation_terms=tuple((a, b) for a, b in d["translation_terms"]), context=d["context"],
            # Jobs stored before `model` and `prompt` existed lack them.
            word_timestamps=d["word_timestamps"], model=d.get("model"), prompt=d.get("prompt", ""),
        )


def parse_bool(value: Any, name: str, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in {"true", "1", "yes", "on"}:
        return True
    if v in {"false", "0", "no", "off"}:
        return False
    raise bad_request(f"{name} must be true or false")


def parse_int(value: Any, name: str, lo: int, hi: int) -> int | None:
    if value is None or value == "":
        return None
    try:
        v = int(str(value).strip())
    except ValueError:
        raise bad_request(f"{name} must be an integer") from None
    if not lo <= v <= hi:
        raise bad_request(f"{name} must be between {lo} and {hi}")
    return v


def parse_language_hints(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    items: list[Any]
    if isinstance(value, list):
        items = value
    else:
        s = str(value).strip()
        if s.startswith("["):
            try:
                items = json.loads(s)
            except (ValueError, RecursionError):
                raise bad_request("languageHints is not valid JSON") from None
            if not isinstance(items, list):
                raise bad_request("languageHints must be a list of language codes")
        else:
            items = [x for x in re.split(r"[,;\s]+", s) if x]
    out: list[str] = []
    for it in items:
        code = str(it).strip().lower()
        if not LANG_RE.match(code):
            raise bad_request(f"not a language code: {it!r} (use ISO 639-1 codes such as en, de, sl)")
        code = code.split("-")[0]
        if code not in out:
            out.append(code)
    return tuple(out)


def parse_model(value: Any) -> str | None:
    """`base` or `whisper:base`; whether it is installed is the capabilities' check, at request time."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or len(value) > 100:
        raise bad_request("model must be the name of an installed Whisper model, such as base")
    engine, sep, name = value.strip().partition(":")
    if sep and engine.lower() != "whisper":
        raise bad_request(f"model {value!r}: only whisper models serve speech-to-text here")
    return (name if sep else engine).strip() or None


def parse_stt_options(fields: Mapping[str, Any]) -> SttOptions:
    """Accepts the spec's camelCase names (and the realtime config's snake_case ones)."""
    from engines.terms import TermsError, build_context

    hints = parse_language_hints(fields.get("languageHints", fields.get("language_hints")))
    # `language` forces one language (no detection); hints only say which languages to prefer.
    forced = parse_language_hints(fields.get("language"))
    if len(forced) > 1:
        raise bad_request("language must be one language code (use languageHints for several)")
    task = str(fields.get("task") or "transcribe").strip().lower()
    if task not in {"transcribe", "translate"}:
        raise bad_request("task must be 'transcribe' or 'translate'")
    diarize = parse_bool(
        fields.get("enableSpeakerDiarization", fields.get("enable_speaker_diarization")), "enableSpeakerDiarization"
    )
    labels: dict[int, str] = {}
    for k, v in fields.items():
        m = LABEL_RE.match(k)
        if m and str(v).strip():
            n = int(m.group(1))
            if n < 1:
                raise bad_request(f"{k}: speakers are numbered from 1")
            labels[n] = str(v).strip()[:100]
    num = parse_int(fields.get("numSpeakers"), "numSpeakers", 1, 20)
    lo = parse_int(fields.get("minSpeakers"), "minSpeakers", 1, 20)
    hi = parse_int(fields.get("maxSpeakers"), "maxSpeakers", 1, 20)
    if lo is not None and hi is not None and lo > hi:
        raise bad_request("minSpeakers must not exceed maxSpeakers")
    try:
        context = build_context(fields)
    except TermsError as exc:
        raise bad_request(str(exc), code="bad_dictionary") from None
    terms = tuple(context.get("terms") or ())
    pairs = tuple((p["source"], p["target"]) for p in context.get("translation_terms") or ())
    return SttOptions(
        language_hints=hints, language=forced[0] if forced else None, task=task, diarize=diarize,
        num_speakers=num, min_speakers=lo, max_speakers=hi,
        speaker_labels=labels, terms=terms, translation_terms=pairs, context=context,
        word_timestamps=parse_bool(fields.get("wordTimestamps"), "wordTimestamps"),
        model=parse_model(fields.get("model")),
    )


def speaker_label(labels: Mapping[int, str], speaker: int | None) -> str | None:
    """Speaker index 0 is the first voice heard: `speaker1Label` names it."""
    if speaker is None:
        return None
    return labels.get(speaker + 1) or f"Speaker {speaker + 1}"
