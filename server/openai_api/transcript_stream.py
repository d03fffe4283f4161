"""`stream=true`: the transcription as server-sent events, `transcript.text.delta` per decoded run of segments
and one `transcript.text.done` with the whole text (what OpenAI's streaming transcription sends).

The work is a `TranscriptFeed`: the ordinary `transcribe_file` call (one reservation, settled or refunded as
for POST /stt) whose deltas arrive while later chunks are still being decoded. The response starts only
with the first delta (or the end), so a refusal that comes before any text (no minutes, undecodable media,
an English-only model asked to translate) is still a plain JSON error with its status; a failure after that
is an `{"error": ...}` event, which the OpenAI SDKs raise as APIError.

A client that leaves mid-stream does not stop the work: like POST /stt, the transcription runs to its end and
is billed, and the response waits for it, so the upload is removed only once the decoder is done with it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from server.accounts import Account
from server.openai_api.errors import as_api_error, error_body
from server.stt_options import SttOptions
from server.transcript_feed import TranscriptFeed, transcript_text
from server.transcription import TranscriptionService
from server.uploads import ParsedUpload


def sse(payload: dict) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


class TranscriptStreamResponse(StreamingResponse):
    def __init__(self, feed: TranscriptFeed, first: str | None, rest: AsyncIterator[str]) -> None:
        super().__init__(
            self._events(feed, first, rest), media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._feed.wait()  # a client that left: the work still finishes, is billed, is cleaned up

    @staticmethod
    async def _events(feed: TranscriptFeed, first: str | None, rest: AsyncIterator[str]) -> AsyncIterator[bytes]:
        if first is not None:
            yield sse({"type": "transcript.text.delta", "delta": first})
            async for delta in rest:
                yield sse({"type": "transcript.text.delta", "delta": delta})
        exc = feed.task.exception()
        if exc is not None:
            yield sse(error_body(as_api_error(exc)))
            return
        yield sse({"type": "transcript.text.done", "text": transcript_text(feed.task.result())})


async def stream_transcript(
    service: TranscriptionService, account: Account, upload: ParsedUpload, options: SttOptions
) -> TranscriptStreamResponse:
    """Takes ownership of `upload`: it is removed when the transcription ends, whatever happens."""
    assert upload.media is not None
    feed = TranscriptFeed.start(service, account, upload.media.path, options, on_end=upload.discard)
    rest = feed.deltas()
    first = await anext(rest, None)
    if first is None and (exc := feed.task.exception()) is not None:
        raise exc  # nothing sent yet: a plain error response with its own status
    return TranscriptStreamResponse(feed, first, rest)
