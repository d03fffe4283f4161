"""Two-way translation for realtime sessions: speech identified as language A is shown on pane A and
translated onto pane B, and vice versa. Translation happens per utterance (at an endpoint, a sentence end,
or the end of the stream), because translating word by word reads badly.

Into English, Whisper's own translate task runs on the utterance's audio (no extra weights) unless a
CTranslate2 model serves the pair; other directions need a CTranslate2 model (engines.translation). A
session whose pair lacks a model for one direction still runs: the other direction is served, and the
session's first message (`intro`) says which direction is missing and how to install it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.types import SAMPLE_RATE, StreamUpdate, SttEngine, SttRequest, TranslationRequest, Translator
from server.inference import Inference

log = logging.getLogger("speech7.two_way")
KEEP_AUDIO_S = 120.0
SENTENCE_END = (".", "?", "!", "。", "？", "！")


@dataclass
class Pane:
    code: str
    final: list[str] = field(default_factory=list)
    non_final: str = ""

    def json(self) -> dict[str, str]:
        return {"code": self.code, "finalText": "".join(self.final).strip(), "nonFinalText": self.non_final.strip()}


@dataclass
class Pending:
    language: str
    text: str = ""
    start_ms: int = 0
    end_ms: int = 0


def pick_language(token_language: str | None, a: str, b: str, fallback: str) -> str:
    """A token's language mapped onto the session's two (identification is restricted to A and B)."""
    return token_language if token_language in (a, b) else fallback


class TwoWay:
    """`translator` loads the CT2 translator on first use; `pairs` are the directions it serves."""

    def __init__(
        self, engine: SttEngine, translator: Callable[[], Translator], pairs: Collection[tuple[str, str]], a: str,
        b: str, terms: tuple[tuple[str, str], ...], inference: Inference,
    ) -> None:
        self.engine = engine
        self._translator = translator
        self._pairs = frozenset(pairs)
        self._inference = inference
        self.a, self.b = a, b
        self.panes = {a: Pane(a), b: Pane(b)}
        self.terms = terms
        self.pending: Pending | None = None
        self.last_language = a
        self._audio = np.zeros(0, dtype=np.float32)
        self._audio_start = 0  # absolute sample index of self._audio[0]

    def add_audio(self, pcm: np.ndarray) -> None:
        self._audio = np.concatenate([self._audio, pcm.astype(np.float32, copy=False)])
        excess = len(self._audio) - int(KEEP_AUDIO_S * SAMPLE_RATE)
        if excess > 0:
            self._audio = self._audio[excess:]
            self._audio_start += excess

    def _slice(self, start_ms: int, end_ms: int) -> np.ndarray:
        s = max(0, int(start_ms * SAMPLE_RATE / 1000) - self._audio_start - int(0.2 * SAMPLE_RATE))
        e = max(0, int(end_ms * SAMPLE_RATE / 1000) - self._audio_start + int(0.3 * SAMPLE_RATE))
        return self._audio[s:e]

    async def update(self, update: StreamUpdate, flush: bool = False) -> dict[str, Any]:
        for t in update.tokens:
            if not t.is_final:
                continue
            lang = pick_language(t.language, self.a, self.b, self.last_language)
            if self.pending is not None and self.pending.language != lang:
                await self._translate_pending()
            if self.pending is None:
                self.pending = Pending(lang, start_ms=t.start_ms)
            self.pending.text += t.text
            self.pending.end_ms = t.end_ms
            self.panes[lang].final.append(t.text)
            self.last_language = lang
            if t.text.strip().endswith(SENTENCE_END):
                await self._translate_pending()
        if update.endpoint or flush:
            await self._translate_pending()
        for pane in self.panes.values():
            pane.non_final = ""
        non_final = [t for t in update.tokens if not t.is_final]
        if non_final:
            lang = pick_language(non_final[0].language, self.a, self.b, self.last_language)
            self.panes[lang].non_final = "".join(t.text for t in non_final)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        """The translation summary every message of the session carries (the reference's shape)."""
        return {
            "type": "two_way_transcription",
            "languageA": self.panes[self.a].json(),
            "languageB": self.panes[self.b].json(),
        }

    def intro(self, missing: list[str]) -> dict[str, Any]:
        """The first message of a session whose pair lacks a translation model for some direction."""
        return {
            "tokens": [], "final_audio_proc_ms": 0, "total_audio_proc_ms": 0, **self.summary(),
            "missingDirections": missing,
            "message": f"No translation model serves {', '.join(missing)} on this server: speech in "
            f"{' or '.join(d.split('->')[0] for d in missing)} is transcribed but not translated. To translate it, "
            "install a CTranslate2 model for that pair (scripts/models import argos FILE.argosmodel, or a "
            "converted translator under models/translation/; see README) and restart the server.",
        }

    async def _translate_pending(self) -> None:
        p, self.pending = self.pending, None
        if p is None or not p.text.strip():
            return
        target = self.b if p.language == self.a else self.a
        try:
            text = await self._inference.run(self._translate, p, target)
        except Exception:
            log.exception("translation %s->%s failed", p.language, target)
            return
        if text:
            pane = self.panes[target]
            pane.final.append((" " if pane.final else "") + text.strip())

    def _translate(self, p: Pending, target: str) -> str | None:
        if (p.language, target) in self._pairs:
            res = self._translator().translate(
                TranslationRequest((p.text.strip(),), p.language, target, self.terms)
            )
            return res.texts[0]
        if target == "en":
            audio = self._slice(p.start_ms, p.end_ms)
            if len(audio) < SAMPLE_RATE // 4:
                return None
            result = self.engine.transcribe(
                SttRequest(audio=audio, language_hints=(p.language,), task="translate", word_timestamps=False, vad=False)
            )
            text = result.text
            if self.terms:
                from engines.translation_terms import enforce_translation_terms

                text = enforce_translation_terms(p.text, text, self.terms)
            return text
        return None  # a direction no model serves: the session's first message said so
