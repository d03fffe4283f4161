"""The cost of a request is bounded before anyone pays (issue 15, points 6 and 8), on fake engines:

* no key in the header or query: at most the start of the body is read looking for an `apiKey` form field,
  which must come before the file; then 401, nothing written, the connection closed;
* an account has at most S7_MAX_UPLOADS_PER_ACCOUNT uploads in progress (429 + Retry-After beyond);
* a body that stalls is dropped (408) and its file removed;
* malformed JSON that used to be a 500 with a traceback (lone surrogates, deep nesting) is a 400.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from server.uploads import GATE_LIMIT_BYTES
from tests.conftest import ADMIN_KEY, Api
from tests.fakes import fake_models, fake_settings, tone
from tests.test_server_layer import leftovers, wav

CHUNK = 64 * 1024


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **changes: object) -> AsyncIterator[Api]:
    from server.app import create_app

    settings = fake_settings(tmp_path, ADMIN_KEY).with_(**changes)
    app = create_app(settings, manager=fake_models())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:
            yield Api(app, c, settings)


@pytest_asyncio.fixture(loop_scope="function")
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running(tmp_path, max_uploads_per_account=1) as api:
        yield api


class Body:
    """A multipart body sent in 64 KB chunks, counting what the server pulled; `stall_after` chunks it waits
    for `go` (a client that stops sending)."""

    def __init__(self, fields: dict[str, str] | None, file: bytes | None, *, stall_after: int | None = None,
                 fields_after: dict[str, str] | None = None) -> None:
        parts = httpx.Request("POST", "http://t/", data=fields or {}, files={"audio": ("a.wav", file, "audio/wav")}
                              if file is not None else None)
        self.content_type = parts.headers["content-type"]
        self.raw = parts.read()
        if fields_after:  # the same form with fields after the file: rebuilt by hand
            boundary = self.content_type.split("boundary=")[1].encode()
            end = b"--" + boundary + b"--\r\n"
            extra = b"".join(b"--" + boundary + f'\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                             for k, v in fields_after.items())
            self.raw = self.raw[: -len(end)] + extra + end
        self.pulled = 0
        self.stall_after = stall_after
        self.stalled = asyncio.Event()
        self.go = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.raw), CHUNK):
            if self.stall_after is not None and i // CHUNK == self.stall_after:
                self.stalled.set()
                await self.go.wait()
            self.pulled += min(CHUNK, len(self.raw) - i)
            yield self.raw[i : i + CHUNK]

    async def post(self, api: Api, path: str = "/stt", headers: dict[str, str] | None = None) -> httpx.Response:
        return await api.client.post(path, content=self, headers={"content-type": self.content_type, **(headers or {})})


@pytest.mark.parametrize("path", ["/stt", "/subtitle", "/subtitle/jobs"])
async def test_no_key_is_401_after_reading_only_the_start_of_the_body(api: Api, path: str) -> None:
    big = wav(tone(300, 150))  # ~4.8 MB
    body = Body(None, big)
    r = await body.post(api, path)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
    assert "before the file" in r.json()["error"]["message"]
    assert r.headers["connection"] == "close"  # the client stops sending the rest
    assert body.pulled <= 2 * CHUNK < len(body.raw) // 10
    assert leftovers(api, "tmp") == []


async def test_form_fields_without_a_key_are_read_up_to_1_mb(api: Api) -> None:
    body = Body({f"note{i}": "x" * 200_000 for i in range(8)}, wav(tone(300, 2)))  # 1.6 MB of fields first
    r = await body.post(api)
    assert r.status_code == 401
    assert GATE_LIMIT_BYTES < body.pulled <= GATE_LIMIT_BYTES + CHUNK < len(body.raw)


async def test_the_key_field_must_come_before_the_file(api: Api) -> None:
    acc = await api.account()
    after = Body(None, wav(tone(300, 2)), fields_after={"apiKey": acc["apiKey"]})
    r = await after.post(api)
    assert r.status_code == 401 and "before the file" in r.json()["error"]["message"]
    before = Body({"apiKey": acc["apiKey"]}, wav(tone(300, 2)))
    r = await before.post(api)
    assert (r.status_code, r.json()["text"]) == (200, "tone300 tone300")
    bad = Body({"apiKey": "s7_not_a_key"}, wav(tone(300, 150)))
    r = await bad.post(api)
    assert r.status_code == 401 and bad.pulled <= 2 * CHUNK
    assert leftovers(api, "tmp") == []
    assert await api.minutes(acc["apiKey"]) == 9.5


async def test_uploads_in_progress_per_account_are_capped(api: Api) -> None:
    """S7_MAX_UPLOADS_PER_ACCOUNT=1 here: a second upload of the same account is 429 while the first is on
    its way (another account is not affected); once the first is done, the next one goes through."""
    one, other = await api.account(), await api.account()
    slow = Body(None, wav(tone(300, 8)), stall_after=2)
    first = asyncio.ensure_future(slow.post(api, headers={"x-api-key": one["apiKey"]}))
    await asyncio.wait_for(slow.stalled.wait(), 60)
    second = await Body({"apiKey": one["apiKey"]}, wav(tone(300, 1))).post(api)
    assert (second.status_code, second.json()["error"]["code"]) == (429, "too_many_uploads")
    assert int(second.headers["retry-after"]) > 0
    by_header = await Body(None, wav(tone(300, 1))).post(api, headers={"x-api-key": one["apiKey"]})
    assert by_header.status_code == 429
    elsewhere = await Body(None, wav(tone(300, 1))).post(api, headers={"x-api-key": other["apiKey"]})
    assert elsewhere.status_code == 200
    slow.go.set()
    assert (await asyncio.wait_for(first, 60)).status_code == 200
    again = await Body(None, wav(tone(300, 1))).post(api, headers={"x-api-key": one["apiKey"]})
    assert again.status_code == 200
    assert api.services.upload_slots.active(one["id"]) == 0


async def test_a_stalled_body_is_dropped_with_408_and_its_file_removed(tmp_path: Path) -> None:
    async with running(tmp_path, upload_idle_timeout_s=0.3) as api:
        acc = await api.account()
        stalled = Body(None, wav(tone(300, 8)), stall_after=2)
        try:
            r = await asyncio.wait_for(stalled.post(api, headers={"x-api-key": acc["apiKey"]}), 60)
        finally:
            stalled.go.set()
        assert (r.status_code, r.json()["error"]["code"]) == (408, "request_timeout")
        assert r.headers["connection"] == "close"
        assert leftovers(api, "tmp") == []
        assert await api.minutes(acc["apiKey"]) == 10
        assert api.services.upload_slots.active(acc["id"]) == 0
        go = asyncio.Event()

        async def half_a_json_body() -> AsyncIterator[bytes]:
            yield b'{"text": "Hello'
            await go.wait()

        try:
            r = await asyncio.wait_for(api.client.post("/tts", content=half_a_json_body(), headers={
                "x-api-key": acc["apiKey"], "content-type": "application/json"}), 60)
        finally:
            go.set()
        assert (r.status_code, r.json()["error"]["code"]) == (408, "request_timeout")


@pytest.mark.parametrize("raw", [b'{"apiKey": "\\ud800", "text": "Hello."}', b'{"text": "\\udfff"}',
                                 b'{"apiKey": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"])
async def test_json_that_used_to_crash_is_a_400(api: Api, raw: bytes) -> None:
    for path in ("/tts", "/accounts", "/admin/login"):
        r = await api.client.post(path, content=raw, headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_request"), (path, r.text)


async def test_a_key_that_is_not_valid_unicode_is_401_on_the_websocket_path_too(api: Api) -> None:
    """The realtime config carries the key as JSON text: a lone surrogate must be an unknown key, not a 500."""
    assert await api.services.accounts.authenticate("\ud800") is None


async def test_metrics_need_the_token_or_an_admin_key(tmp_path: Path) -> None:
    async with running(tmp_path, metrics_token="scrape-token-123") as api:
        c = api.client
        user = (await api.account())["apiKey"]
        codes = {}
        for name, headers in [("none", {}), ("wrong token", {"Authorization": "Bearer nope"}),
                              ("user key", {"x-api-key": user}), ("token", {"Authorization": "Bearer scrape-token-123"}),
                              ("admin key", {"x-api-key": ADMIN_KEY}), ("admin bearer", {"Authorization": f"Bearer {ADMIN_KEY}"})]:
            r = await c.get("/metrics", headers=headers)
            codes[name] = r.status_code
            if r.status_code == 200:
                assert "s7_requests_total" in r.text
        assert codes == {"none": 401, "wrong token": 401, "user key": 403, "token": 200, "admin key": 200,
                         "admin bearer": 200}
