"""The OpenAI-compatible audio API under /v1: transcriptions, translations, speech, models.

A second front door to the same services, accounts, keys and minutes as the Speech7 API; only the request
parsing, the response shapes and the error shape differ. Module map (the services come from
`server.services`): `auth` (Bearer keys), `errors` (OpenAI's error shape), `models` (model and voice names, GET
/v1/models), `transcriptions` + `transcript_stream` + `formats`, `speech`.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def build_routes() -> list[BaseRoute]:
    from server.openai_api import models, speech, transcriptions
    from server.openai_api.errors import unknown_endpoint

    return [
        *transcriptions.routes,
        *speech.routes,
        Route("/v1/models", models.list_models, methods=["GET"]),
        Route("/v1/models/{model_id}", models.get_model, methods=["GET"]),
        Route("/v1/{rest:path}", unknown_endpoint, methods=METHODS),  # OpenAI-shaped 404 for the rest of /v1
    ]
