"""The language of a realtime stream's current utterance: fixed by the engine, or identified per utterance.

Without a language the engine fixes (an English-only model, or a forced `language`), every utterance starts
unknown: its windows are decoded with the language detected from their own encoder output, preferring the
hints (the engine's `choose_language`: another language wins only when clearly more probable in enough audio),
until enough of the utterance was heard; then the language stays, and windows name it (so they share batches
with other streams'). A speaker switching languages between utterances is therefore read in each one's.
"""

from __future__ import annotations

from engines.whisper_text import CLEARLY_OTHER_MIN_S

# After this much utterance audio the detected language stops changing: not before a language the hints do
# not name could have won (choose_language needs CLEARLY_OTHER_MIN_S for that).
LID_LOCK_S = CLEARLY_OTHER_MIN_S
LID_EARLY_S, LID_SURE = 1.0, 0.9  # ... or after this much, when the detection is this sure


class UtteranceLanguage:
    def __init__(self, fixed: str | None) -> None:
        self.fixed = fixed
        self.start_utterance()

    def start_utterance(self) -> None:
        self.language: str | None = self.fixed
        self.locked = self.fixed is not None  # decodes name `language` instead of detecting it
        self.sure = self.locked  # the last decode's language is trustworthy: its words may be final

    @property
    def request(self) -> str | None:
        """The language a decode is asked for; None: detect it."""
        return self.language if self.locked else None

    def identified(self, language: str, probability: float, heard_s: float) -> None:
        """What a detecting decode found, having heard `heard_s` of the utterance."""
        self.language = language
        self.sure = probability >= LID_SURE
        self.locked = (self.sure and heard_s >= LID_EARLY_S) or heard_s >= LID_LOCK_S
        self.sure = self.sure or self.locked
