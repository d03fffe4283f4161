"""Admin account management: POST /accounts (the spec) plus list, read, update, minutes, key rotation, usage."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.accounts import AccountService
from server.auth import read_json, require_account, require_admin
from server.errors import bad_request
from server.services import services


def _service(request: Request) -> AccountService:
    return services(request).accounts


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer") from None
    return max(lo, min(hi, v))


async def create_account(request: Request) -> JSONResponse:
    body = await read_json(request)
    await require_admin(request, body)
    view, key = await _service(request).create(body)
    return JSONResponse({**view, "apiKey": key}, status_code=201)


async def list_accounts(request: Request) -> JSONResponse:
    await require_admin(request)
    limit = _int_param(request, "limit", 100, 1, 1000)
    offset = _int_param(request, "offset", 0, 0, 10**9)
    return JSONResponse({"accounts": await _service(request).list(limit, offset)})


async def get_account(request: Request) -> JSONResponse:
    await require_admin(request)
    return JSONResponse(await _service(request).view(request.path_params["account_id"]))


async def update_account(request: Request) -> JSONResponse:
    body = await read_json(request)
    await require_admin(request, body)
    return JSONResponse(await _service(request).update(request.path_params["account_id"], body))


async def add_minutes(request: Request) -> JSONResponse:
    body = await read_json(request)
    await require_admin(request, body)
    account_id = request.path_params["account_id"]
    minutes = body.get("minutes")
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes != minutes or abs(minutes) > 1e9:
        raise bad_request("minutes must be a number (negative to deduct)")
    await _service(request).get(account_id)
    pool = services(request).minutes
    note = body.get("note") if isinstance(body.get("note"), str) else None
    balance = await pool.credit(account_id, float(minutes), note=note)
    return JSONResponse({"id": account_id, "minutes": balance})


async def rotate_key(request: Request) -> JSONResponse:
    body = await read_json(request)
    await require_admin(request, body)
    view, key = await _service(request).rotate_key(request.path_params["account_id"])
    return JSONResponse({**view, "apiKey": key})


async def account_usage(request: Request) -> JSONResponse:
    await require_admin(request)
    limit = _int_param(request, "limit", 100, 1, 1000)
    return JSONResponse({"usage": await _service(request).usage(request.path_params["account_id"], limit)})


async def own_account(request: Request) -> JSONResponse:
    """GET /account: the caller's own account (no secrets)."""
    account = await require_account(request)
    return JSONResponse(await _service(request).view(account.id))


routes = [
    Route("/accounts", create_account, methods=["POST"]),
    Route("/accounts", list_accounts, methods=["GET"]),
    Route("/accounts/{account_id}", get_account, methods=["GET"]),
    Route("/accounts/{account_id}", update_account, methods=["PATCH"]),
    Route("/accounts/{account_id}/minutes", add_minutes, methods=["POST"]),
    Route("/accounts/{account_id}/rotate-key", rotate_key, methods=["POST"]),
    Route("/accounts/{account_id}/usage", account_usage, methods=["GET"]),
    Route("/account", own_account, methods=["GET"]),
]
