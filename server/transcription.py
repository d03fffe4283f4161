"""The transcription service behind /stt, /subtitle and subtitle jobs: decode, reserve minutes, run the
account's STT engine (and the diarizer), post-process with the dictionaries, settle or refund.

`TranscriptionService` does the bookkeeping on the event loop; `SttPipeline` is the blocking part (engine
protocols only), run on an inference thread. The engines batch across requests on their own.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from engines.assign import Entry, assign_speakers, build_entries, merge_turns
from engines.frontend import MediaFrontend, PreparedAudio
from engines.types import (
    DiarizationRequest,
    EngineError,
    ModelProvider,
    Segment,
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
from server.minutes import QUANTUM_MINUTES, MinutesPool, Reservation, quantize_minutes
from server.stt_options import SttOptions, speaker_label

log = logging.getLogger("speech7.stt")

Progress = Callable[[float], None]
SegmentsFn = Callable[[tuple[Segment, ...]], None]  # see SttRequest.on_segments: called from a worker thread


@dataclass(frozen=True)
class Transcript:
    result: SttResult
    entries: tuple[Entry, ...]
    duration_s: float
    minutes_used: float
    speakers: tuple[int, ...]  # speaker indices in order of first appearance


def covered_seconds(balance_minutes: float) -> float:
    """The most audio a balance pays for: whole 0.5-minute quanta (a 40 s file costs 1.0 min, so 0.7 min
    left covers 30 s, not 42)."""
    return math.floor(max(0.0, balance_minutes) / QUANTUM_MINUTES + 1e-9) * QUANTUM_MINUTES * 60.0


class TranscriptionService:
    def __init__(
        self, *, minutes: MinutesPool, capabilities: Capabilities, pipeline: SttPipeline, inference: Inference,
        metrics: Metrics, frontend: MediaFrontend, max_audio_hours: float,
    ) -> None:
        self.minutes = minutes
        self._capabilities = capabilities
        self._pipeline = pipeline
        self._inference = inference
        self._metrics = metrics
        self._frontend = frontend
        self._max_audio_s = max_audio_hours * 3600.0

    async def prepare_media(self, path: Path, cover_s: float) -> PreparedAudio:
        """Decode (at most `cover_s` of audio, and never past the server's cap) and find the speech, in the
        front end's worker processes. Cancelling the caller stops the decoding."""
        from engines.frontend import MediaTooLongError

        cap_s = self._max_audio_s
        limit = min(cover_s, cap_s)
        try:
            return await self._frontend.aprepare(path, vad=True, max_seconds=limit)
        except MediaTooLongError:
            if limit < cap_s:
                raise payment_required(
                    f"Not enough minutes: the media is longer than the {limit / 60:g} min of audio "
                    "your balance covers"
                ) from None
            raise ApiError(413, "media_too_long", f"The media is longer than this server's limit of "
                           f"{cap_s / 3600:g} hours of audio per request") from None
        except EngineError as exc:  # undecodable or empty media
            raise api_error(exc) from None

    async def transcribe_file(
        self, account: Account, path: Path, options: SttOptions, *, kind: str, reference: str | None = None,
        progress: Progress | None = None, reservation_id: int | None = None, on_segments: SegmentsFn | None = None,
    ) -> Transcript:
        """Decode, reserve exactly what the audio costs, run the engines, settle (or refund on failure).

        Decoding never goes past what the balance covers (plus, for a subtitle job, what it reserved at
        upload), so a small file that decodes to hours costs a bounded amount of work before the 402."""
        selection = self._capabilities.require_stt_options(account, diarize=options.diarize, model=options.model)
        held: Reservation | None = None
        if reservation_id is not None:  # subtitle jobs reserve at upload time and settle here
            held = await self.minutes.get(reservation_id)
            if held is None:
                raise ApiError(500, "reservation_missing", "the job's minutes reservation is gone")
        cover = covered_seconds(account.minutes + (held.minutes if held is not None else 0.0))
        if cover <= 0:
            # Decoding a large upload only to refuse it would waste the server's time; reserve() below stays
            # the authoritative check (the balance read at authentication may be stale).
            raise payment_required(
                f"Not enough minutes: a request costs at least {QUANTUM_MINUTES:g} min, "
                f"the account has {account.minutes:g} min left"
            )
        prepared = await self.prepare_media(path, cover)
        try:
            duration = prepared.duration
            cost = quantize_minutes(duration)
            if held is None:
                reservation = await self.minutes.reserve(account.id, cost, kind=kind, reference=reference)
            elif cost > held.minutes:  # the header under-stated the length: cover the rest before the work
                try:
                    reservation = await self.minutes.extend(held, cost - held.minutes)
                except ApiError:
                    raise payment_required(
                        f"Not enough minutes: the media is {duration / 60:.1f} min long, {cost:g} min to pay, "
                        f"{held.minutes:g} min were reserved at upload and the balance does not cover the rest"
                    ) from None
            else:
                reservation = held
            stop = threading.Event()

            def report(fraction: float) -> None:
                # The engine calls this between items: raising here is how a cancelled request (its client
                # left) stops feeding the model; the engine then drops its queued items.
                if stop.is_set():
                    raise EngineError("the request was cancelled")
                if progress is not None:
                    progress(fraction)

            try:
                transcript = await self._inference.run(
                    self._pipeline.run, selection.model, prepared, options, report, on_segments
                )
            except BaseException as exc:
                stop.set()
                await self.minutes.refund(reservation, note=f"failed: {type(exc).__name__}")
                if isinstance(exc, EngineError):
                    raise api_error(exc) from None
                raise
        finally:
            prepared.discard()
        charged = await self.minutes.settle(reservation, cost, audio_seconds=duration, reference=reference)
        self._metrics.add_audio(kind, duration)
        return replace(transcript, minutes_used=charged)


class SttPipeline:
    """The blocking part of a transcription, through the engine protocols: STT, diarization, dictionaries."""

    def __init__(self, models: ModelProvider, metrics: Metrics | None = None) -> None:
        self._models = models
        self._metrics = metrics

    def run(
        self, model: str, audio: PreparedAudio | np.ndarray, options: SttOptions, progress: Progress | None,
        on_segments: SegmentsFn | None = None,
    ) -> Transcript:
        from engines.term_matching import correct_terms, correct_timed_words
        from engines.translation_terms import translated_timed_words

        # The front end's decoded upload (read chunk by chunk, speech already found) or an array in memory.
        prepared = audio if isinstance(audio, PreparedAudio) else None
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
            audio=audio, language_hints=options.language_hints, language=options.language,
            task=options.task,  # type: ignore[arg-type]
            word_timestamps=True, terms=steer, speech=prepared.speech if prepared else None, group=audio,
            prompt=options.prompt,
            on_segments=on_segments,
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
            began = time.perf_counter()
            dres = diarizer.diarize(
                DiarizationRequest(
                    prepared.load() if prepared else np.asarray(audio), options.num_speakers, options.min_speakers,
                    options.max_speakers,
                ),
                (lambda f: progress(stt_share + f * (1 - stt_share))) if progress else None,
            )
            if self._metrics is not None:
                self._metrics.observe_stage("diarization", time.perf_counter() - began)
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
        return Transcript(result, tuple(entries), result.duration, 0.0, speakers)


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
