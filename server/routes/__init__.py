"""All routes. Each feature module parses and validates, calls a service on `app.state`, maps the result."""

from __future__ import annotations

from starlette.routing import BaseRoute


def build_routes() -> list[BaseRoute]:
    import importlib

    out: list[BaseRoute] = []
    for name in FEATURES:
        try:
            module = importlib.import_module(f"server.routes.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"server.routes.{name}":
                raise
            continue  # a feature not built yet

        out += module.routes
    return out


FEATURES = ("accounts", "admin_session", "capabilities", "stt", "tts", "speeches", "subtitle", "realtime", "ui")
