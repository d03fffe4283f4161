"""The minutes pool: one balance per account for STT and TTS, quantized up to 0.5 minute per request.

Every debit is a reservation first (an atomic conditional UPDATE, so concurrent requests can never drive a
balance below zero), then settled to the real amount or refunded when the work fails. Each reservation is
a row in the `usage` ledger.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db import accounts, usage
from server.errors import payment_required

QUANTUM_MINUTES = 0.5


def quantize_minutes(seconds: float) -> float:
    """Seconds of audio -> minutes billed: rounded up to the next 0.5 min; anything > 0 costs one quantum."""
    if seconds <= 0:
        return 0.0
    quanta = math.ceil(round(seconds / 60.0 / QUANTUM_MINUTES, 9))
    return max(1, quanta) * QUANTUM_MINUTES


@dataclass(frozen=True)
class Reservation:
    usage_id: int
    account_id: str
    minutes: float


class MinutesPool:
    def __init__(self, engine: AsyncEngine) -> None:
        self._db = engine

    async def reserve(self, account_id: str, minutes: float, *, kind: str, reference: str | None = None) -> Reservation:
        now = time.time()
        async with self._db.begin() as conn:
            res = await conn.execute(
                update(accounts)
                .where(and_(accounts.c.id == account_id, accounts.c.minutes >= minutes))
                .values(minutes=accounts.c.minutes - minutes, updated_at=now)
            )
            if res.rowcount != 1:
                balance = (
                    await conn.execute(select(accounts.c.minutes).where(accounts.c.id == account_id))
                ).scalar()
                raise payment_required(
                    f"Not enough minutes: this request needs {minutes:g} min, "
                    f"the account has {float(balance or 0):g} min left"
                )
            row = await conn.execute(
                usage.insert()
                .values(
                    account_id=account_id, kind=kind, status="reserved", minutes=minutes,
                    reference=reference, created_at=now,
                )
                .returning(usage.c.id)
            )
            usage_id = int(row.scalar_one())
        return Reservation(usage_id, account_id, minutes)

    async def extend(self, reservation: Reservation, extra: float) -> Reservation:
        """Reserve more under the same ledger row (realtime sessions grow quantum by quantum)."""
        async with self._db.begin() as conn:
            res = await conn.execute(
                update(accounts)
                .where(and_(accounts.c.id == reservation.account_id, accounts.c.minutes >= extra))
                .values(minutes=accounts.c.minutes - extra, updated_at=time.time())
            )
            if res.rowcount != 1:
                raise payment_required("Not enough minutes left to continue")
            await conn.execute(
                update(usage).where(usage.c.id == reservation.usage_id).values(minutes=usage.c.minutes + extra)
            )
        return Reservation(reservation.usage_id, reservation.account_id, reservation.minutes + extra)

    async def settle(
        self, reservation: Reservation, minutes: float, *, audio_seconds: float = 0.0, reference: str | None = None
    ) -> float:
        """Charge `minutes` (at most what was reserved, see below); the rest goes back to the balance.

        A charge above the reservation is taken only if the balance covers it; otherwise the charge is
        capped at the reservation, so settling never fails and never overdraws.
        """
        now = time.time()
        async with self._db.begin() as conn:
            # Claim the ledger row first: a reservation settles (or refunds) once, whoever tries twice.
            values: dict = {"status": "settled", "minutes": minutes, "audio_seconds": audio_seconds, "settled_at": now}
            if reference is not None:
                values["reference"] = reference
            res = await conn.execute(
                update(usage).where(and_(usage.c.id == reservation.usage_id, usage.c.status == "reserved")).values(**values)
            )
            if res.rowcount != 1:  # already settled (return its charge) or refunded (nothing charged)
                row = (
                    await conn.execute(select(usage.c.minutes, usage.c.status).where(usage.c.id == reservation.usage_id))
                ).first()
                return float(row[0]) if row is not None and row[1] == "settled" else 0.0
            charge = minutes
            if minutes > reservation.minutes:
                extra = minutes - reservation.minutes
                res = await conn.execute(
                    update(accounts)
                    .where(and_(accounts.c.id == reservation.account_id, accounts.c.minutes >= extra))
                    .values(minutes=accounts.c.minutes - extra, updated_at=now)
                )
                if res.rowcount != 1:
                    charge = reservation.minutes
                    await conn.execute(update(usage).where(usage.c.id == reservation.usage_id).values(minutes=charge))
            elif minutes < reservation.minutes:
                await conn.execute(
                    update(accounts)
                    .where(accounts.c.id == reservation.account_id)
                    .values(minutes=accounts.c.minutes + (reservation.minutes - minutes), updated_at=now)
                )
        return charge

    async def refund(self, reservation: Reservation, note: str | None = None) -> None:
        now = time.time()
        async with self._db.begin() as conn:
            # Only a row still reserved is refunded, so a double refund (or refund after settle) is a no-op.
            res = await conn.execute(
                update(usage)
                .where(and_(usage.c.id == reservation.usage_id, usage.c.status == "reserved"))
                .values(status="refunded", settled_at=now, note=note)
            )
            if res.rowcount == 1:
                await conn.execute(
                    update(accounts)
                    .where(accounts.c.id == reservation.account_id)
                    .values(minutes=accounts.c.minutes + reservation.minutes, updated_at=now)
                )

    async def get(self, usage_id: int) -> Reservation | None:
        async with self._db.connect() as conn:
            row = (await conn.execute(select(usage).where(usage.c.id == usage_id))).mappings().first()
        return None if row is None else Reservation(int(row["id"]), row["account_id"], float(row["minutes"]))

    async def refund_by_id(self, usage_id: int, note: str | None = None) -> None:
        reservation = await self.get(usage_id)
        if reservation is not None:
            await self.refund(reservation, note)

    async def credit(self, account_id: str, minutes: float, note: str | None = None) -> float:
        """Admin top-up (or deduction with a negative amount, never below zero). Returns the new balance."""
        now = time.time()
        async with self._db.begin() as conn:
            cond = accounts.c.id == account_id
            if minutes < 0:
                cond = and_(cond, accounts.c.minutes >= -minutes)
            res = await conn.execute(
                update(accounts).where(cond).values(minutes=accounts.c.minutes + minutes, updated_at=now)
            )
            if res.rowcount != 1:
                raise payment_required("Cannot deduct more minutes than the account has")
            await conn.execute(
                usage.insert().values(
                    account_id=account_id, kind="credit", status="credit", minutes=-minutes,
                    note=note, created_at=now, settled_at=now,
                )
            )
            balance = (await conn.execute(select(accounts.c.minutes).where(accounts.c.id == account_id))).scalar_one()
        return float(balance)
