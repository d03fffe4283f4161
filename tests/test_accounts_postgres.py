"""Accounts, keys and the minutes pool on PostgreSQL (`postgresql+asyncpg://`), the database that several server
processes share: two app instances on one database see the same accounts, and their concurrent reservations
never drive a balance below zero."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from server.settings import Settings
from tests.conftest import ADMIN_KEY, Api
from tests.pg import PgCluster, pg_cluster


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgCluster]:
    with pg_cluster() as cluster:
        yield cluster


@contextlib.asynccontextmanager
async def app_on(db_url: str, data_dir: Path, models_root: Path) -> AsyncIterator[Api]:
    from server.app import create_app

    settings = Settings(warmup=False, data_dir=data_dir, admin_key=ADMIN_KEY, models_dir=models_root, database_url=db_url)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            yield Api(app, c, settings)


async def test_two_servers_share_accounts_and_never_overdraw(
    tmp_path: Path, models_root: Path, postgres: PgCluster
) -> None:
    db_url = postgres.create_database()
    async with app_on(db_url, tmp_path / "a", models_root) as a, app_on(db_url, tmp_path / "b", models_root) as b:
        # One admin account, although both servers started on the empty database with S7_ADMIN_KEY.
        admin = {"x-api-key": ADMIN_KEY}
        listed = (await b.client.get("/accounts", headers=admin)).json()["accounts"]
        assert [x["isAdmin"] for x in listed] == [True]

        acc = await a.account(startingMinutes=3, companyName="Acme d.o.o.", sttApiKey="whisper:tiny.en")
        # The key created on one server authenticates on the other; only its hash is stored.
        caps = (await b.client.get("/account/capabilities", headers={"x-api-key": acc["apiKey"]})).json()
        assert caps["minutesRemaining"] == 3.0 and caps["stt"]["model"] == "tiny.en"
        async with a.services.db.connect() as conn:
            dump = " ".join(str(row) for row in (await conn.exec_driver_sql("select * from accounts")).all())
        assert acc["apiKey"] not in dump
        bad = await b.client.get("/account/capabilities", headers={"x-api-key": acc["apiKey"] + "x"})
        assert bad.status_code == 401

        # 20 reservations of 0.5 min from both servers at once against a balance of 3: exactly 6 succeed.
        pools = [a.services.minutes, b.services.minutes]
        results = await asyncio.gather(
            *[pools[i % 2].reserve(acc["id"], 0.5, kind="stt") for i in range(20)], return_exceptions=True
        )
        ok = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(ok) == 6 and all(getattr(e, "status", None) == 402 for e in refused)
        assert await a.minutes(acc["apiKey"]) == 0.0
        # Refunds from either server land on the one balance; a second refund changes nothing.
        await pools[0].refund(ok[0])
        await pools[1].refund(ok[0])
        await pools[1].refund(ok[1])
        assert await b.minutes(acc["apiKey"]) == 1.0

        # Minutes added on one server are visible on the other.
        r = await b.client.post(f"/accounts/{acc['id']}/minutes", json={"apiKey": ADMIN_KEY, "minutes": 2})
        assert r.status_code == 200, r.text
        assert await a.minutes(acc["apiKey"]) == 3.0

        # Issue 15: each server's reservations belong to its lease; starting or recovering on the other leaves
        # them alone while both are alive.
        held = await pools[0].reserve(acc["id"], 1.0, kind="realtime")
        recovered = await b.services.lease.recover(pools[1], note="refunded: test")
        assert recovered.refunded == 0
        assert await b.minutes(acc["apiKey"]) == 2.0
        await pools[1].settle(held, 0.5)  # any server may settle it
        assert await a.minutes(acc["apiKey"]) == 2.5

        # Two admins demoting each other at once, through different servers: one stays an admin.
        second = await a.account(isAdmin=True)
        first_id = (await a.client.get("/account", headers=admin)).json()["id"]
        results = await asyncio.gather(
            a.client.patch(f"/accounts/{first_id}", json={"isAdmin": False}, headers={"x-api-key": second["apiKey"]}),
            b.client.patch(f"/accounts/{second['id']}", json={"isAdmin": False}, headers=admin),
        )
        codes = sorted(r.status_code for r in results)
        assert codes[0] == 200 and codes[1] in (403, 409), [r.text for r in results]
        async with a.services.db.connect() as conn:
            admins = (await conn.exec_driver_sql(
                "select count(*) from accounts where is_admin and not disabled")).scalar_one()
        assert admins == 1


async def test_profile_fields_up_to_their_limit_are_stored_and_longer_ones_refused(
    tmp_path: Path, models_root: Path, postgres: PgCluster
) -> None:
    """One limit per profile field, shared by the API's validation and the schema: PostgreSQL enforces the
    column length, so a value the API accepts must fit (a longer one is a 400 naming the field, never a 500)."""
    from server.accounts import PROFILE_FIELDS
    from server.db import PROFILE_COLUMNS, accounts

    assert set(PROFILE_FIELDS.values()) == set(PROFILE_COLUMNS)
    assert all(accounts.c[col].type.length == n for col, n in PROFILE_COLUMNS.items())  # type: ignore[attr-defined]
    async with app_on(postgres.create_database(), tmp_path, models_root) as api:
        admin = {"x-api-key": ADMIN_KEY}
        full = {field: "é" * PROFILE_COLUMNS[col] for field, col in PROFILE_FIELDS.items()}  # characters, not bytes
        r = await api.client.post("/accounts", json=full, headers=admin)
        assert r.status_code == 201, r.text
        acc = r.json()
        back = (await api.client.get(f"/accounts/{acc['id']}", headers=admin)).json()
        assert {f: back[f] for f in full} == full
        for field, col in PROFILE_FIELDS.items():
            over = {field: "x" * (PROFILE_COLUMNS[col] + 1)}
            for r in (await api.client.post("/accounts", json=over, headers=admin),
                      await api.client.patch(f"/accounts/{acc['id']}", json=over, headers=admin)):
                assert r.status_code == 400, (field, r.text)
                assert field in r.json()["error"]["message"]
                assert f"{PROFILE_COLUMNS[col]} characters" in r.json()["error"]["message"]
        # A provider key of any length is accepted there too: only its short stored form reaches the column.
        r = await api.client.patch(f"/accounts/{acc['id']}", json={"sttApiKey": "k" * 4000}, headers=admin)
        assert r.status_code == 200 and r.json()["sttApiKey"] == "kkkk…"
