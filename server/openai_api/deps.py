"""Where the /v1 routes find the server's services: the only module of this package that knows the wiring
(today the attributes of `app.state`), so pointing it at typed collaborators is a change here alone."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from models.catalog import Catalog
from server.accounts import AccountService
from server.capabilities import Capabilities
from server.settings import Settings
from server.transcription import TranscriptionService
from server.tts_service import TtsService


@dataclass(frozen=True)
class OpenAIDeps:
    settings: Settings
    accounts: AccountService
    capabilities: Capabilities
    catalog: Catalog
    transcription: TranscriptionService
    tts: TtsService


def deps(request: Request) -> OpenAIDeps:
    state = request.app.state
    return OpenAIDeps(state.settings, state.accounts, state.capabilities, state.catalog, state.transcription, state.tts)
