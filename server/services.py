"""Builds the feature services onto `app.state` and owns their background tasks (job workers, purges)."""

from __future__ import annotations

from typing import Any

from server.capabilities import Capabilities


class Services:
    def __init__(self, state: Any) -> None:
        self.state = state
        self._started: list[Any] = []

    def add(self, svc: Any) -> None:
        """Registers a service with async start()/stop() (background workers)."""
        self._started.append(svc)

    async def start(self) -> None:
        for svc in self._started:
            await svc.start()

    async def stop(self) -> None:
        for svc in reversed(self._started):
            await svc.stop()


def build_services(state: Any) -> Services:
    services = Services(state)
    state.capabilities = Capabilities(state.settings, state.catalog, state.models, state.device)
    from server.transcription import TranscriptionService

    state.transcription = TranscriptionService(state)
    from server.tts_service import TtsService

    state.tts = TtsService(state)
    if state.settings.wyoming_uri:  # first: its start can refuse (no key), before any worker has started
        from server.wyoming.handler import WyomingContext
        from server.wyoming.service import WyomingService

        context = WyomingContext(
            state.settings, state.accounts, state.capabilities, state.catalog, state.transcription, state.tts,
            state.settings.wyoming_api_key,
        )
        services.add(WyomingService(state.settings.wyoming_uri, context))
    from server.subtitle_jobs import SubtitleJobs

    state.subtitle_jobs = SubtitleJobs(state)
    services.add(state.subtitle_jobs)
    return services
