"""Who is calling a /v1 endpoint: the account's API key as `Authorization: Bearer <key>` (what every OpenAI
client sends) or as the Speech7 API's `x-api-key` header. Keys are checked by the same AccountService as the
Speech7 routes (hashed, constant-time), so the same accounts, keys and minutes apply."""

from __future__ import annotations

from starlette.requests import Request

from server.accounts import Account, ensure_active
from server.openai_api.errors import OpenAIError
from server.services import Services


def api_key(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    header = request.headers.get("x-api-key", "").strip()
    return header or None


async def require_account(request: Request, deps: Services) -> Account:
    key = api_key(request)
    if key is None:
        raise OpenAIError(
            401, "missing_api_key", "You didn't provide an API key: send it as 'Authorization: Bearer <apiKey>'"
        )
    account = await deps.accounts.authenticate(key)
    if account is None:
        raise OpenAIError(401, "invalid_api_key", "Incorrect API key provided")
    ensure_active(account)  # a disabled account: 403
    return account
