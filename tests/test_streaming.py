"""Realtime streaming over Whisper: LocalAgreement commits, endpointing, language id (engines.streaming)."""

from __future__ import annotations

from collections.abc import Callable
from math import gcd
from pathlib import Path

import numpy as np
import pytest

from engines.local_agreement import (
    Action,
    CommitRule,
    DecodeFacts,
    DecodePolicy,
    agreed_prefix_len,
    loop_start,
    next_action,
    skip_committed,
    stable_prefix_len,
    words_leaving_window,
)
from engines.types import SAMPLE_RATE, StreamOptions, StreamToken, StreamUpdate
from engines.wer import wer

FRAME = SAMPLE_RATE // 10  # 100 ms, as a browser microphone sends


def load(path: Path) -> np.ndarray:
    import soundfile as sf
    from scipy.signal import resample_poly

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    g = gcd(rate, SAMPLE_RATE)
    return resample_poly(audio.mean(axis=1), SAMPLE_RATE // g, rate // g).astype(np.float32)




def stream_all(stream, audio: np.ndarray, frame: int = FRAME) -> tuple[list[StreamUpdate], StreamUpdate]:
    updates = [stream.accept(audio[i : i + frame]) for i in range(0, len(audio), frame)]
    return updates, stream.finish()


def finals(updates: list[StreamUpdate]) -> list[StreamToken]:
    return [t for u in updates for t in u.tokens if t.is_final]


# ---------------------------------------------------------------- pure decisions


def test_local_agreement_commits_the_common_prefix_ignoring_case_and_punctuation():
    assert agreed_prefix_len([" Ask", " not", " what"], [" ask", " not,", " what", " your"]) == 3
    assert agreed_prefix_len([" And", " so", " much"], [" And", " so", " my", " fellow"]) == 2
    assert agreed_prefix_len([], [" hello"]) == 0
    assert agreed_prefix_len([" hello", " world"], [" Hello."]) == 1
    assert agreed_prefix_len([" Grüße"], [" grüße!"]) == 1


def test_one_decode_commits_the_words_it_heard_out_with_confidence():
    rule = CommitRule(margin_s=0.5, min_probability=0.5)
    words = [(1.0, 0.9), (1.4, 0.8), (1.8, 0.9), (2.3, 0.9)]  # (end, probability)
    assert stable_prefix_len(words, 2.2, rule) == 2  # the word ending at 1.8 s is not 0.5 s before 2.2 s
    assert stable_prefix_len(words, 3.0, rule) == 4
    # An unsure word holds back itself and everything after it: commits are a prefix.
    assert stable_prefix_len([(1.0, 0.9), (1.4, 0.3), (1.8, 0.9)], 3.0, rule) == 1
    assert stable_prefix_len([], 3.0, rule) == 0


def test_a_decoding_loop_is_cut_but_a_phrase_said_twice_is_kept():
    def timed(text: str, times: list[tuple[float, float]]) -> list[tuple[str, float, float]]:
        return [(w, a, b) for w, (a, b) in zip(text.split(), times, strict=True)]

    # Whisper looping at the end of a window: the repeats are squeezed into no time.
    loop = timed("printing in printing in printing", [(0, .5), (.5, .7), (.9, .9), (.9, .9), (.9, .9)])
    assert loop_start(loop) == 2
    loop = timed("Americans. Americans. Americans.", [(0, .6), (.6, .6), (.6, .6)])
    assert loop_start(loop) == 1
    # Three times or more is a loop, however the words were timed.
    loop = timed("Printy. Printy. Printy. Printy.", [(0, .4), (.4, .8), (1, 1.8), (1.9, 2.4)])
    assert loop_start(loop) == 1
    # A speaker saying it again takes about as long the second time.
    said = timed("has never been surpassed has never been surpassed",
                 [(0, .3), (.3, .6), (.6, .8), (.8, 1.5), (2.5, 2.8), (2.8, 3.1), (3.1, 3.3), (3.3, 4.0)])
    assert loop_start(said) == len(said)
    plain = timed("of the cat of the dog", [(0, .1), (.1, .2), (.2, .5), (.5, .6), (.6, .7), (.7, 1)])
    assert loop_start(plain) == len(plain)


def test_committed_words_heard_again_at_the_window_start_are_skipped():
    committed = [" you.", " Ask"]
    # Whisper repeats them exactly.
    hyp = [(" you.", 7.2, 7.8), (" Ask", 7.8, 8.3), (" what", 8.6, 8.9)]
    assert skip_committed(committed, 8.3, hyp) == 2
    # The clipped first word came out differently: the last committed word still aligns.
    hyp = [(" your", 7.2, 7.8), (" ask", 7.8, 8.3), (" what", 8.6, 8.9)]
    assert skip_committed(committed, 8.3, hyp) == 2
    # Whisper left them out (they were in the prompt): nothing to skip.
    assert skip_committed(committed, 8.3, [(" what", 8.6, 8.9), (" you", 8.9, 9.2)]) == 0
    # A real repetition later in the audio is new speech, not the committed word again.
    assert skip_committed([" no"], 1.0, [(" no", 2.5, 2.8)]) == 0
    # No text matches: words lying in committed audio go, by time.
    assert skip_committed([" um"], 5.0, [(" uh", 4.6, 5.0), (" then", 5.1, 5.4)]) == 1
    # A common word matched, but what follows was squeezed into committed audio (Whisper's misalignment of
    # text it hallucinated there): those words go too, not just the matched one.
    squeezed = [(" the", 5.3, 5.9), (" invention", 5.9, 5.9), (" of", 5.9, 5.9), (" middle", 8.4, 8.6)]
    assert skip_committed([" metal", " letters", " in", " the"], 8.4, squeezed) == 3


def test_the_window_restarts_one_word_before_the_latest_sentence_end():
    words = [(" one.", 1.0), (" Two", 1.5), (" three.", 2.0), (" Four", 3.0)]
    assert words_leaving_window(words, 0.0, 3.0, context_s=2.0, max_context_s=10.0) == 2
    assert words_leaving_window(words, 0.0, 3.0, context_s=5.0, max_context_s=10.0) == 0  # short enough
    run_on = [(" and", t) for t in range(1, 13)]
    assert words_leaving_window(run_on, 0.0, 12.0, context_s=2.0, max_context_s=10.0) == 9
    assert words_leaving_window(run_on[:8], 0.0, 8.0, context_s=2.0, max_context_s=10.0) == 0


def test_decode_policy():
    policy = DecodePolicy(min_chunk_s=1.0, endpoint_silence_s=0.8)

    def facts(**kw) -> DecodeFacts:
        base = dict(new_audio_s=1.2, tail_has_speech=True, utterance_has_speech=True,
                    trailing_silence_s=0.0, last_decode_cost_s=0.1)
        return DecodeFacts(**{**base, **kw})

    assert next_action(facts(), policy) is Action.DECODE
    assert next_action(facts(new_audio_s=0.5), policy) is Action.WAIT
    assert next_action(facts(tail_has_speech=False, utterance_has_speech=False), policy) is Action.SKIP_SILENCE
    assert next_action(facts(trailing_silence_s=0.9), policy) is Action.END_UTTERANCE
    # A short pause finalizes the words before it without ending the utterance.
    assert next_action(facts(trailing_silence_s=0.35), policy) is Action.FINALIZE
    assert next_action(facts(trailing_silence_s=0.35, tail_has_speech=False), policy) is Action.SKIP_SILENCE
    assert next_action(facts(trailing_silence_s=0.9, utterance_has_speech=False, tail_has_speech=False),
                       policy) is Action.SKIP_SILENCE
    # Decodes that take longer than the audio they cover stretch the interval instead of piling up.
    assert next_action(facts(last_decode_cost_s=1.5), policy) is Action.WAIT
    assert next_action(facts(new_audio_s=1.9, last_decode_cost_s=1.5), policy) is Action.DECODE


def test_realtime_windows_are_shaped_to_share_batches():
    from engines.whisper_window import (
        STREAM_MIN_FRAMES,
        WINDOW_FRAMES,
        batch_limit,
        bucket_context,
        encoder_frames,
        generation_limit,
    )

    # The encoder hears the window plus padding, at least 10 s, in buckets (finer on a CPU), at most 30 s.
    assert encoder_frames(300, "cpu") == encoder_frames(300, "cuda") == STREAM_MIN_FRAMES
    assert encoder_frames(950, "cpu") == 1200 and encoder_frames(950, "cuda") == 1500
    assert encoder_frames(2990, "cpu") == WINDOW_FRAMES
    # Previous text is cut to one of few lengths; a glossary stays whole.
    assert bucket_context([], list(range(20))) == []
    assert bucket_context([], list(range(50))) == list(range(18, 50))
    assert bucket_context([7] * 10, list(range(50))) == [7] * 10 + list(range(28, 50))
    assert bucket_context([7] * 40, list(range(50))) == [7] * 40
    # Generation stops after the wanted tokens (CTranslate2 counts the prompt and halves max_length).
    assert generation_limit(2, [40, 30]) == 80 and generation_limit(60, [40]) == 100
    assert generation_limit(2, [0]) == generation_limit(400, [300]) == 448
    # Short windows fill larger batches than 30 s chunks.
    assert batch_limit(WINDOW_FRAMES, 16) == 16 and batch_limit(1000, 16) == 192


def test_max_endpoint_delay_shortens_the_silence_that_ends_an_utterance():
    from engines.local_agreement import ENDPOINT_SLACK_S, endpoint_silence

    assert endpoint_silence(StreamOptions(endpoint_silence_s=0.8)) == 0.8
    assert endpoint_silence(StreamOptions(endpoint_silence_s=0.8, max_endpoint_delay_ms=3000)) == 0.8
    assert endpoint_silence(StreamOptions(endpoint_silence_s=0.8, max_endpoint_delay_ms=500)) == pytest.approx(
        0.5 - ENDPOINT_SLACK_S)


def test_a_hint_held_against_a_more_probable_language_stays_open_until_it_can_be_overruled():
    """choose_language overrules a hint only on CLEARLY_OTHER_MIN_S of audio; an utterance whose detection
    chose a language it found improbable keeps detecting (and commits nothing) until then, instead of being
    locked to the hint after LID_LOCK_S."""
    from engines.stream_language import LID_LOCK_S, UtteranceLanguage
    from engines.whisper_text import CLEARLY_OTHER_MIN_S

    doubtful = UtteranceLanguage(None)
    doubtful.identified("sl", 0.02, LID_LOCK_S + 0.5)  # English speech, hinted ["sl"]
    assert not doubtful.locked and doubtful.doubtful and doubtful.request is None
    doubtful.identified("en", 0.97, CLEARLY_OTHER_MIN_S)  # now the hint could be overruled, and was
    assert doubtful.locked and doubtful.language == "en" and not doubtful.doubtful
    plain = UtteranceLanguage(None)
    plain.identified("de", 0.6, LID_LOCK_S)  # an unsure but likely language locks as before
    assert plain.locked and not plain.doubtful


def test_incremental_log_mel_matches_whisper_front_end(testdata: Path):
    """Frames computed as 100 ms frames arrive equal faster-whisper's features of the same window (but at
    its first and last frames, where faster-whisper reflects the window's own audio instead)."""
    from faster_whisper.feature_extractor import FeatureExtractor

    from engines.stream_audio import AudioBuffer, LogMel

    front = FeatureExtractor(80)
    audio = load(testdata / "en" / "jfk.flac")
    buf, mel = AudioBuffer(), LogMel(front.mel_filters)
    for i in range(0, len(audio), FRAME):
        buf.append(audio[i : i + FRAME])
        mel.update(buf)
    for start, end in [(3 * SAMPLE_RATE, 8 * SAMPLE_RATE), (5 * SAMPLE_RATE, len(audio) // 160 * 160)]:
        expected = front(audio[start:end])[..., :-1]
        got = mel.window(buf, start, end)
        assert got.shape == expected.shape
        assert np.abs(got - expected)[:, 2:-2].max() < 1e-4
    mel.prune(5 * SAMPLE_RATE)  # forgetting earlier audio keeps later windows intact
    assert np.abs(mel.window(buf, 5 * SAMPLE_RATE, 8 * SAMPLE_RATE)
                  - front(audio[5 * SAMPLE_RATE : 8 * SAMPLE_RATE])[..., :-1])[:, 2:-2].max() < 1e-4


def test_a_decode_that_only_lost_words_keeps_them_pending():
    from engines.stream_words import TimedWord as _Word
    from engines.stream_words import keep_pending_words as _keep_pending_words

    def ws(*spec: tuple[str, int, int]) -> list[_Word]:
        return [_Word(t, s, e, 0.9) for t, s, e in spec]

    def texts(words: list[_Word]) -> list[str]:
        return [w.text for w in words]

    pending = ws((" can", 0, 10), (" do", 10, 20), (" for", 20, 30), (" your", 30, 40), (" country.", 40, 50))
    # Whisper skipped words on a short window: the pending words stay, then what it heard after them.
    assert _keep_pending_words(pending, ws((" country.", 0, 55))) == pending
    assert texts(_keep_pending_words(pending, ws((" Your", 0, 45), (" country", 45, 55), (" Thank", 60, 70)))) == [
        *texts(pending), " Thank"]
    assert _keep_pending_words(pending, ws((" can", 0, 10), (" do", 10, 20))) == pending
    assert _keep_pending_words(pending, []) == pending
    # A fresh word that contradicts them wins, as does a decode with as many words or more.
    other = ws((" Printing.", 0, 40))
    assert _keep_pending_words(pending, other) == other
    other = ws((" can", 0, 10), (" go", 10, 20))
    assert _keep_pending_words(pending, other) == other
    fresh = ws((" can", 0, 10), (" do", 10, 20), (" for", 20, 30), (" you", 30, 40), (" country,", 40, 50))
    assert _keep_pending_words(pending, fresh) == fresh
    assert _keep_pending_words([], fresh) == fresh


# ---------------------------------------------------------------- real models


def open_stream(engine, speaker_fn: Callable[[np.ndarray], int] | None = None, **options):
    from engines.streaming import WhisperStream

    # A clock that never advances: decode cost is then zero, so the decode schedule (every 1 s of
    # audio) does not depend on how busy the test machine is.
    return WhisperStream(engine, StreamOptions(**options), clock=lambda: 0.0, speaker_fn=speaker_fn)


@pytest.mark.slow
def test_jfk_streams_final_words_once_each_during_the_stream(tiny, testdata: Path):
    audio = load(testdata / "en" / "jfk.flac")
    clips: list[np.ndarray] = []

    def speaker(clip: np.ndarray) -> int:
        clips.append(clip)
        return 3

    updates, last = stream_all(open_stream(tiny, speaker_fn=speaker), audio)

    during = finals(updates)
    assert len(during) >= 5, "words must become final while audio is still arriving"
    assert any(not t.is_final for u in updates for t in u.tokens), "pending words are reported as non-final"
    everything = during + finals([last])
    text = "".join(t.text for t in everything)
    reference = (testdata / "en" / "jfk.txt").read_text()
    assert wer(reference, text) < 0.25, text
    assert text.startswith(" ")  # Whisper's leading spaces kept: joining the tokens reads as the transcript
    # Each word is final once: times strictly move forward through the final tokens.
    for a, b in zip(everything, everything[1:], strict=False):
        assert a.start_ms <= a.end_ms <= b.start_ms <= b.end_ms, (a, b)
    assert everything[-1].end_ms <= round(len(audio) / SAMPLE_RATE * 1000)
    assert all(0.0 <= t.confidence <= 1.0 for t in everything)
    # finish() leaves nothing pending and declares all audio final.
    assert not [t for t in last.tokens if not t.is_final]
    assert last.final_audio_proc_ms == last.total_audio_proc_ms == len(audio) * 1000 // SAMPLE_RATE
    # Progress counters only move forward; final audio never passes the audio received.
    for prev, cur in zip(updates, updates[1:], strict=False):
        assert prev.final_audio_proc_ms <= cur.final_audio_proc_ms <= cur.total_audio_proc_ms
        assert cur.total_audio_proc_ms == prev.total_audio_proc_ms + 100
    # The speaker hook sees utterance audio and tags final tokens only.
    assert clips and all(c.dtype == np.float32 and 0 < len(c) <= 6 * SAMPLE_RATE for c in clips)
    assert {t.speaker for t in everything} == {3}
    assert all(t.speaker is None for u in updates for t in u.tokens if not t.is_final)
    assert all(t.language is None for t in everything)  # language identification was not asked for


@pytest.mark.slow
def test_small_frames_and_silence_are_cheap_and_produce_nothing(tiny):
    stream = open_stream(tiny, enable_endpoint_detection=True)
    frame = SAMPLE_RATE // 50  # 20 ms
    updates = [stream.accept(np.zeros(frame, dtype=np.float32)) for _ in range(150)]  # 3 s
    assert all(not u.tokens and not u.endpoint for u in updates)
    assert updates[-1].total_audio_proc_ms == 3000
    assert updates[-1].final_audio_proc_ms >= 2500  # silence needs no decoding: it is final at once
    last = stream.finish()
    assert not last.tokens and last.final_audio_proc_ms == 3000


@pytest.mark.slow
def test_a_pause_ends_the_utterance_with_an_endpoint(tiny, testdata: Path):
    first = load(testdata / "en" / "LJ001-0002.wav")  # "in being comparatively modern."
    second = load(testdata / "en" / "LJ001-0008.wav")  # "has never been surpassed."
    gap = np.zeros(int(1.5 * SAMPLE_RATE), dtype=np.float32)
    audio = np.concatenate([first, gap, second])
    boundary_ms = (len(first) + len(gap) // 2) * 1000 // SAMPLE_RATE
    updates, last = stream_all(open_stream(tiny, enable_endpoint_detection=True), audio)

    events: list[str] = []  # final words and endpoints in the order the client sees them
    for u in [*updates, last]:
        events += ["A" if t.start_ms < boundary_ms else "B" for t in u.tokens if t.is_final]
        if u.endpoint:
            events.append("<end>")
    assert "A" in events and "B" in events
    last_a, first_b = len(events) - 1 - events[::-1].index("A"), events.index("B")
    assert "<end>" in events[last_a:first_b], events
    # The endpoint came during the gap, before the second utterance was even heard.
    at = next(u for u in updates if u.endpoint and u.total_audio_proc_ms > len(first) * 1000 // SAMPLE_RATE)
    assert at.total_audio_proc_ms <= (len(first) + len(gap)) * 1000 // SAMPLE_RATE
    assert at.final_audio_proc_ms >= len(first) * 1000 // SAMPLE_RATE - 300
    text = "".join(t.text for t in finals([*updates, last]))
    assert wer("in being comparatively modern. has never been surpassed.", text) < 0.25, text


@pytest.mark.slow
def test_language_identification_tags_tokens_and_respects_hints(base, testdata: Path):
    audio = load(testdata / "de" / "recorded_sample_01.wav")
    updates, last = stream_all(open_stream(base, enable_language_identification=True), audio)
    tokens = finals([*updates, last])
    assert tokens and {t.language for t in tokens} == {"de"}
    text = "".join(t.text for t in tokens)
    assert wer((testdata / "de" / "recorded_sample_01.txt").read_text(), text) < 0.5, text

    # Hints are preferences: German speech hinted English/French is still German (clearly more probable).
    updates, last = stream_all(
        open_stream(base, enable_language_identification=True, language_hints=("en", "fr")), audio
    )
    assert {t.language for t in finals([*updates, last])} == {"de"}


@pytest.mark.slow
def test_a_backlog_in_one_chunk_still_ends_utterances_at_their_pauses(tiny, testdata: Path):
    """A busy server hands a session seconds of audio at once: the pause inside still ends the utterance,
    and the endpoint comes between the two utterances' words, not after both."""
    first = load(testdata / "en" / "LJ001-0002.wav")  # "in being comparatively modern."
    second = load(testdata / "en" / "LJ001-0008.wav")  # "has never been surpassed."
    audio = np.concatenate([first, np.zeros(int(1.5 * SAMPLE_RATE), dtype=np.float32), second])
    stream = open_stream(tiny, enable_endpoint_detection=True)
    updates = stream.accept_all(audio)
    assert [u.endpoint for u in updates] == [True, False]
    head = "".join(t.text for t in updates[0].tokens)
    assert all(t.is_final for t in updates[0].tokens)
    assert wer("in being comparatively modern.", head) < 0.25, head
    assert updates[0].total_audio_proc_ms < updates[1].total_audio_proc_ms == len(audio) * 1000 // SAMPLE_RATE
    tail = "".join(t.text for t in [*updates[1].tokens, *stream.finish().tokens] if t.is_final)
    assert wer("has never been surpassed.", tail) < 0.25, tail
    # accept() merges the same updates: the endpoint is still reported.
    merged = open_stream(tiny, enable_endpoint_detection=True).accept(audio)
    assert merged.endpoint and "comparatively" in "".join(t.text for t in merged.tokens if t.is_final)


def test_decode_interval_is_shorter_where_decodes_are_cheap():
    from server.realtime_config import decode_interval

    assert decode_interval(0.0, "cuda") < decode_interval(0.0, "cpu") <= 1.0
    assert decode_interval(0.8, "cuda") == decode_interval(0.8, "cpu") == 0.8  # the operator's setting wins
