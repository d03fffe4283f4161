"""Minutes for a speech: reserved from the voice's duration estimate before synthesis, grown while it runs,
and never exceeded: synthesis stops before it hands on audio that the reservation does not cover.

The estimate (engines/tts_estimate.py) brackets the real duration as [low, high]. A request is refused up front
only when the balance does not cover `low` (so text whose audio the balance covers is never refused); it
reserves `high` when the balance allows, else as much as it holds. If the audio then outgrows the reservation,
the reservation is extended when the balance allows; otherwise synthesis stops with `OutOfMinutes` and the
speech is refunded and not stored. The charge is settled on the real duration.
"""

from __future__ import annotations

import asyncio

from engines.types import DurationEstimate
from server.errors import ApiError
from server.minutes import QUANTUM_MINUTES, MinutesPool, Reservation, quantize_minutes


class OutOfMinutes(Exception):
    """The audio needs more minutes than the reservation holds and the balance can add."""


async def reserve_speech(
    minutes: MinutesPool, account_id: str, estimate: DurationEstimate, *, reference: str
) -> Reservation:
    """Reserves quantize(high) if the balance allows, else the most it allows down to quantize(low)
    (each try is the pool's atomic reservation, so concurrent requests still never overdraw)."""
    low = max(QUANTUM_MINUTES, quantize_minutes(estimate.low_s))
    amount = max(low, quantize_minutes(estimate.high_s))
    while True:
        try:
            return await minutes.reserve(account_id, amount, kind="tts", reference=reference)
        except ApiError as exc:
            if exc.status != 402 or amount <= low:
                raise
            amount = max(low, amount - QUANTUM_MINUTES)


class SpeechBudget:
    """The reservation of one speech, which the synthesis thread grows through the event loop."""

    def __init__(self, minutes: MinutesPool, reservation: Reservation, loop: asyncio.AbstractEventLoop) -> None:
        self._minutes = minutes
        self._loop = loop
        self.reservation = reservation

    def cover(self, seconds: float) -> None:
        """Called from the synthesis thread before `seconds` of audio in total are handed on: returns when the
        reservation covers them (extending it if needed), raises OutOfMinutes when the balance cannot."""
        needed = quantize_minutes(seconds)
        if needed > self.reservation.minutes:
            asyncio.run_coroutine_threadsafe(self._grow(needed, seconds), self._loop).result()

    async def _grow(self, needed: float, seconds: float) -> None:
        try:
            self.reservation = await self._minutes.extend(self.reservation, needed - self.reservation.minutes)
        except ApiError as exc:
            if exc.status != 402:
                raise
            raise OutOfMinutes(
                f"Not enough minutes for this text: its audio runs past {seconds:.0f} s, which needs {needed:g} min, "
                f"and the account cannot cover more than the {self.reservation.minutes:g} min reserved; "
                "nothing was stored or charged"
            ) from None
