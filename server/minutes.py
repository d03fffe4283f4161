"""The minutes pool: one balance per account for STT and TTS, quantized up to 0.5 minute per request.

Every debit is a reservation first (an atomic conditional UPDATE, so concurrent requests can never drive a
balance below zero), then settled to the real amount or refunded when the work fails. Each reservation is
a row in the `usage` ledger.

The caller contract (issue 15, "minutes buy exactly what is processed"): the reservation covers the work
BEFORE the work is done. A caller that learns the work is longer than it reserved calls `extend` first
(402 when the balance cannot cover it, and the work does not happen). `settle` charges exactly what it is
told: more than reserved is taken from the balance when it can be, and otherwise raises
`UncoveredChargeError`, a bug in the caller, instead of quietly charging less than the work done.

Each reservation records the server process holding it (`owner`, see server.leases), so that one left open
by a process that died is refunded by the next one that starts, while a live process's are never touched.
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
# Reservations that outlive the process that took them: a subtitle job's is held by the job's row (re-queued
# and resumed by any worker), not by a process, so crash recovery never refunds them by owner.
DURABLE_KINDS = frozenset({"subtitle_job"})


class UncoveredChargeError(RuntimeError):
    """`settle` was asked for more than the reservation holds and the balance cannot cover the rest: the
    caller did work it had not reserved for (it must `extend` before the work). Nothing is changed."""


class ReservationClosedError(RuntimeError):
    """`extend` on a reservation that is already settled or refunded: nothing is taken."""


class _RowChanged(Exception):
    """The ledger row changed between reading and claiming it (a concurrent extend): roll back, read again."""


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
    def __init__(self, engine: AsyncEngine, owner: str | None = None) -> None:
        """`owner`: this process's lease id (server.leases), written on every reservation it takes."""
        self._db = engine
        self._owner = owner

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
                    reference=reference, created_at=now, owner=self._owner,
                )
                .returning(usage.c.id)
            )
            usage_id = int(row.scalar_one())
        return Reservation(usage_id, account_id, minutes)

    async def extend(self, reservation: Reservation, extra: float) -> Reservation:
        """Reserve `extra` more under the same ledger row, before the work it pays for (realtime sessions grow
        quantum by quantum, a job whose media is longer than its header said grows once). 402 when the
        balance cannot cover it; `ReservationClosedError` when the row is no longer reserved."""
        async with self._db.begin() as conn:
            res = await conn.execute(
                update(accounts)
                .where(and_(accounts.c.id == reservation.account_id, accounts.c.minutes >= extra))
                .values(minutes=accounts.c.minutes - extra, updated_at=time.time())
            )
            if res.rowcount != 1:
                raise payment_required("Not enough minutes left to continue")
            res = await conn.execute(
                update(usage)
                .where(and_(usage.c.id == reservation.usage_id, usage.c.status == "reserved"))
                .values(minutes=usage.c.minutes + extra)
            )
            if res.rowcount != 1:  # raising rolls the balance back too
                raise ReservationClosedError(f"reservation {reservation.usage_id} is already settled or refunded")
            held = (await conn.execute(select(usage.c.minutes).where(usage.c.id == reservation.usage_id))).scalar_one()
        return Reservation(reservation.usage_id, reservation.account_id, float(held))

    async def settle(
        self, reservation: Reservation, minutes: float, *, audio_seconds: float = 0.0, reference: str | None = None,
    ) -> float:
        """Charge exactly `minutes`; what the reservation held beyond that goes back to the balance.

        A charge above the reservation (the ledger row's amount, whatever this object says) takes the extra
        from the balance when it covers it; otherwise `UncoveredChargeError` is raised and nothing changes:
        callers reserve or `extend` before the work, so that never happens. Settling a row twice charges once
        (the second call returns the first charge), and a refunded row stays refunded (0.0).
        """
        for _ in range(5):  # a concurrent extend of the same row changes its amount: read it again
            try:
                return await self._settle_once(reservation, minutes, audio_seconds, reference)
            except _RowChanged:
                continue
        raise RuntimeError(f"reservation {reservation.usage_id} kept changing while it was settled")

    async def _settle_once(
        self, reservation: Reservation, minutes: float, audio_seconds: float, reference: str | None
    ) -> float:
        now = time.time()
        async with self._db.begin() as conn:
            row = (
                await conn.execute(select(usage.c.minutes, usage.c.status).where(usage.c.id == reservation.usage_id))
            ).first()
            if row is None:
                return 0.0
            held, status = float(row[0]), row[1]
            if status != "reserved":  # settled (its charge stands) or refunded (nothing charged)
                return held if status == "settled" else 0.0
            charge = minutes
            if minutes > held:
                extra = minutes - held
                res = await conn.execute(
                    update(accounts)
                    .where(and_(accounts.c.id == reservation.account_id, accounts.c.minutes >= extra))
                    .values(minutes=accounts.c.minutes - extra, updated_at=now)
                )
                if res.rowcount != 1:
                    raise UncoveredChargeError(
                        f"settling {minutes:g} min on reservation {reservation.usage_id}, which holds {held:g} "
                        "min, and the balance cannot cover the rest: the work was not reserved before it ran"
                    )
            values: dict = {"status": "settled", "minutes": charge, "audio_seconds": audio_seconds, "settled_at": now}
            if reference is not None:
                values["reference"] = reference
            # Claimed only if nobody settled, refunded or extended it since it was read: one settlement per row.
            res = await conn.execute(
                update(usage)
                .where(and_(usage.c.id == reservation.usage_id, usage.c.status == "reserved", usage.c.minutes == held))
                .values(**values)
            )
            if res.rowcount != 1:
                raise _RowChanged  # rolls back what this transaction took from the balance
            if charge < held:
                await conn.execute(
                    update(accounts)
                    .where(accounts.c.id == reservation.account_id)
                    .values(minutes=accounts.c.minutes + (held - charge), updated_at=now)
                )
        return charge

    async def refund(self, reservation: Reservation, note: str | None = None) -> None:
        """Gives back what the ledger row holds (it may have been extended since this object was made)."""
        for _ in range(5):
            try:
                await self._refund_once(reservation, note)
                return
            except _RowChanged:
                continue
        raise RuntimeError(f"reservation {reservation.usage_id} kept changing while it was refunded")

    async def _refund_once(self, reservation: Reservation, note: str | None) -> None:
        now = time.time()
        async with self._db.begin() as conn:
            row = (
                await conn.execute(select(usage.c.minutes, usage.c.status).where(usage.c.id == reservation.usage_id))
            ).first()
            if row is None or row[1] != "reserved":
                return  # only a row still reserved is refunded: a double refund (or after settle) is a no-op
            held = float(row[0])
            res = await conn.execute(
                update(usage)
                .where(and_(usage.c.id == reservation.usage_id, usage.c.status == "reserved", usage.c.minutes == held))
                .values(status="refunded", settled_at=now, note=note)
            )
            if res.rowcount != 1:
                raise _RowChanged
            await conn.execute(
                update(accounts)
                .where(accounts.c.id == reservation.account_id)
                .values(minutes=accounts.c.minutes + held, updated_at=now)
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
