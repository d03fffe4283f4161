"""Accounts: creation from the spec's fields, lookup by API key, admin operations."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db import PROFILE_COLUMNS, accounts, usage
from server.engine_specs import MAX_PROVIDER_KEY_CHARS, EngineSpecs, SpecError, display
from server.errors import ApiError, bad_request, not_found
from server.security import display_prefix, generate_api_key, hash_api_key, key_matches, new_id

# JSON field (spec spelling) -> column; each is validated against its column's length (PROFILE_COLUMNS)
PROFILE_FIELDS: dict[str, str] = {
    "companyId": "company_id",
    "companyName": "company_name",
    "contactName": "contact_name",
    "contactPhone": "contact_phone",
    "companyAddress": "company_address",
    "companyVATId": "company_vat_id",
    "companyRegistrationNumber": "company_registration_number",
    "dateAddedCompany": "date_added_company",
    "timeAddedCompany": "time_added_company",
}
ENGINE_FIELDS = {"sttApiKey": "stt_engine", "ttsApiKey": "tts_engine"}


@dataclass(frozen=True)
class Account:
    id: str
    is_admin: bool
    disabled: bool
    minutes: float
    stt_engine: str | None
    tts_engine: str | None
    row: Mapping[str, Any]


def to_account(row: Mapping[Any, Any]) -> Account:
    return Account(
        id=row["id"], is_admin=bool(row["is_admin"]), disabled=bool(row["disabled"]), minutes=float(row["minutes"]),
        stt_engine=row["stt_engine"], tts_engine=row["tts_engine"], row=dict(row),
    )


def public_view(row: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row["id"],
        "keyPrefix": row["key_prefix"],
        "isAdmin": bool(row["is_admin"]),
        "disabled": bool(row["disabled"]),
        "minutes": float(row["minutes"]),
        "startingMinutes": float(row["starting_minutes"]),
        # Provider keys: the local engine spec, "off", or a hosted provider's key masked (never whole).
        "sttApiKey": display(row["stt_engine"]),
        "ttsApiKey": display(row["tts_engine"]),
        "createdAt": _iso(row["created_at"]),
        "updatedAt": _iso(row["updated_at"]),
    }
    for jname, col in PROFILE_FIELDS.items():
        out[jname] = row[col]
    return out


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _number(body: Mapping[str, Any], name: str, default: float | None) -> float | None:
    if name not in body or body[name] is None:
        return default
    v = body[name]
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise bad_request(f"{name} must be a number")
    try:
        f = float(v)
    except ValueError:
        raise bad_request(f"{name} must be a number") from None
    if f < 0 or f != f or f > 1e9:
        raise bad_request(f"{name} must be between 0 and 1e9")
    return f


def _text(body: Mapping[str, Any], name: str, limit: int) -> str | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, (str, int, float)) or isinstance(v, bool):
        raise bad_request(f"{name} must be a string")
    s = str(v).strip()
    if len(s) > limit:
        raise bad_request(f"{name} is longer than {limit} characters")
    return s or None


def _provider_key(body: Mapping[str, Any], name: str) -> str | None:
    """Any string, as the reference accepts (null: back to the server default)."""
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise bad_request(f"{name} must be a string: an engine such as whisper:base, a provider key, or 'off'")
    if len(v) > MAX_PROVIDER_KEY_CHARS:
        raise bad_request(f"{name} is longer than {MAX_PROVIDER_KEY_CHARS} characters")
    return v


class AccountService:
    def __init__(self, db: AsyncEngine, specs: EngineSpecs) -> None:
        """`specs` refuses provider keys naming engines or models this server does not have."""
        self._db = db
        self._specs = specs

    async def authenticate(self, key: str) -> Account | None:
        if not key or len(key) > 200:
            return None
        digest = hash_api_key(key)
        async with self._db.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.key_hash == digest))).mappings().first()
        if row is None or not key_matches(key, row["key_hash"]):
            return None
        return to_account(row)

    async def get(self, account_id: str) -> Account:
        async with self._db.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).mappings().first()
        if row is None:
            raise not_found("No such account")
        return to_account(row)

    async def count(self) -> int:
        async with self._db.connect() as conn:
            return len((await conn.execute(select(accounts.c.id).limit(1))).all())

    def _fields_from_body(self, body: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for jname, col in PROFILE_FIELDS.items():
            if jname in body:
                values[col] = _text(body, jname, PROFILE_COLUMNS[col])
        for jname, col in ENGINE_FIELDS.items():
            if jname in body:
                raw = _provider_key(body, jname)
                try:
                    values[col] = self._specs.to_store("stt" if jname == "sttApiKey" else "tts", raw)
                except SpecError as exc:
                    raise bad_request(str(exc), code="unknown_engine") from None
        if "isAdmin" in body:
            if not isinstance(body["isAdmin"], bool):
                raise bad_request("isAdmin must be true or false")
            values["is_admin"] = body["isAdmin"]
        if "disabled" in body:
            if not isinstance(body["disabled"], bool):
                raise bad_request("disabled must be true or false")
            values["disabled"] = body["disabled"]
        if creating:
            starting = _number(body, "startingMinutes", None)
            minutes = _number(body, "minutes", None)
            # The spec's example sends both; either alone sets the opening balance.
            values["starting_minutes"] = starting if starting is not None else (minutes or 0.0)
            values["minutes"] = minutes if minutes is not None else (starting or 0.0)
        return values

    async def create(self, body: Mapping[str, Any], *, api_key: str | None = None) -> tuple[dict[str, Any], str]:
        values = self._fields_from_body(body, creating=True)
        key = api_key or generate_api_key()
        now = time.time()
        values.update(
            id=new_id("acc"), key_hash=hash_api_key(key), key_prefix=display_prefix(key),
            is_admin=values.get("is_admin", False), disabled=values.get("disabled", False),
            created_at=now, updated_at=now,
        )
        async with self._db.begin() as conn:
            await conn.execute(accounts.insert().values(**values))
            if values["minutes"] > 0:
                await conn.execute(
                    usage.insert().values(
                        account_id=values["id"], kind="credit", status="credit", minutes=-values["minutes"],
                        note="opening balance", created_at=now, settled_at=now,
                    )
                )
            row = (await conn.execute(select(accounts).where(accounts.c.id == values["id"]))).mappings().one()
        return public_view(row), key

    async def update(self, account_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        values = self._fields_from_body(body, creating=False)
        unknown = set(body) - set(PROFILE_FIELDS) - set(ENGINE_FIELDS) - {"isAdmin", "disabled", "apiKey"}
        if unknown:
            raise bad_request(f"unknown or read-only fields: {', '.join(sorted(unknown))}")
        demoting = values.get("is_admin") is False or values.get("disabled") is True
        async with self._db.begin() as conn:
            if demoting:
                await conn.execute(_active_admins().order_by(accounts.c.id).with_for_update())  # see below
            if values:
                values["updated_at"] = time.time()
                res = await conn.execute(update(accounts).where(accounts.c.id == account_id).values(**values))
                if res.rowcount != 1:
                    raise not_found("No such account")
            if demoting and not (await conn.execute(_active_admins().limit(1))).first():
                # Nobody could manage the server any more: refused, and the update rolled back. Checked after
                # the update, which SQLite serialises; on PostgreSQL the admins' rows locked above (in one
                # order) make two admins demoting each other at once wait for each other instead of both
                # succeeding.
                raise ApiError(409, "last_admin", "This is the last active admin account: make another account "
                               "an admin first, then demote or disable this one")
            row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).mappings().first()
        if row is None:
            raise not_found("No such account")
        return public_view(row)

    async def rotate_key(self, account_id: str) -> tuple[dict[str, Any], str]:
        key = generate_api_key()
        async with self._db.begin() as conn:
            res = await conn.execute(
                update(accounts)
                .where(accounts.c.id == account_id)
                .values(key_hash=hash_api_key(key), key_prefix=display_prefix(key), updated_at=time.time())
            )
            if res.rowcount != 1:
                raise not_found("No such account")
            row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).mappings().one()
        return public_view(row), key

    async def list(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        async with self._db.connect() as conn:
            rows = (
                await conn.execute(select(accounts).order_by(accounts.c.created_at).limit(limit).offset(offset))
            ).mappings().all()
        return [public_view(r) for r in rows]

    async def view(self, account_id: str) -> dict[str, Any]:
        return public_view((await self.get(account_id)).row)

    async def usage(self, account_id: str, limit: int = 100) -> builtins.list[dict[str, Any]]:
        await self.get(account_id)
        async with self._db.connect() as conn:
            rows = (
                await conn.execute(
                    select(usage).where(usage.c.account_id == account_id)
                    .order_by(usage.c.created_at.desc(), usage.c.id.desc()).limit(limit)
                )
            ).mappings().all()
        return [
            {
                "id": r["id"], "kind": r["kind"], "status": r["status"], "minutes": float(r["minutes"]),
                "audioSeconds": float(r["audio_seconds"] or 0), "reference": r["reference"], "note": r["note"],
                "createdAt": _iso(r["created_at"]), "settledAt": _iso(r["settled_at"]),
            }
            for r in rows
        ]

    async def ensure_admin(self, admin_key: str | None, log: Callable[[str], None]) -> None:
        """First start with an empty database: create the admin account (key from settings or generated)."""
        if await self.count() > 0:
            if admin_key:
                # A configured admin key always works: register it if no account holds it yet.
                if await self.authenticate(admin_key) is None:
                    await self.create({"isAdmin": True, "contactName": "admin"}, api_key=admin_key)
                    log("S7_ADMIN_KEY registered as an additional admin account")
            return
        key = admin_key or generate_api_key()
        await self.create({"isAdmin": True, "contactName": "admin"}, api_key=key)
        if admin_key:
            log("created the admin account from S7_ADMIN_KEY")
        else:
            log(f"created the admin account; its API key (shown once): {key}")


def _active_admins() -> Select[tuple[str]]:
    return select(accounts.c.id).where(and_(accounts.c.is_admin.is_(True), accounts.c.disabled.is_(False)))


def ensure_active(account: Account) -> None:
    if account.disabled:
        raise ApiError(403, "account_disabled", "This account is disabled")


