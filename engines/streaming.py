"""Realtime speech-to-text over Whisper: re-decode the live tail, commit what one decode makes stable.

`WhisperStream` keeps the audio from the end of the last committed word. Every `decode_interval_s` of new
audio that contains speech it decodes that tail (the live window, encoded at its own length rather than a
padded 30 s, with the committed text as prompt) and commits the words that are stable after that one decode
(`stable_prefix_len`) or that the previous hypothesis agrees on (LocalAgreement-2); the rest is reported as
non-final. Silero VAD and the log-Mel features are computed incrementally. A short pause finalizes the
pending words after one last decode; a longer one ends the utterance (endpoint), after which the language
is identified again. All times in the stream are absolute samples from its start.

Each public call runs as a generator of decode requests (see engines.stream_driver), so streams share a
few threads and their decodes share the engine's batches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future
from typing import Any

import numpy as np

from engines.local_agreement import (
    Action,
    CommitRule,
    DecodeFacts,
    DecodePolicy,
    agreed_prefix_len,
    endpoint_silence,
    loop_start,
    next_action,
    skip_committed,
    stable_prefix_len,
    words_leaving_window,
)
from engines.stream_audio import AudioBuffer, LogMel, SpeechTracker
from engines.stream_driver import StreamDriver, default_driver
from engines.stream_language import UtteranceLanguage
from engines.stream_words import TimedWord, clamp_words, clip_prompt, keep_pending_words, ms, to_token
from engines.types import (
    MAX_ENDPOINT_DELAY_MS,
    SAMPLE_RATE,
    EngineError,
    StreamOptions,
    StreamToken,
    StreamUpdate,
    SttResult,
    SttStream,
)
from engines.whisper_window import WindowRequest

MAX_WINDOW_S = 28.0  # Whisper hears at most 30 s
CONTEXT_S = 2.0  # committed audio re-heard at the window start before it restarts at a sentence
MAX_CONTEXT_S = 10.0  # ... or at a word, in a sentence that does not end
UTTERANCE_CONTEXT_S = 1.0  # committed audio re-heard at the start of the next utterance
ANCHOR_MARGIN_S = 0.25  # word boundaries are approximate: start a little early, never clip a word
END_PAD_S = 0.4  # silence after the last speech that a window includes (more invites hallucinations)
SPEECH_PAD_S = 0.4  # audio kept before detected speech (VAD onsets are late, most of all unvoiced ones)
SETTLE_S = 0.25  # a decode that heard this much audio after the speech needs no repeat at a pause
SPEAKER_AUDIO_S = 6.0  # audio handed to speaker_fn: the utterance up to the new words, at most this
STEP_S = 0.1  # accept() walks longer chunks in steps of this much audio (VAD and endpoint decisions)
HOP = LogMel.HOP

Steps = Generator["WindowRequest", SttResult, Any]


class WhisperStream(SttStream):
    """One realtime connection over a shared Whisper engine (see the module docstring).

    `engine` needs `submit_window`, `fixed_language`, `mel_filters` (engines.whisper). `clock` (default
    time.monotonic) measures decode cost, which stretches the decode interval under load; a test that must
    not depend on machine load passes a constant. `speaker_fn` gets the audio of the current utterance up
    to newly finalized words and returns their speaker. `commit` tunes the one-pass commit rule.
    """

    def __init__(
        self,
        engine: Any,
        options: StreamOptions,
        *,
        clock: Callable[[], float] | None = None,
        speaker_fn: Callable[[np.ndarray], int] | None = None,
        context_s: float = CONTEXT_S,
        commit: CommitRule | None = None,
        driver: StreamDriver | None = None,
    ) -> None:
        delay = options.max_endpoint_delay_ms
        if delay is not None and not MAX_ENDPOINT_DELAY_MS[0] <= delay <= MAX_ENDPOINT_DELAY_MS[1]:
            raise EngineError("max_endpoint_delay_ms must be between {} and {}".format(*MAX_ENDPOINT_DELAY_MS))
        self._engine = engine
        self._options = options
        self._clock = clock or time.monotonic
        self._speaker_fn = speaker_fn
        self._driver = driver or default_driver()
        self._policy = DecodePolicy(min_chunk_s=options.decode_interval_s,
                                    endpoint_silence_s=endpoint_silence(options))
        self._rule = commit or CommitRule()
        self._context_s = context_s
        self._language = UtteranceLanguage(engine.fixed_language(options.language_hints, options.language))
        self._buf = AudioBuffer()
        self._vad = SpeechTracker()
        self._mel = LogMel(engine.mel_filters)
        self._window_start = 0  # audio before this is final: committed words or skipped silence
        self._committed_end = 0  # end of the last committed word
        self._anchor = 0  # decode windows start here: <= window start, on a committed word boundary
        self._anchored: list[TimedWord] = []  # committed words after the anchor, heard again by each decode
        self._prompt = ""  # committed text before the anchor
        self._prompt_language: str | None = None
        self._pending: list[TimedWord] = []  # the unconfirmed rest of the last hypothesis
        self._partial: tuple[StreamToken, ...] = ()  # the same object while nothing changed
        self._partial_source: list[TimedWord] | None = None
        self._last_decode_at = 0  # buffer end at the last decode
        self._decode_cost = 0.0
        self._finished = False
        self._lock = threading.Lock()
        self._tail: Future[list[StreamUpdate]] | None = None  # the last submitted call
        self._new_utterance(0)

    # ------------------------------------------------------------ public API

    def submit(
        self, pcm: np.ndarray | None = None, *, finalize: bool = False, finish: bool = False
    ) -> Future[list[StreamUpdate]]:
        """`accept_all` (or, with `finish`, `finish`) without blocking; calls run in the order made.

        The audio is walked in `STEP_S` steps so that pauses end utterances where they are, whether the
        client sent 20 ms frames or a backlog of seconds (a slow network, or a busy server that hands a
        session everything that piled up at once): one update per endpoint in it, in order, then one for the
        rest. Tail re-decodes are left to the last step: decoding every second of a backlog would only put
        the stream further behind. With `finalize`, every pending word is then made final (the last update is
        flagged `finalized`).
        """
        steps = self._finish() if finish else self._accept(
            np.zeros(0, dtype=np.float32) if pcm is None else pcm, finalize)
        out: Future[list[StreamUpdate]] = Future()
        with self._lock:
            previous, self._tail = self._tail, out
        if previous is None:
            self._driver.run(self._engine, steps, out)
        else:  # after the previous call, whatever its outcome
            previous.add_done_callback(lambda _f: self._driver.run(self._engine, steps, out))
        return out

    # ------------------------------------------------------------ calls, as step generators

    def _accept(self, pcm: np.ndarray, finalize: bool) -> Steps:
        if self._finished:
            raise EngineError("the stream is finished")
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        step = int(STEP_S * SAMPLE_RATE)
        updates: list[StreamUpdate] = []
        final: list[StreamToken] = []
        pos, endpoint = 0, False
        while pos < len(pcm) or not pos:
            piece = pcm[pos : pos + step]
            pos += max(len(piece), 1)
            last = pos >= len(pcm)
            # ... unless the window would outgrow what one Whisper decode hears.
            long_tail = self._buf.end - self._anchor > MAX_WINDOW_S / 2 * SAMPLE_RATE
            words, endpoint = yield from self._step(piece, may_decode=last or long_tail)
            final += words
            if endpoint:
                updates.append(self._update(final, endpoint=True))
                final = []
        if finalize:
            final += yield from self._finalize_pending(at_end=True)
            updates.append(self._update(final, finalized=True))
        elif not endpoint:  # after an endpoint nothing is pending: its update is the last
            updates.append(self._update(final))
        return updates

    def _finish(self) -> Steps:
        if self._finished:
            return [self._update([])]
        final = yield from self._finalize_pending(at_end=True)
        self._finished = True
        return [self._update(final)]

    # ------------------------------------------------------------ decisions

    def _step(self, pcm: np.ndarray, *, may_decode: bool) -> Generator[WindowRequest, SttResult, tuple[list[StreamToken], bool]]:
        """One step of audio: the new final tokens and whether an endpoint ended the utterance."""
        self._buf.append(pcm)
        if self._buf.end - self._vad.processed >= 2 * SpeechTracker.WINDOW:
            self._vad.update(self._buf)
        action = next_action(self._facts(), self._policy)
        if action is Action.WAIT:
            return [], False
        if action is Action.SKIP_SILENCE:
            self._skip_silence()
            return [], False
        if action is Action.DECODE:
            return ((yield from self._decode_and_commit()) if may_decode else []), False
        if action is Action.FINALIZE:
            return (yield from self._settle()), False
        final = yield from self._finalize_pending(at_end=False)
        self._keep_context_for_next_utterance()
        endpoint = self._options.enable_endpoint_detection and self._utt_words > 0
        if self._utt_words:
            # After a pause the prompt no longer helps: small models continue it instead ("Thank you.")
            # when the next utterance's first second is all they hear.
            self._prompt = ""
        self._new_utterance(self._window_start)
        return final, endpoint

    def _keep_context_for_next_utterance(self) -> None:
        """The next utterance's windows re-hear the last UTTERANCE_CONTEXT_S of this one's words (its first
        word, read alone after a pause, is misread: "ask" as "S."), unless it may be in another language."""
        if self._language.fixed is None:
            keep = 0
        else:
            cut = self._committed_end - int(UTTERANCE_CONTEXT_S * SAMPLE_RATE)
            keep = sum(1 for w in self._anchored if w.end > cut)
        drop = len(self._anchored) - keep
        if drop:
            self._move_anchor(self._anchored[drop - 1].end if keep else self._window_start, drop)
            self._trim()

    def _facts(self) -> DecodeFacts:
        speech_end = self._vad.last_speech_end
        return DecodeFacts(
            new_audio_s=(self._buf.end - self._last_decode_at) / SAMPLE_RATE,
            tail_has_speech=bool(self._pending) or speech_end > self._window_start,
            utterance_has_speech=bool(self._pending) or speech_end > self._utt_start,
            trailing_silence_s=self._vad.trailing_silence() / SAMPLE_RATE,
            last_decode_cost_s=self._decode_cost,
        )

    def _new_utterance(self, start: int) -> None:
        self._utt_start = start
        self._utt_words = 0
        self._language.start_utterance()

    def _skip_silence(self) -> None:
        """No speech since the window start: let the window follow the audio, minus a pad."""
        keep_from = self._vad.heard_to - int(SPEECH_PAD_S * SAMPLE_RATE)
        if keep_from > self._window_start:
            self._window_start = keep_from
            self._last_decode_at = max(self._last_decode_at, keep_from)
            # With no committed words to re-hear (a new utterance), the window follows the silence: a
            # window that opens on seconds of silence makes Whisper stretch its first word over them.
            # Old words no longer help the next one either.
            if not self._anchored or keep_from - self._committed_end > MAX_CONTEXT_S * SAMPLE_RATE:
                self._move_anchor(keep_from, len(self._anchored))
            self._trim()

    def _finalize_pending(self, *, at_end: bool) -> Generator[WindowRequest, SttResult, list[StreamToken]]:
        """A pause, a finalize request or the end: every pending word final, after one last decode if the
        last one did not hear the speech out. `at_end`: all audio so far is final, not just to the pause."""
        self._vad.update(self._buf)
        speech_end = max(self._vad.last_speech_end, 0) if not self._vad.in_speech else self._buf.end
        speech = self._pending or self._vad.speech_start_after(self._window_start) is not None
        if speech and self._last_decode_at < min(self._buf.end, speech_end + int(SETTLE_S * SAMPLE_RATE)):
            hypothesis = yield from self._decode()
            words = keep_pending_words(self._pending, hypothesis)
        else:
            words = self._pending
        final = self._commit(words)
        self._pending = []
        if at_end:  # all audio so far is final: a word cut here goes on as a new one
            end = self._committed_end = max(self._committed_end, self._buf.end)
        else:
            end = self._vad.heard_to - int(SPEECH_PAD_S * SAMPLE_RATE)
        self._window_start = max(self._window_start, end)
        self._last_decode_at = max(self._last_decode_at, self._window_start)
        self._trim()
        return final

    def _settle(self) -> Generator[WindowRequest, SttResult, list[StreamToken]]:
        """A short pause: one last decode if the last one did not hear the speech out; then every word the
        model is sure of is final (all of them are heard out). Unsure ones wait for more speech or the end."""
        speech_end = max(self._vad.last_speech_end, 0)
        if self._last_decode_at >= min(self._buf.end, speech_end + int(SETTLE_S * SAMPLE_RATE)):
            return []
        return (yield from self._decode_and_commit(heard_out=True))

    def _decode_and_commit(self, heard_out: bool = False) -> Generator[WindowRequest, SttResult, list[StreamToken]]:
        final = self._force_commit_if_too_long()
        hypothesis = yield from self._decode()
        merged = keep_pending_words(self._pending, hypothesis)
        heard = self._buf.end / SAMPLE_RATE + (self._rule.margin_s if heard_out else 0.0)
        n = min(agreed_prefix_len([w.text for w in self._pending], [w.text for w in hypothesis]),
                sum(1 for w in merged if w.end / SAMPLE_RATE <= heard - self._rule.agree_margin_s))
        if self._language.sure:  # a word read in a language still being identified may be misread
            n = max(n, stable_prefix_len([(w.end / SAMPLE_RATE, w.probability) for w in merged], heard, self._rule))
        elif self._language.doubtful:  # ... and one read in a language that may still be overruled, is
            n = 0
        final += self._commit(merged[:n])
        # A hypothesis that lost words keeps the lost ones pending: a later decode or the pause commits them.
        self._pending = clamp_words(merged[n:], self._committed_end, self._buf.end)
        return final

    def _force_commit_if_too_long(self) -> list[StreamToken]:
        """Hypotheses that never settle must not grow the window past Whisper's 30 s."""
        limit = self._buf.end - int(MAX_WINDOW_S * SAMPLE_RATE)
        if self._anchor >= limit:
            return []
        half = self._buf.end - int(MAX_WINDOW_S / 2 * SAMPLE_RATE)
        final = self._commit([w for w in self._pending if w.end <= half])
        self._pending = [w for w in self._pending if w.end > half]
        self._window_start = max(self._window_start, limit)
        self._move_anchor(self._window_start, len(self._anchored))
        return final

    # ------------------------------------------------------------ decoding

    def _decode(self) -> Generator[WindowRequest, SttResult, list[TimedWord]]:
        """Decode [anchor, now) and return the hypothesis words after the committed ones."""
        margin = int(ANCHOR_MARGIN_S * SAMPLE_RATE) if self._anchored else 0
        start = -(-max(self._anchor - margin, self._buf.start) // HOP) * HOP
        end = self._buf.end
        if self._vad.trailing_silence() > END_PAD_S * SAMPLE_RATE:  # Whisper invents words in silence
            end = max(self._vad.last_speech_end + int(END_PAD_S * SAMPLE_RATE), start)
        end = max(end // HOP * HOP, start)
        self._mel.update(self._buf)
        language = self._language.request
        if language != self._prompt_language:  # a prompt in another language misleads
            self._prompt, self._prompt_language = "", language
        began = self._clock()
        result = yield WindowRequest(self._mel.window(self._buf, start, end), language,
                                     self._options.language_hints, self._prompt or None, self._options)
        self._decode_cost = max(self._clock() - began, 0.0)
        self._last_decode_at = self._buf.end
        if language is None:
            heard = (end - max(self._utt_start, start)) / SAMPLE_RATE
            self._language.identified(result.language, result.language_probability, heard)
        words = [
            TimedWord(w.text, start + int(w.start * SAMPLE_RATE), start + int(w.end * SAMPLE_RATE), w.probability)
            for seg in result.segments
            for w in seg.words
            if w.text.strip() and w.start < (end - start) / SAMPLE_RATE  # not aligned into the padding
        ]
        words = words[: loop_start([(w.text, w.start / SAMPLE_RATE, w.end / SAMPLE_RATE) for w in words])]
        k = skip_committed(
            [w.text for w in self._anchored],
            self._committed_end / SAMPLE_RATE,
            [(w.text, w.start / SAMPLE_RATE, w.end / SAMPLE_RATE) for w in words],
        )
        return clamp_words(words[k:], self._committed_end, self._buf.end)

    # ------------------------------------------------------------ bookkeeping

    def _commit(self, words: list[TimedWord]) -> list[StreamToken]:
        """Make words final: advance the committed audio and the anchor, tag speaker and language."""
        if not words:
            return []
        speaker = None
        if self._speaker_fn is not None:
            end = words[-1].end
            begin = max(self._utt_start, self._buf.start, end - int(SPEAKER_AUDIO_S * SAMPLE_RATE))
            clip = self._buf.view(begin, end)
            speaker = self._speaker_fn(clip) if len(clip) else None
        language = self._language.language if self._options.enable_language_identification else None
        self._committed_end = max(self._committed_end, words[-1].end)
        self._window_start = max(self._window_start, self._committed_end)
        self._anchored.extend(words)
        self._utt_words += len(words)
        drop = words_leaving_window(
            [(w.text, w.end / SAMPLE_RATE) for w in self._anchored],
            self._anchor / SAMPLE_RATE,
            self._committed_end / SAMPLE_RATE,
            self._context_s,
            MAX_CONTEXT_S,
        )
        if drop:
            self._move_anchor(self._anchored[drop - 1].end, drop)
        self._trim()
        return [to_token(w, True, language, speaker) for w in words]

    def _move_anchor(self, to: int, drop: int) -> None:
        """Windows start at `to` from now on; the first `drop` anchored words move into the prompt."""
        self._prompt = clip_prompt(self._prompt + "".join(w.text for w in self._anchored[:drop]))
        self._anchored = self._anchored[drop:]
        self._anchor = max(self._anchor, to)

    def _trim(self) -> None:
        """Drop audio and features no decode, language detection or speaker_fn will look at again."""
        keep_from = max(self._utt_start, self._window_start - int(SPEAKER_AUDIO_S * SAMPLE_RATE))
        keep_from = min(keep_from, self._anchor - int(ANCHOR_MARGIN_S * SAMPLE_RATE) - HOP, self._vad.processed)
        self._buf.trim(keep_from)
        self._vad.prune(keep_from)
        self._mel.prune(keep_from)

    def _update(self, final: list[StreamToken], endpoint: bool = False, finalized: bool = False) -> StreamUpdate:
        if self._partial_source is not self._pending:
            language = self._language.language if self._options.enable_language_identification else None
            self._partial = tuple(to_token(w, False, language, None) for w in self._pending)
            self._partial_source = self._pending
        return StreamUpdate(
            tokens=tuple(final) + self._partial if final else self._partial,
            final_audio_proc_ms=ms(min(self._window_start, self._buf.end)),
            total_audio_proc_ms=ms(self._buf.end),
            endpoint=endpoint,
            finalized=finalized,
        )
