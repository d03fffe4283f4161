"""The owner thread's side of Whisper batching: the items request threads queue, and the batch call that
runs ONE encode + (language detection) + generate + word alignment for compatible items of many requests.

Kept apart from engines/whisper.py (the request threads' side: chunking, features, prompts, futures) so each
side reads on its own. Everything here runs only on a BatchWorker's owner thread (engines/batching.py),
except the pure helpers at the bottom, which the request threads use to turn results into segments.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from engines.types import EngineError, Segment, StageFn, Word
from engines.vad import Chunk
from engines.whisper_text import choose_language, group_words, is_silence
from engines.whisper_window import WINDOW_FRAMES, batch_limit, generation_limit

if TYPE_CHECKING:
    from faster_whisper.tokenizer import Tokenizer

_PREPEND = "\"'“¿([{-"  # faster-whisper's defaults for gluing punctuation to words
_APPEND = "\"'.。,，!！?？:：”)]}、"

class LanguageSlot:
    """A request's language, decided on the owner thread from its first chunk's encoder output.

    Why: detecting first (a separate detect_language call) runs the encoder twice on that chunk, which for a
    30 s request on base was ~20 % of its time (0.5 of 2.3 s on 2 CPU cores). Instead the first chunk is decoded in its normal batch: the worker
    detects from the encoder output it already has (one decoder step) and patches the prompts of that chunk
    and of its siblings. The queue is ordered by arrival, so the first chunk is never batched after them.
    Written only by the owner thread; read by the request thread after the futures settle."""

    def __init__(self, hints: Sequence[str]) -> None:
        self.hints = tuple(hints)  # empty: the model's top guess; several: the best of them
        self.language: str | None = None
        self.probability = 0.0
        self.error: Exception | None = None


@dataclass(frozen=True, eq=False)
class BatchItem:
    features: np.ndarray  # (n_mels, 3000) float32
    frames: int = WINDOW_FRAMES  # non-padding frames, for word alignment
    duration: float = 30.0
    prompt: tuple[int, ...] = ()  # the full decoder prompt; empty for a language-detection item
    task: str = "transcribe"  # task and language are part of the batch key too
    language: str = "en"  # with `slot`: a placeholder the worker replaces by the slot's language
    slot: LanguageSlot | None = None
    detects: bool = False  # this item's encoder output decides `slot` (the request's first chunk)
    beam_size: int = 0  # 0: the engine's; part of the batch key (one generate call per beam size)
    max_tokens: int = 0  # 0: up to Whisper's limit; else tokens generated at most (see whisper_window.generation_limit)


@dataclass(frozen=True)
class Decoded:
    """One chunk's text and its words (text, start, end, probability) in chunk-local seconds."""

    text: str
    words: tuple[tuple[str, float, float, float], ...] = ()


