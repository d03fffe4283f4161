"""The transcription service behind /stt, /subtitle and subtitle jobs: decode, reserve minutes, run the
account's STT engine (and the diarizer), post-process with the dictionaries, settle or refund.

`TranscriptionService` does the bookkeeping on the event loop; `SttPipeline` is the blocking part (engine
protocols only), run on an inference thread. The engines batch across requests on their own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from engines.assign import Entry, assign_speakers, build_entries, merge_turns
from engines.types import (
    SAMPLE_RATE,
    DiarizationRequest,
    EngineError,
    ModelProvider,
    SttRequest,
    SttResult,
    Word,
)
from server.accounts import Account
from server.capabilities import Capabilities
from server.engine_errors import api_error
from server.errors import ApiError, payment_required
from server.inference import Inference
from server.metrics import Metrics
from server.minutes import MinutesPool, quantize_minutes
from server.stt_options import SttOptions, speaker_label

log = logging.getLogger("speech7.stt")

Progress = Callable[[float], None]


@dataclass(frozen=True)
class Transcript:
    result: SttResult
    entries: tuple[Entry, ...]
    duration_s: float
    minutes_used: float
    speakers: tuple[int, ...]  # speaker indices in order of first appearance


def decode_media(path: Path) -> np.ndarray:
    """The upload as float32 mono 16 kHz; a MediaError for media without decodable audio (-> 422)."""
    from engines.audio import decode_file

    return decode_file(path)


class TranscriptionService:
    def __init__(
        self, *, minutes: MinutesPool, capabilities: Capabilities, pipeline: SttPipeline, inference: Inference,
        metrics: Metrics,
    ) -> None:
        self.minutes = minutes
        self._capabilities = capabilities
        self._pipeline = pipeline
        self._inference = inference
        self._metrics = metrics

    async def transcribe_file(
        self, account: Account, path: Path, options: SttOptions, *, kind: str, reference: str | None = None,
        progress: Progress | None = None, reservation_id: int | None = None,
    ) -> Transcript:
        selection = self._capabilities.require_stt_options(account, diarize=options.diarize)
        if reservation_id is None and account.minutes <= 0:
            # Decoding a large upload only to refuse it would waste the server's time; reserve() below stays
            # the authoritative check (the balance read at authentication may be stale).
            raise payment_required("Not enough minutes: the account has 0 min left")
        try:
            audio = await asyncio.to_thread(decode_media, path)
        except EngineError as exc:
            raise api_error(exc) from None
        duration = len(audio) / SAMPLE_RATE
        if reservation_id is None:
            reservation = await self.minutes.reserve(account.id, quantize_minutes(duration), kind=kind, reference=reference)
        else:  # subtitle jobs reserve at upload time and settle here
            found = await self.minutes.get(reservation_id)
            if found is None:
                raise ApiError(500, "reservation_missing", "the job's minutes reservation is gone")
            reservation = found
        try:
            transcript = await self._inference.run(self._pipeline.run, selection.model, audio, options, progress)
        except BaseException as exc:
            await self.minutes.refund(reservation, note=f"failed: {type(exc).__name__}")
            if isinstance(exc, EngineError):
                raise api_error(exc) from None
            raise
        charged = await self.minutes.settle(reservation, quantize_minutes(duration), audio_seconds=duration, reference=reference)
        self._metrics.add_audio(kind, duration)
        return replace(transcript, minutes_used=charged)


class SttPipeline:
    """The blocking part of a transcription, through the engine protocols: STT, diarization, dictionaries."""

    def __init__(self, models: ModelProvider) -> None:
        self._models = models

    def run(self, model: str, audio: np.ndarray, options: SttOptions, progress: Progress | None) -> Transcript:
        from engines.terms import correct_terms, correct_timed_words, translated_timed_words

        engine = self._models.stt(model)
        stt_share = 0.75 if options.diarize else 1.0

        def stt_progress(f: float) -> None:
            if progress:
                progress(f * stt_share)

        translating = options.task == "translate"
        # The decoder prompt carries the words the output should contain: in a translation those are the
        # translation targets (English), not source-language spellings.
        steer = options.terms + tuple(t for _, t in options.translation_terms) if translating else options.terms
        request = SttRequest(
            audio=audio, language_hints=options.language_hints, task=options.task,  # type: ignore[arg-type]
            word_timestamps=True, terms=steer,
        )
        result = engine.transcribe(request, stt_progress)
        words_by_segment: list[list[Word]] = [list(s.words) for s in result.segments]
        if translating and options.translation_terms:
            words_by_segment = [translated_timed_words(ws, options.translation_terms) for ws in words_by_segment]
        elif options.terms and not translating:
            # Merged words (e.g. "Speech seven" -> "Speech7") become one word spanning both timestamps.
            words_by_segment = [correct_timed_words(ws, options.terms) for ws in words_by_segment]
        speakers: tuple[int, ...] = ()
        if options.diarize:
            diarizer = self._models.diarizer()
            dres = diarizer.diarize(
                DiarizationRequest(audio, options.num_speakers, options.min_speakers, options.max_speakers),
                (lambda f: progress(stt_share + f * (1 - stt_share))) if progress else None,
            )
            flat = [w for ws in words_by_segment for w in ws]
            assigned = assign_speakers(flat, dres.turns)
            it = iter(assigned)
            words_by_segment = [[next(it) for _ in ws] for ws in words_by_segment]
            seen: list[int] = []
            for w in assigned:
                if w.speaker is not None and w.speaker not in seen:
                    seen.append(w.speaker)
            speakers = tuple(seen)
        entries = build_entries(result.segments, words_by_segment)
        # Entries without word times (alignment found none) still get the dictionaries, on their text.
        fix = [t for _, t in options.translation_terms] if translating else list(options.terms)
        if fix:
            entries = [e if e.words else replace(e, text=correct_terms(e.text, fix)) for e in entries]
        if progress:
            progress(1.0)
        return Transcript(result, tuple(entries), len(audio) / SAMPLE_RATE, 0.0, speakers)


# ---------------------------------------------------------------------- response shapes


def entry_json(e: Entry, options: SttOptions) -> dict[str, Any]:
    label = speaker_label(options.speaker_labels, e.speaker)
    out: dict[str, Any] = {
        "speaker": label,
        "text": e.text,
        "transcript": f"{label}: {e.text}" if label else e.text,
        "startMs": int(round(e.start * 1000)),
        "endMs": int(round(e.end * 1000)),
        "durationMs": int(round((e.end - e.start) * 1000)),
        "language": e.language,
    }
    if options.word_timestamps:
        out["words"] = [
            {
                "text": w.text.strip(), "startMs": int(round(w.start * 1000)), "endMs": int(round(w.end * 1000)),
                "confidence": round(float(w.probability), 4), "speaker": speaker_label(options.speaker_labels, w.speaker),
            }
            for w in e.words
        ]
    return out


def stt_json(t: Transcript, options: SttOptions) -> dict[str, Any]:
    if options.diarize:
        text = "\n".join(f"{speaker_label(options.speaker_labels, spk)}: {txt}" for spk, txt in merge_turns(t.entries))
    else:
        text = " ".join(e.text for e in t.entries)
    speakers = []
    for spk in t.speakers:
        talk = sum(e.end - e.start for e in t.entries if e.speaker == spk)
        speakers.append({"id": spk + 1, "label": speaker_label(options.speaker_labels, spk), "durationMs": int(talk * 1000)})
    return {
        "text": text,
        "speakers": speakers,
        "transcript": [entry_json(e, options) for e in t.entries],
        "language": t.result.language,
        "languageProbability": round(float(t.result.language_probability), 4),
        "durationMs": int(round(t.duration_s * 1000)),
        "minutesUsed": t.minutes_used,
        "task": options.task,
        "context": dict(options.context),
    }
