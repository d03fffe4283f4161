"""Who is calling: the API key from a JSON body (`apiKey`), the `x-api-key` header or `?apiKey=`, or for
the admin area a signed session cookie (with a CSRF token for state-changing requests).

HTTP routes and the realtime WebSocket authenticate through the same `require_account`."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from starlette.requests import HTTPConnection, Request

from server.accounts import Account, ensure_active
from server.errors import ApiError, bad_request, forbidden, unauthorized
from server.security import sign
from server.services import services
from server.uploads import body_chunks

SESSION_COOKIE = "s7_admin"
SESSION_TTL_S = 12 * 3600
MAX_JSON_BYTES = 1 << 20


def key_from_request(request: HTTPConnection, body: Mapping[str, Any] | None = None) -> str | None:
    header = request.headers.get("x-api-key")
    if header:
        return header.strip()
    if body is not None:
        v = body.get("apiKey")
        if isinstance(v, str) and v:
            return v.strip()
    q = request.query_params.get("apiKey")
    return q.strip() if q else None


async def read_json(request: Request, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """Reads a JSON object body, refusing oversize bodies while streaming (413), stalled ones (408) and bad
    JSON (400): invalid UTF-8, lone surrogates (`"\ud800"`, which no database or hash can store) and nesting
    too deep for the parser are a 400 too, not a 500."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"Request body too large (limit {limit} bytes)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in body_chunks(request, services(request).settings.upload_idle_timeout_s):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"Request body too large (limit {limit} bytes)")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # every string must be storable text
    except UnicodeEncodeError:
        raise bad_request("Request body contains a string that is not valid Unicode (a lone surrogate)") from None
    except RecursionError:
        raise bad_request("Request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise bad_request("Request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise bad_request("Request body must be a JSON object")
    return data


async def require_account(request: HTTPConnection, body: Mapping[str, Any] | None = None) -> Account:
    """The caller's active account (401 without a valid key, 403 when disabled); `request` may be a WebSocket."""
    key = key_from_request(request, body)
    if not key:
        raise unauthorized("Missing API key: send apiKey in the JSON body, an x-api-key header or ?apiKey=")
    account = await services(request).accounts.authenticate(key)
    if account is None:
        raise unauthorized("Invalid API key")
    ensure_active(account)
    return account


class AdminSessions:
    """Signed cookies `<account_id>.<expiry>.<nonce>.<key tag>.<mac>`; the CSRF token is derived from it.

    Validation needs no storage, so any process sharing the secret accepts a session. The key tag (a MAC of
    the account's key hash) binds the session to the key that signed in: rotating the key ends it, in every
    process at once. Sign-out revokes the token in this process (a copied cookie then stops working here at
    once); other processes keep accepting it until it expires, which is why sessions are short-lived.
    """

    def __init__(self, secret: str) -> None:
        self._secret = (secret or secrets.token_hex(32)).encode()
        self._revoked: dict[str, int] = {}  # mac -> expiry, pruned as they lapse

    def key_tag(self, key_hash: str) -> str:
        return sign(self._secret, "key:" + key_hash)[:16]

    def issue(self, account_id: str, key_hash: str) -> str:
        payload = f"{account_id}.{int(time.time()) + SESSION_TTL_S}.{secrets.token_hex(8)}.{self.key_tag(key_hash)}"
        return f"{payload}.{sign(self._secret, payload)}"

    def account_id(self, token: str | None) -> str | None:
        if not token or token.count(".") != 4:
            return None
        payload, mac = token.rsplit(".", 1)
        if not secrets.compare_digest(sign(self._secret, payload), mac):
            return None
        account_id, expiry, _nonce, _tag = payload.split(".")
        if not expiry.isdigit() or int(expiry) < time.time() or mac in self._revoked:
            return None
        return account_id

    def signed_with(self, token: str, key_hash: str) -> bool:
        """Whether a valid session was signed in with the key whose hash is `key_hash` (the account's now)."""
        return secrets.compare_digest(token.split(".")[3], self.key_tag(key_hash))

    def revoke(self, token: str | None) -> None:
        """Ends a session (sign-out). Unknown or forged tokens are ignored: there is nothing to end."""
        if self.account_id(token) is None or token is None:
            return
        now = time.time()
        self._revoked = {m: exp for m, exp in self._revoked.items() if exp >= now}
        self._revoked[token.rsplit(".", 1)[1]] = int(token.split(".")[1])

    def csrf_token(self, token: str) -> str:
        return sign(self._secret, "csrf:" + token)


async def require_admin(request: Request, body: Mapping[str, Any] | None = None) -> Account:
    """Admin by API key (isAdmin accounts) or by the web UI's session cookie + CSRF header."""
    if key_from_request(request, body):
        account = await require_account(request, body)
    else:
        sessions = services(request).admin_sessions
        token = request.cookies.get(SESSION_COOKIE)
        account_id = sessions.account_id(token)
        if account_id is None or token is None:
            raise unauthorized("Missing API key or admin session")
        if request.method not in {"GET", "HEAD", "OPTIONS"}:
            sent = request.headers.get("x-csrf-token", "")
            if not secrets.compare_digest(sent, sessions.csrf_token(token)):
                raise forbidden("Missing or invalid CSRF token")
        try:
            account = await services(request).accounts.get(account_id)
        except ApiError:
            raise unauthorized("Admin session is no longer valid") from None
        if not sessions.signed_with(token, account.row["key_hash"]):
            raise unauthorized("Admin session ended: the API key it signed in with was rotated")
        ensure_active(account)
    if not account.is_admin:
        raise forbidden("This endpoint needs an admin API key")
    return account


async def require_metrics_reader(request: Request) -> None:
    """GET /metrics: `Authorization: Bearer <S7_METRICS_TOKEN>` (what a Prometheus scrape config sends), or an
    admin API key (header, query, or as the bearer token). The metrics name models, routes and load."""
    svc = services(request)
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    bearer = bearer.strip() if scheme.lower() == "bearer" else ""
    token = svc.settings.metrics_token
    if token and bearer and secrets.compare_digest(bearer.encode("utf-8", "surrogatepass"), token.encode("utf-8")):
        return
    key = key_from_request(request) or bearer
    if not key:
        raise unauthorized("GET /metrics needs Authorization: Bearer <S7_METRICS_TOKEN> or an admin API key")
    account = await svc.accounts.authenticate(key)
    if account is None:
        raise unauthorized("Invalid metrics token or API key")
    ensure_active(account)
    if not account.is_admin:
        raise forbidden("GET /metrics needs an admin API key or the metrics token")
