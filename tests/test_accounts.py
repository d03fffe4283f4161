"""Foundation through the real app: auth, accounts, engine selection, capabilities, errors."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from tests.conftest import ADMIN_KEY
from tests.test_conformance import REFERENCE_ACCOUNT

# The reference's POST /accounts body, with local engines as its provider keys.
SPEC_EXAMPLE = {
    **{k: v for k, v in REFERENCE_ACCOUNT.items() if k != "apiKey"},
    "ttsApiKey": "piper:en_US-joe-medium",
    "sttApiKey": "whisper:base",
}


async def test_create_account_with_every_spec_field(api):
    r = await api.client.post("/accounts", json={"apiKey": ADMIN_KEY, **SPEC_EXAMPLE})
    assert r.status_code == 201
    body = r.json()
    assert body["apiKey"].startswith("s7_")
    for field in SPEC_EXAMPLE:
        expected = float(SPEC_EXAMPLE[field]) if field in {"startingMinutes", "minutes"} else SPEC_EXAMPLE[field]
        assert body[field] == expected, field
    # the new key works and is an admin key
    r = await api.client.get("/accounts", headers={"x-api-key": body["apiKey"]})
    assert r.status_code == 200
    # the key is shown once: reading the account back never returns it
    r = await api.client.get(f"/accounts/{body['id']}", headers={"x-api-key": ADMIN_KEY})
    assert "apiKey" not in r.json() and r.json()["companyName"] == "Acme"


async def test_spec_quick_test_body(api):
    r = await api.client.post(
        "/accounts", json={"apiKey": ADMIN_KEY, "startingMinutes": 30, "companyName": "Test Co", "contactName": "Jane"}
    )
    assert r.status_code == 201
    assert r.json()["minutes"] == 30.0 and r.json()["isAdmin"] is False


@pytest.mark.parametrize("how", ["body", "header", "query"])
async def test_key_accepted_three_ways(api, how):
    acc = await api.account()
    key = acc["apiKey"]
    if how == "header":
        r = await api.client.get("/account/capabilities", headers={"x-api-key": key})
    elif how == "query":
        r = await api.client.get("/account/capabilities", params={"apiKey": key})
    else:
        r = await api.client.post("/admin/login", json={"apiKey": key})  # a JSON body endpoint
        assert r.status_code == 403  # authenticated (not 401) but not an admin
        return
    assert r.status_code == 200 and r.json()["minutesRemaining"] == 10.0


async def test_missing_and_unknown_keys_are_401(api):
    r = await api.client.get("/account/capabilities")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = await api.client.get("/account/capabilities", headers={"x-api-key": "s7_nope"})
    assert r.status_code == 401
    r = await api.client.post("/accounts", json={"apiKey": "wrong", "startingMinutes": 1})
    assert r.status_code == 401


async def test_admin_endpoints_refuse_non_admin_with_403(api):
    key = (await api.account())["apiKey"]
    h = {"x-api-key": key}
    assert (await api.client.post("/accounts", json={"apiKey": key})).status_code == 403
    assert (await api.client.get("/accounts", headers=h)).status_code == 403
    other = await api.account()
    assert (await api.client.post(f"/accounts/{other['id']}/minutes", json={"minutes": 5}, headers=h)).status_code == 403


async def test_keys_are_stored_hashed(api):
    from server.db import accounts

    acc = await api.account()
    async with api.services.db.connect() as conn:
        rows = (await conn.execute(select(accounts))).mappings().all()
    stored = {r["key_hash"] for r in rows}
    assert acc["apiKey"] not in str([dict(r) for r in rows])
    assert hashlib.sha256(acc["apiKey"].encode()).hexdigest() in stored


async def test_provider_keys_select_local_engines_or_the_default(api):
    async def create(**keys) -> dict:  # type: ignore[no-untyped-def]
        r = await api.client.post("/accounts", json={"apiKey": ADMIN_KEY, **keys})
        assert r.status_code == 201, (keys, r.text)
        return r.json()

    async def caps(acc: dict) -> dict:
        return (await api.client.get("/account/capabilities", headers={"x-api-key": acc["apiKey"]})).json()

    # A value naming a local engine selects it, spelled as a spec or as a bare installed model name.
    for keys in ({"sttApiKey": "whisper:tiny.en", "ttsApiKey": "piper:en_US-joe-medium"},
                 {"sttApiKey": "tiny.en", "ttsApiKey": "en_US-joe-medium"}):
        acc = await create(**keys)
        assert (acc["sttApiKey"], acc["ttsApiKey"]) == ("whisper:tiny.en", "piper:en_US-joe-medium")
        c = await caps(acc)
        assert {k: c["stt"][k] for k in ("configured", "engine", "model", "spec", "source", "device")} == {
            "configured": True, "engine": "whisper", "model": "tiny.en", "spec": "whisper:tiny.en",
            "source": "account", "device": "cpu"}
        assert (c["tts"]["spec"], c["tts"]["source"]) == ("piper:en_US-joe-medium", "account")

    # Any other value is a hosted provider's key: configured, served by the server's default engine, and
    # never shown back whole (nor stored: only the mask is kept).
    secret = "sk-live-0123456789abcdef"
    acc = await create(sttApiKey=secret, ttsApiKey="deepgram:nova-2")
    assert (acc["sttApiKey"], acc["ttsApiKey"]) == ("sk-l…", "deep…")
    c = await caps(acc)
    assert (c["stt"]["configured"], c["stt"]["spec"], c["stt"]["source"]) == (True, "whisper:base", "default")
    assert (c["tts"]["configured"], c["tts"]["spec"], c["tts"]["source"]) == (True, "piper:en_US-joe-medium", "default")
    h = {"x-api-key": ADMIN_KEY}
    shown = [
        (await api.client.get(f"/accounts/{acc['id']}", headers=h)).text,
        (await api.client.get("/accounts", headers=h)).text,
        (await api.client.get("/account", headers={"x-api-key": acc["apiKey"]})).text,
        (await api.client.patch(f"/accounts/{acc['id']}", json={"companyName": "X"}, headers=h)).text,
    ]
    assert all("sk-l…" in text and secret not in text and "nova-2" not in text for text in shown)
    async with api.services.db.connect() as conn:
        dump = " ".join(str(row) for row in (await conn.exec_driver_sql("select * from accounts")).all())
    assert secret not in dump and "nova-2" not in dump
    short = await create(sttApiKey="abc123")  # too short to show any of it
    assert short["sttApiKey"] == "…" and (await caps(short))["stt"]["configured"] is True

    # Empty or "off": not configured. Absent: the server default. PATCH null goes back to the default.
    for value in ("", "off", " OFF "):
        acc = await create(sttApiKey=value, ttsApiKey=value)
        assert (acc["sttApiKey"], acc["ttsApiKey"]) == ("off", "off")
        c = await caps(acc)
        assert c["stt"]["configured"] is False and c["tts"]["configured"] is False and c["stt"]["choices"] == []
    acc = await create()
    assert acc["sttApiKey"] is None and (await caps(acc))["stt"]["source"] == "default"
    r = await api.client.patch(f"/accounts/{acc['id']}", json={"sttApiKey": "off"}, headers=h)
    assert r.json()["sttApiKey"] == "off" and (await caps(acc))["stt"]["configured"] is False
    r = await api.client.patch(f"/accounts/{acc['id']}", json={"sttApiKey": None}, headers=h)
    assert r.json()["sttApiKey"] is None and (await caps(acc))["stt"]["spec"] == "whisper:base"

    # A value naming a local engine this server cannot serve it with is a mistake, not a foreign key: 400.
    for field, value, fragment in [
        ("sttApiKey", "whisper:large-v9", "not installed"), ("ttsApiKey", "piper:xx_XX-nobody", "not installed"),
        ("sttApiKey", "piper:en_US-joe-medium", "piper does not serve STT"), ("ttsApiKey", "whisper:base", "whisper does not serve TTS"),
        ("sttApiKey", "whisper:", "names no model"),
    ]:
        r = await api.client.post("/accounts", json={"apiKey": ADMIN_KEY, field: value})
        assert r.status_code == 400, (field, value)
        assert r.json()["error"]["code"] == "unknown_engine" and fragment in r.json()["error"]["message"]
    for bad in (7, ["whisper:base"], "k" * 4097):
        r = await api.client.post("/accounts", json={"apiKey": ADMIN_KEY, "sttApiKey": bad})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"


async def test_capabilities_defaults(api):
    acc = await api.account()
    caps = (await api.client.get("/account/capabilities", headers={"x-api-key": acc["apiKey"]})).json()
    assert caps["stt"]["configured"] and caps["stt"]["model"] == "base"
    # The models a request may choose, and which of them know languages besides English.
    assert caps["stt"]["choices"] == [{"model": "base", "multilingual": True}, {"model": "tiny.en", "multilingual": False}]
    assert caps["tts"]["configured"] and caps["tts"]["model"] == "en_US-joe-medium"
    assert caps["diarization"]["engine"] == "builtin" and caps["diarization"]["configured"] is True
    assert "pairs" in caps["translation"]
    assert caps["minutesRemaining"] == 10.0 and caps["isAdmin"] is False


async def test_admin_operations(api):
    acc = await api.account(companyName="Old")
    aid, h = acc["id"], {"x-api-key": ADMIN_KEY}
    r = await api.client.post(f"/accounts/{aid}/minutes", json={"minutes": 5.5}, headers=h)
    assert r.json()["minutes"] == 15.5
    r = await api.client.post(f"/accounts/{aid}/minutes", json={"minutes": -100}, headers=h)
    assert r.status_code == 402
    r = await api.client.patch(f"/accounts/{aid}", json={"companyName": "New", "sttApiKey": "whisper:tiny.en"}, headers=h)
    assert r.json()["companyName"] == "New" and r.json()["sttApiKey"] == "whisper:tiny.en"
    # rotate: the old key stops working, the new one works
    r = await api.client.post(f"/accounts/{aid}/rotate-key", headers=h)
    new_key = r.json()["apiKey"]
    assert (await api.client.get("/account/capabilities", headers={"x-api-key": acc["apiKey"]})).status_code == 401
    assert (await api.client.get("/account/capabilities", headers={"x-api-key": new_key})).status_code == 200
    # disable: 403 for the account's own calls
    await api.client.patch(f"/accounts/{aid}", json={"disabled": True}, headers=h)
    r = await api.client.get("/account/capabilities", headers={"x-api-key": new_key})
    assert r.status_code == 403 and r.json()["error"]["code"] == "account_disabled"
    # the ledger shows the opening balance and the credit
    usage = (await api.client.get(f"/accounts/{aid}/usage", headers=h)).json()["usage"]
    assert [u["kind"] for u in usage].count("credit") == 2
    listed = (await api.client.get("/accounts", headers=h)).json()["accounts"]
    assert aid in [a["id"] for a in listed]
    assert (await api.client.get("/accounts/acc_nope", headers=h)).status_code == 404


async def test_bad_bodies(api):
    r = await api.client.post("/accounts", content=b"{not json", headers={"x-api-key": ADMIN_KEY, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"]
    r = await api.client.post("/accounts", json={"apiKey": ADMIN_KEY, "startingMinutes": "lots"})
    assert r.status_code == 400
    r = await api.client.post("/accounts", json={"apiKey": ADMIN_KEY, "startingMinutes": -1})
    assert r.status_code == 400
    big = b'{"x": "' + b"a" * (2 << 20) + b'"}'
    r = await api.client.post("/accounts", content=big, headers={"x-api-key": ADMIN_KEY, "content-type": "application/json"})
    assert r.status_code == 413
    r = await api.client.get("/no/such/route")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_admin_web_session_with_csrf(api):
    c = api.client
    r = await c.post("/admin/login", json={"apiKey": ADMIN_KEY})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    csrf = r.json()["csrfToken"]
    assert (await c.get("/accounts")).status_code == 200  # the cookie authenticates reads
    r = await c.post("/accounts", json={"startingMinutes": 1})
    assert r.status_code == 403 and "CSRF" in r.json()["error"]["message"]
    r = await c.post("/accounts", json={"startingMinutes": 1}, headers={"x-csrf-token": csrf})
    assert r.status_code == 201
    token = c.cookies.get("s7_admin")
    assert token
    await c.post("/admin/logout")
    c.cookies.clear()
    assert (await c.get("/accounts")).status_code == 401
    # A copy of the signed-out cookie is no longer a session.
    c.cookies.set("s7_admin", token)
    assert (await c.get("/accounts")).status_code == 401


async def test_admin_created_on_first_start_and_printed_when_generated(tmp_path, models_root, capsys):
    from server.app import create_app
    from server.services import services_of
    from server.settings import Settings

    app = create_app(Settings(warmup=False, data_dir=tmp_path / "d", models_dir=models_root))
    async with app.router.lifespan_context(app):
        pass
    out = capsys.readouterr().out
    assert "API key (shown once): s7_" in out
    key = out.split("(shown once): ")[1].split()[0]
    app = create_app(Settings(warmup=False, data_dir=tmp_path / "d", models_dir=models_root))
    async with app.router.lifespan_context(app):  # second start: nothing new printed, the key still works
        account = await services_of(app).accounts.authenticate(key)
        assert account is not None and account.is_admin
    assert "shown once" not in capsys.readouterr().out


async def test_rotating_an_admin_s_key_ends_its_web_sessions(api):
    """Issue 15: a session signed in with a key must not outlive the key (a leaked key is rotated to lock its
    holder out, web sessions included)."""
    c = api.client
    second = await api.account(isAdmin=True)
    r = await c.post("/admin/login", json={"apiKey": second["apiKey"]})
    csrf = r.json()["csrfToken"]
    assert (await c.get("/accounts")).status_code == 200
    r = await c.post(f"/accounts/{second['id']}/rotate-key", headers={"x-api-key": ADMIN_KEY})
    new_key = r.json()["apiKey"]
    r = await c.get("/accounts")
    assert r.status_code == 401 and "rotated" in r.json()["error"]["message"]
    assert (await c.post("/accounts", json={"startingMinutes": 1}, headers={"x-csrf-token": csrf})).status_code == 401
    # Signing in with the new key works, and a session that rotates its own key ends with that request.
    r = await c.post("/admin/login", json={"apiKey": new_key})
    csrf = r.json()["csrfToken"]
    assert (await c.get("/admin/session")).status_code == 200
    r = await c.post(f"/accounts/{second['id']}/rotate-key", headers={"x-csrf-token": csrf})
    assert r.status_code == 200
    assert (await c.get("/admin/session")).status_code == 401


async def test_the_last_active_admin_cannot_be_demoted_or_disabled(api):
    c, h = api.client, {"x-api-key": ADMIN_KEY}
    me = (await c.get("/account", headers=h)).json()["id"]
    for change in ({"isAdmin": False}, {"disabled": True}, {"isAdmin": False, "companyName": "X"}):
        r = await c.patch(f"/accounts/{me}", json=change, headers=h)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "last_admin"), change
    assert (await c.get("/account", headers=h)).json()["isAdmin"] is True  # nothing of the refused change stuck
    assert (await c.get("/account", headers=h)).json().get("companyName") != "X"
    second = await api.account(isAdmin=True)
    # Two admins demoting each other at the same moment: one wins, the other is refused.
    import asyncio

    results = await asyncio.gather(
        c.patch(f"/accounts/{me}", json={"isAdmin": False}, headers={"x-api-key": second["apiKey"]}),
        c.patch(f"/accounts/{second['id']}", json={"isAdmin": False}, headers=h),
    )
    codes = sorted(r.status_code for r in results)  # the loser is refused: 409, or 403 if it lost its flag first
    assert codes[0] == 200 and codes[1] in (403, 409), [r.text for r in results]
    listed = (await c.get("/accounts", headers={"x-api-key": second["apiKey"]}))
    if listed.status_code != 200:  # the second one lost its flag: the first is still an admin
        listed = await c.get("/accounts", headers=h)
    admins = [a for a in listed.json()["accounts"] if a["isAdmin"] and not a["disabled"]]
    assert len(admins) == 1
