"""Admin login for the web UI: an admin API key buys an HttpOnly, SameSite=Strict session cookie; the CSRF
token that state-changing admin calls must echo in `X-CSRF-Token` comes back in the JSON."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.auth import (
    SESSION_COOKIE,
    SESSION_TTL_S,
    read_json,
    require_account,
    require_admin,
)
from server.errors import forbidden
from server.services import services


async def login(request: Request) -> JSONResponse:
    body = await read_json(request)
    account = await require_account(request, body)
    if not account.is_admin:
        raise forbidden("Only admin API keys can sign in to the admin area")
    sessions = services(request).admin_sessions
    token = sessions.issue(account.id, account.row["key_hash"])
    resp = JSONResponse({"accountId": account.id, "csrfToken": sessions.csrf_token(token)})
    resp.set_cookie(
        SESSION_COOKIE, token, max_age=SESSION_TTL_S, httponly=True, samesite="strict",
        secure=request.url.scheme == "https", path="/",
    )
    return resp


async def session(request: Request) -> JSONResponse:
    account = await require_admin(request)
    sessions = services(request).admin_sessions
    token = request.cookies.get(SESSION_COOKIE, "")
    return JSONResponse({"accountId": account.id, "csrfToken": sessions.csrf_token(token) if token else None})


async def logout(request: Request) -> JSONResponse:
    sessions = services(request).admin_sessions
    sessions.revoke(request.cookies.get(SESSION_COOKIE))
    resp = JSONResponse({"ok": True})
    resp.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return resp


routes = [
    Route("/admin/login", login, methods=["POST"]),
    Route("/admin/session", session, methods=["GET"]),
    Route("/admin/logout", logout, methods=["POST"]),
]
