"""A transcription whose text arrives in pieces: `TranscriptionService.transcribe_file` run as a task, its
`on_segments` hook turned into an async stream of text deltas (the OpenAI API's `transcript.text.delta`
events, Wyoming's `transcript-chunk`s).

The hook fires on the decoding thread whenever a chunk and every chunk before it are decoded, so the deltas
come in transcript order while later chunks are still in the model. The billing is untouched: it is the
same single call, reserved before decoding and settled (or refunded) when it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from engines.assign import words_text
from engines.types import Segment
from server.accounts import Account
from server.stt_options import SttOptions
from server.transcription import Transcript, TranscriptionService, stt_json

_Item = tuple[Segment, ...] | None  # None: the transcription has ended (succeeded or failed)


def transcript_text(t: Transcript) -> str:
    """The whole text, as POST /stt's `text` spells it (what the deltas join to)."""
    return str(stt_json(t, SttOptions())["text"])


def segments_text(segments: tuple[Segment, ...]) -> str:
    """The text these segments add, spelled as the transcript's entries spell it."""
    parts = [words_text(s.words) if s.words else s.text.strip() for s in segments]
    return " ".join(p for p in parts if p)


class TranscriptFeed:
    """Start with `TranscriptFeed.start(...)`; iterate `deltas()` once, then read `task`'s result.

    Joined, the deltas equal the final transcript's text (each but the first starts with its space) unless
    dictionaries rewrite words afterwards, which the streaming front ends do not use."""

    def __init__(self, task: asyncio.Task[Transcript], queue: asyncio.Queue[_Item]) -> None:
        self.task = task
        self._queue = queue
        self._sent = False

    @classmethod
    def start(
        cls, service: TranscriptionService, account: Account, path: Path, options: SttOptions, *,
        kind: str = "stt", on_end: Callable[[], None] | None = None,
    ) -> TranscriptFeed:
        """`on_end` runs when the transcription has ended, whatever happened (e.g. removing the upload)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue()

        def on_segments(segments: tuple[Segment, ...]) -> None:  # on the decoding thread
            loop.call_soon_threadsafe(queue.put_nowait, segments)

        task = asyncio.ensure_future(service.transcribe_file(account, path, options, kind=kind, on_segments=on_segments))

        def ended(t: asyncio.Task[Transcript]) -> None:
            if on_end is not None:
                on_end()
            # Queued after every delta: those were scheduled before the decoding thread returned.
            queue.put_nowait(None)
            if not t.cancelled():
                t.exception()  # retrieved, so a failure that nobody reads is not logged as lost

        task.add_done_callback(ended)
        return cls(task, queue)

    async def deltas(self) -> AsyncIterator[str]:
        while (item := await self._queue.get()) is not None:
            text = segments_text(item)
            if text:
                yield (" " if self._sent else "") + text
                self._sent = True

    async def wait(self) -> None:
        """Until the transcription has ended (its outcome stays in `task`)."""
        await asyncio.wait({self.task})
