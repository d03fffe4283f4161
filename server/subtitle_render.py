"""Transcript -> subtitle file (SRT or WebVTT), and the formatting options' parsing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.errors import bad_request
from server.stt_options import speaker_label
from server.transcription import Transcript


@dataclass(frozen=True)
class SubtitleFormat:
    max_chars_per_line: int = 70
    max_lines: int = 2
    fmt: str = "srt"  # srt | vtt

    @property
    def media_type(self) -> str:
        return "text/vtt; charset=utf-8" if self.fmt == "vtt" else "application/x-subrip; charset=utf-8"

    @property
    def extension(self) -> str:
        return self.fmt


def parse_format(fields: Mapping[str, Any]) -> SubtitleFormat:
    """Out-of-range integers are clamped to the spec's ranges (30-120, 1-4); anything that is not an integer
    ("wide", "1.5") is a 400 rather than a silent truncation."""
    from engines.subtitles import clamp_format_options

    try:
        chars, lines = clamp_format_options(fields.get("maxCharsPerLine"), fields.get("maxLines"))
    except ValueError as exc:
        raise bad_request(str(exc), code="bad_format_option") from None
    fmt = str(fields.get("format") or "srt").strip().lower()
    if fmt not in {"srt", "vtt"}:
        raise bad_request("format must be 'srt' or 'vtt'")
    return SubtitleFormat(chars, lines, fmt)


def render(transcript: Transcript, fmt: SubtitleFormat, labels: Mapping[int, str], diarized: bool) -> str:
    from engines.subtitles import build_cues, to_srt, to_vtt

    words = [w for e in transcript.entries for w in e.words]
    speaker_labels = {s: speaker_label(labels, s) or "" for s in transcript.speakers} if diarized else None
    cues = build_cues(
        words, max_chars_per_line=fmt.max_chars_per_line, max_lines=fmt.max_lines, speaker_labels=speaker_labels
    )
    return to_vtt(cues) if fmt.fmt == "vtt" else to_srt(cues)
