"""A transcript in the OpenAI response formats: json, text, srt, vtt, verbose_json.

SRT and WebVTT come from the server's subtitle renderer (the same cues /subtitle writes). verbose_json's
segment fields that Whisper-the-service reports but this engine does not track are filled honestly:
`temperature` is the one decoding used (0: beam search, no temperature fallback), `avg_logprob` is the mean
log-probability of the segment's words, `compression_ratio` is computed from the text as Whisper defines it,
`no_speech_prob` is 0 because windows judged silent are dropped before they become segments, `tokens` is
empty and `seek` is the segment's start in 10 ms frames.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse, Response

from server.subtitle_render import SubtitleFormat, render
from server.transcript_feed import transcript_text
from server.transcription import Transcript

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


def _usage(t: Transcript) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(t.duration_s)}


def _compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return round(len(raw) / len(zlib.compress(raw)), 4) if raw else 0.0


def verbose_json(t: Transcript, task: str, *, segments: bool, words: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "task": task,
        "language": t.result.language,
        "duration": round(t.duration_s, 3),
        "text": transcript_text(t),
    }
    if segments:
        out["segments"] = [
            {
                "id": i, "seek": int(round(e.start * 100)), "start": round(e.start, 3), "end": round(e.end, 3),
                "text": e.text, "tokens": [], "temperature": 0.0,
                "avg_logprob": round(
                    sum(math.log(max(w.probability, 1e-6)) for w in e.words) / len(e.words), 4
                ) if e.words else 0.0,
                "compression_ratio": _compression_ratio(e.text), "no_speech_prob": 0.0,
            }
            for i, e in enumerate(t.entries)
        ]
    if words:
        out["words"] = [
            {"word": w.text.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
            for e in t.entries for w in e.words if w.text.strip()
        ]
    out["usage"] = _usage(t)
    return out


def render_response(t: Transcript, fmt: str, task: str, granularities: tuple[str, ...]) -> Response:
    if fmt == "text":
        return PlainTextResponse(transcript_text(t) + "\n")
    if fmt in {"srt", "vtt"}:
        sub = SubtitleFormat(fmt=fmt)
        return PlainTextResponse(render(t, sub, {}, False), media_type=sub.media_type)
    if fmt == "verbose_json":
        # OpenAI's default granularity is the segment; words only when asked for.
        segments = not granularities or "segment" in granularities
        return JSONResponse(verbose_json(t, task, segments=segments, words="word" in granularities))
    return JSONResponse({"text": transcript_text(t), "usage": _usage(t)})
