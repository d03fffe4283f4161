"""The language of a realtime stream's current utterance: fixed by the engine, or identified per utterance.

Without a language the engine fixes (an English-only model, or hints its rule makes forcing), every utterance
starts unknown: its windows are decoded with the language detected from their own encoder output, among the
hints (as the engine's `choose_language` rules: restricting today, preferring if hints become preferences),
until enough of the utterance was heard; then the language stays, and windows name it (so they share batches
with other streams'). A speaker switching languages between utterances is therefore read in each one's.
"""

from __future__ import annotations

from engines.whisper_text import CLEARLY_OTHER_MIN_S

LID_LOCK_S = 2.0  # after this much utterance audio the detected language stops changing
LID_EARLY_S, LID_SURE = 1.0, 0.9  # ... or after this much, when the detection is this sure
# A language chosen at a probability below this is in doubt: most often a hint that held against a more
# probable language, which `choose_language` overrules only on CLEARLY_OTHER_MIN_S of audio. Such an
# utterance keeps detecting (and commits nothing) until then, so English speech hinted ["sl"] is read as
# English once 3 s were heard instead of being locked to the hint at 2 s.
LID_DOUBT = 0.5


class UtteranceLanguage:
    def __init__(self, fixed: str | None) -> None:
        self.fixed = fixed
        self.start_utterance()

    def start_utterance(self) -> None:
        self.language: str | None = self.fixed
        self.locked = self.fixed is not None  # decodes name `language` instead of detecting it
        self.sure = self.locked  # the last decode's language is trustworthy: its words may be final
        self.doubtful = False  # the last detection chose a language it found improbable: commit nothing yet

    @property
    def request(self) -> str | None:
        """The language a decode is asked for; None: detect it."""
        return self.language if self.locked else None

    def identified(self, language: str, probability: float, heard_s: float) -> None:
        """What a detecting decode found, having heard `heard_s` of the utterance."""
        self.language = language
        self.sure = probability >= LID_SURE
        lock_at = LID_LOCK_S if probability >= LID_DOUBT else max(LID_LOCK_S, CLEARLY_OTHER_MIN_S)
        self.locked = (self.sure and heard_s >= LID_EARLY_S) or heard_s >= lock_at
        self.doubtful = not self.locked and probability < LID_DOUBT
        self.sure = self.sure or self.locked