class BatchRunner:
    """`run_batch` for the engine's BatchWorkers: one call per batch, results (or per-item errors) in order."""

    def __init__(
        self, wm: Any, tokenizer: Callable[[str, str], Tokenizer], supported_languages: Sequence[str],
        beam_size: int, on_stage: StageFn | None,
    ) -> None:
        self._wm = wm  # faster_whisper.WhisperModel
        self._tokenizer = tokenizer
        self.supported_languages = list(supported_languages)
        self.beam_size = beam_size
        self._on_stage = on_stage

    def _stage(self, name: str, seconds: float) -> None:
        if self._on_stage is not None:
            self._on_stage(name, seconds)

    def run(self, items: list[BatchItem]) -> list[Any]:
        began = time.perf_counter()
        align = [0.0]  # seconds of word alignment in this batch, added up by _decode
        try:
            return self._run_timed(items, align)
        finally:
            self._stage("encode_generate", time.perf_counter() - began - align[0])
            if align[0]:
                self._stage("align", align[0])

    def _run_timed(self, items: list[BatchItem], align: list[float]) -> list[Any]:
        from faster_whisper.transcribe import get_ctranslate2_storage

        stacked = np.stack([it.features for it in items])
        if not items[0].prompt:  # language detection items
            found = self._wm.model.detect_language(get_ctranslate2_storage(stacked))
            return [{tok[2:-2]: p for tok, p in res} for res in found]
        encoder_output = self._wm.encode(stacked)
        if items[0].slot is None:  # the key holds one known language
            return self._decode(items, encoder_output, items[0].language, align)
        if any(it.detects and it.slot is not None and it.slot.language is None for it in items):
            found = self._wm.model.detect_language(encoder_output)  # one decoder step on the encoded batch
            for it, res in zip(items, found, strict=True):
                if it.detects and it.slot is not None and it.slot.language is None:
                    try:
                        it.slot.language, it.slot.probability = choose_language(
                            {t[2:-2]: p for t, p in res}, it.slot.hints, self.supported_languages, it.duration)
                    except EngineError as exc:
                        it.slot.error = exc
        out: list[Any] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            slot = it.slot
            if slot is not None and slot.error is not None:
                out[i] = slot.error
            elif slot is None or slot.language is None:  # its first chunk failed or was cancelled
                out[i] = EngineError("the language of this request could not be detected")
            else:
                groups.setdefault(slot.language, []).append(i)
        for lang, idx in groups.items():
            # Alignment takes one start sequence per call: requests in different languages that met in one
            # batch are decoded per language, each group re-encoded on its own (rare: concurrent languages).
            enc = encoder_output if len(idx) == len(items) else self._wm.encode(stacked[idx])
            for i, d in zip(idx, self._decode([items[i] for i in idx], enc, lang, align), strict=True):
                out[i] = d
        return out

    def _decode(self, items: list[BatchItem], encoder_output: Any, language: str, align: list[float]) -> list[Decoded]:
        from faster_whisper.transcribe import get_suppressed_tokens

        tok = self._tokenizer(items[0].task, language)
        tail = [*tok.sot_sequence, tok.no_timestamps]  # the prompt's end, with the real language token
        prompts = [list(it.prompt[: len(it.prompt) - len(tail)]) + tail for it in items]
        results = self._wm.model.generate(
            encoder_output, prompts, beam_size=items[0].beam_size or self.beam_size,
            max_length=generation_limit(len(prompts[0]), [it.max_tokens for it in items]),
            suppress_blank=True, suppress_tokens=list(get_suppressed_tokens(tok, [-1])),
            return_scores=True, return_no_speech_prob=True,
        )
        aligned_from = time.perf_counter()
        segmented: list[list[dict]] = []
        for it, res in zip(items, results, strict=True):
            seq = [t for t in res.sequences_ids[0] if t < tok.eot]
            avg_logprob = res.scores[0] * len(seq) / (len(seq) + 1)
            if is_silence(res.no_speech_prob, avg_logprob):
                seq = []
            # add_word_timestamps' layout: per item a list of sub-segments; we have one per chunk.
            segmented.append([dict(seek=0, start=0.0, end=it.duration, tokens=seq)])
        # Alignment is always run: without timestamp tokens, words are what segments are cut from.
        self._wm.add_word_timestamps(
            segmented, tok, encoder_output, [it.frames for it in items], _PREPEND, _APPEND, 0.0
        )
        align[0] += time.perf_counter() - aligned_from
        return [
            Decoded(tok.decode(seg["tokens"]), tuple(
                (w["word"], float(w["start"]), float(w["end"]), float(w["probability"])) for w in seg["words"]
            ))
            for [seg] in segmented
        ]


def slot_language(slot: LanguageSlot | None) -> tuple[str, float]:
    if slot is None or slot.language is None:
        raise EngineError("the language of this request could not be detected")
    return slot.language, slot.probability


def batch_key(
    task: str, language: str, prompt: tuple[int, ...], frames: int = WINDOW_FRAMES, beam_size: int = 0
) -> Hashable:
    """Items of one generate call share task and language (one tokenizer, one alignment start sequence),
    CTranslate2 needs <|startoftranscript|> at the same position, i.e. equally long context prompts, the
    encoder one input length, and generate one beam size."""
    return ("generate", task, language, len(prompt), beam_size, frames)


def batch_limit_of(key: Hashable, full: int) -> int:
    frames = key[-1] if isinstance(key, tuple) and key and key[0] == "generate" else WINDOW_FRAMES
    return batch_limit(int(frames), full)


def to_segments(chunk: Chunk, decoded: Decoded, language: str, keep_words: bool) -> list[Segment]:
    """Chunk-local words -> Segments on the original timeline. A word is mapped through the span holding
    its midpoint, so both of its ends move together when it sits next to a cut."""
    if not decoded.text.strip():
        return []
    words: list[Word] = []
    floor = 0.0
    for text, ws, we, prob in decoded.words:
        piece = chunk.piece_index((ws + we) / 2)
        start = round(max(chunk.to_original(ws, piece), floor), 3)
        end = round(max(chunk.to_original(we, piece), start), 3)
        words.append(Word(text, start, end, prob))
        floor = start
    if not words:  # alignment found nothing to time: one segment over the whole chunk
        return [Segment(decoded.text, round(chunk.start, 3), round(chunk.end, 3), (), language)]
    return [
        Segment("".join(w.text for w in group), group[0].start, group[-1].end,
                tuple(group) if keep_words else (), language)
        for group in group_words(words)
    ]
