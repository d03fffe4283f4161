"""The minutes pool: quantization, atomic reservations under concurrency, settle/refund, the ledger."""

from __future__ import annotations

import asyncio

import pytest

from server.minutes import quantize_minutes


@pytest.mark.parametrize(
    ("seconds", "minutes"), [(0, 0.0), (0.1, 0.5), (30, 0.5), (30.01, 1.0), (60, 1.0), (61, 1.5), (600, 10.0)]
)
def test_quantize(seconds, minutes):
    assert quantize_minutes(seconds) == minutes


async def test_concurrent_reservations_never_overdraw(api):
    acc = await api.account(startingMinutes=3)
    pool = api.services.minutes
    results = await asyncio.gather(
        *[pool.reserve(acc["id"], 0.5, kind="stt") for _ in range(20)], return_exceptions=True
    )
    ok = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(ok) == 6 and len(refused) == 14
    assert all(getattr(e, "status", None) == 402 for e in refused)
    assert await api.minutes(acc["apiKey"]) == 0.0


async def test_settle_refund_and_ledger(api):
    acc = await api.account(startingMinutes=5)
    pool = api.services.minutes
    r1 = await pool.reserve(acc["id"], 2.0, kind="tts", reference="a")
    assert await pool.settle(r1, 1.0) == 1.0
    r2 = await pool.reserve(acc["id"], 1.0, kind="stt", reference="b")
    await pool.refund(r2)
    await pool.refund(r2)  # a second refund changes nothing
    assert await pool.settle(r2, 1.0) == 0.0  # nor does settling a refunded reservation
    assert await api.minutes(acc["apiKey"]) == 4.0
    usage = (await api.client.get(f"/accounts/{acc['id']}/usage", headers={"x-api-key": "s7_test_admin_key_0123456789"})).json()["usage"]
    by_ref = {u["reference"]: u for u in usage if u["reference"]}
    assert by_ref["a"]["status"] == "settled" and by_ref["a"]["minutes"] == 1.0
    assert by_ref["b"]["status"] == "refunded"


async def test_out_of_minutes_is_402_with_message(api):
    acc = await api.account(startingMinutes=0)
    with pytest.raises(Exception) as info:
        await api.services.minutes.reserve(acc["id"], 0.5, kind="stt")
    assert info.value.status == 402 and "Not enough minutes" in info.value.message


async def test_settle_never_charges_less_than_the_work(api):
    """Issue 15: settling above the reservation takes the rest from the balance when it can, and otherwise
    refuses (the caller did unreserved work) instead of quietly capping the charge at the reservation."""
    from server.minutes import UncoveredChargeError

    acc = await api.account(startingMinutes=2)
    pool = api.services.minutes
    r1 = await pool.reserve(acc["id"], 0.5, kind="stt")
    assert await pool.settle(r1, 1.5) == 1.5  # 1.0 more was there
    assert await api.minutes(acc["apiKey"]) == 0.5
    r2 = await pool.reserve(acc["id"], 0.5, kind="stt")
    with pytest.raises(UncoveredChargeError):
        await pool.settle(r2, 5.0)
    assert await api.minutes(acc["apiKey"]) == 0.0  # nothing moved: still reserved, settle again or refund
    assert await pool.settle(r2, 0.5) == 0.5


async def test_extend_and_refund_follow_the_ledger_row(api):
    from server.minutes import ReservationClosedError

    acc = await api.account(startingMinutes=3)
    pool = api.services.minutes
    first = await pool.reserve(acc["id"], 0.5, kind="subtitle_job")
    grown = await pool.extend(first, 1.0)
    assert grown.minutes == 1.5 and await api.minutes(acc["apiKey"]) == 1.5
    await pool.refund(first)  # a stale object: the row's 1.5 min go back, not the 0.5 it says
    assert await api.minutes(acc["apiKey"]) == 3.0
    with pytest.raises(ReservationClosedError):
        await pool.extend(first, 0.5)  # a closed row takes nothing
    assert await api.minutes(acc["apiKey"]) == 3.0
    with pytest.raises(Exception) as info:
        await pool.extend(await pool.reserve(acc["id"], 3.0, kind="stt"), 0.5)
    assert info.value.status == 402
