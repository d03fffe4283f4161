"""All routes. Each feature module parses and validates, calls a service from `services(request)`, maps the result."""

from __future__ import annotations

from starlette.routing import BaseRoute


def build_routes() -> list[BaseRoute]:
    from server.openai_api import build_routes as openai_routes
    from server.routes import (
        accounts,
        admin_session,
        capabilities,
        realtime,
        speeches,
        stt,
        subtitle,
        tts,
        ui,
    )

    out: list[BaseRoute] = []
    for module in (accounts, admin_session, capabilities, stt, tts, speeches, subtitle, realtime, ui):
        out += module.routes
    return out + openai_routes()
