"""How long a Piper voice will speak a text, known before it does: the server reserves minutes from this.

Characters are a poor measure: "123456" is six characters and two seconds of speech ("one hundred twenty-three
thousand ..."), "Mr." becomes "mister", a URL is spelled out. The phonemes espeak-ng produces (the same
phonemizer Piper feeds its model) are what the voice actually says, so the estimate is linear in three counts
per text: phonemes spoken, punctuation marks (each a pause), and synthesis units (each ends in silence).

Piper scales each phoneme's predicted duration by `length_scale` (the voice's, divided by the speed) and then
rounds it UP to whole frames (256 samples), for the phoneme and for the blank Piper puts after it: about one
frame per phoneme that does not scale with the speed. Without that term speed 2.0 runs 25 % longer than
"half of speed 1.0".

The coefficients were fitted on en_US-joe-medium over speeds 0.5-2.0 (`scripts/calibrate_tts.py` prints the
fit and its error); a voice's own pace is learnt from what it synthesizes (`VoicePace`), so another voice
converges on its rate after its first sentences.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engines.types import DurationEstimate

# Phonemes espeak-ng passes through as punctuation: Piper renders them as pauses, not as sounds.
PAUSE_MARKS = frozenset(",.;:!?¡¿—–…\"«»“”()")

# Seconds per count at length_scale 1.0, and frames of rounding per phoneme or pause (least squares over the
# calibration texts at speeds 0.5, 0.75, 1.0, 1.5, 2.0; en_US-joe-medium with its configured noise).
SECONDS_PER_PHONEME = 0.0342
SECONDS_PER_PAUSE = 0.2145
SECONDS_PER_UNIT = 0.178
ROUNDING_FRAMES = 1.085
HOP_SAMPLES = 256  # Piper's VITS frame

# Real duration / estimate stayed within [0.85, 1.18] over the calibration texts (prose, digits, dates, money,
# lists, URLs, single letters) and speeds; the band adds a margin. LOW decides refusals (it must stay under
# every real duration), HIGH what is reserved when the balance allows (so that long texts rarely need more
# minutes mid-synthesis).
LOW = 0.8
HIGH = 1.2

PACE_WEIGHT = 0.2  # weight of each newly observed unit in a voice's learnt pace
PACE_LIMITS = (0.5, 2.0)  # a pace outside this is a broken observation (e.g. a unit of silence), not a voice


@dataclass(frozen=True)
class PhonemeCounts:
    phonemes: int = 0
    pauses: int = 0
    units: int = 0

    def __add__(self, other: PhonemeCounts) -> PhonemeCounts:
        return PhonemeCounts(self.phonemes + other.phonemes, self.pauses + other.pauses, self.units + other.units)

    def seconds(self, length_scale: float, sample_rate: int) -> float:
        """Predicted seconds for the calibration voice's pace."""
        scaled = SECONDS_PER_PHONEME * self.phonemes + SECONDS_PER_PAUSE * self.pauses + SECONDS_PER_UNIT * self.units
        rounding = ROUNDING_FRAMES * HOP_SAMPLES / sample_rate * (self.phonemes + self.pauses)
        return length_scale * scaled + rounding


def count_unit(sentences: Sequence[Sequence[str]]) -> PhonemeCounts:
    """Counts for one synthesis unit, given its phonemes grouped by espeak-ng sentence (PiperVoice.phonemize)."""
    pauses = sum(1 for sentence in sentences for p in sentence if p in PAUSE_MARKS)
    total = sum(len(sentence) for sentence in sentences)
    return PhonemeCounts(total - pauses, pauses, 1)


def total(counts: Iterable[PhonemeCounts]) -> PhonemeCounts:
    out = PhonemeCounts()
    for c in counts:
        out = out + c
    return out


class VoicePace:
    """One voice's speaking rate relative to the calibration voice, learnt from the units it synthesizes.

    Starts at 1.0; each synthesized unit moves it towards (real seconds / predicted seconds). Shared by the
    threads that synthesize with the voice, hence the lock.
    """

    def __init__(self, sample_rate: int) -> None:
        self._sample_rate = sample_rate
        self._pace = 1.0
        self._lock = threading.Lock()

    @property
    def pace(self) -> float:
        return self._pace

    def estimate(self, counts: PhonemeCounts, length_scale: float) -> DurationEstimate:
        expected = counts.seconds(length_scale, self._sample_rate) * self._pace
        return DurationEstimate(low_s=LOW * expected, expected_s=expected, high_s=HIGH * expected)

    def observe(self, counts: PhonemeCounts, length_scale: float, seconds: float) -> None:
        predicted = counts.seconds(length_scale, self._sample_rate)
        if predicted <= 0:
            return
        ratio = seconds / predicted
        if not PACE_LIMITS[0] <= ratio <= PACE_LIMITS[1]:
            return
        with self._lock:
            self._pace += PACE_WEIGHT * (ratio - self._pace)
