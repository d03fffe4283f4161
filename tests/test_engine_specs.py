"""Provider keys as engine selection (server/engine_specs.py), the pure rules without a server."""

from __future__ import annotations

import pytest

from server.engine_specs import FOREIGN, SpecError, display, mask, resolve, to_store

WHISPER = ["base", "tiny.en"]
PIPER = ["en_US-joe-medium"]


@pytest.mark.parametrize(
    "kind,value,stored",
    [
        ("stt", None, None),
        ("stt", "", "off"),
        ("stt", "  Off ", "off"),
        ("stt", "whisper:base", "whisper:base"),
        ("stt", " Whisper : tiny.en ", "whisper:tiny.en"),
        ("stt", "tiny.en", "whisper:tiny.en"),  # a bare installed name
        ("tts", "en_US-joe-medium", "piper:en_US-joe-medium"),
        ("stt", "your-stt-provider-key", FOREIGN + "your…"),  # the reference's example value
        ("stt", "large-v3", FOREIGN + "…"),  # a bare name that is not installed is somebody's key
        ("tts", "base", FOREIGN + "…"),  # a Whisper model name means nothing to TTS
        ("stt", "https://api.example.com/key", FOREIGN + "http…"),
    ],
)
def test_what_is_stored(kind: str, value: str | None, stored: str | None) -> None:
    assert to_store(kind, value, WHISPER if kind == "stt" else PIPER) == stored


@pytest.mark.parametrize(
    "kind,value,fragment",
    [
        ("stt", "whisper:large-v9", "not installed"),
        ("stt", "whisper", "names no model"),
        ("stt", "piper:en_US-joe-medium", "piper does not serve STT"),
        ("tts", "whisper:base", "whisper does not serve TTS"),
        ("tts", "PIPER:xx", "not installed"),
    ],
)
def test_values_naming_an_unusable_local_engine_are_refused(kind: str, value: str, fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        to_store(kind, value, WHISPER if kind == "stt" else PIPER)


def test_masks_never_show_most_of_a_key() -> None:
    assert mask("your-stt-provider-key") == "your…"
    assert mask("abcdefghijk") == "…"  # under 12 characters nothing is shown
    assert display(to_store("stt", "sk-0123456789abcdef", WHISPER)) == "sk-0…"
    assert display("whisper:base") == "whisper:base" and display("off") == "off" and display(None) is None


def test_resolution_of_what_is_stored() -> None:
    default = "whisper:base"
    sel = resolve(None, default, "stt", WHISPER)
    assert (sel.configured, sel.spec, sel.source) == (True, "whisper:base", "default")
    sel = resolve(FOREIGN + "your…", default, "stt", WHISPER)
    assert (sel.configured, sel.spec, sel.source) == (True, "whisper:base", "default")
    sel = resolve("whisper:tiny.en", default, "stt", WHISPER)
    assert (sel.spec, sel.source) == ("whisper:tiny.en", "account")
    assert resolve("off", default, "stt", WHISPER).configured is False
    # A server whose default is off: a hosted provider's key then configures nothing.
    assert resolve(FOREIGN + "…", "off", "stt", WHISPER).configured is False
    # A stored model that has since been removed is an error the request reports (503), not a fallback.
    with pytest.raises(SpecError, match="not installed"):
        resolve("whisper:small", default, "stt", WHISPER)


def test_ctranslate2_cpu_threads_follow_the_cores_this_process_may_use() -> None:
    from engines.manager import ct2_threads

    assert ct2_threads(0, 2) == 2  # not CTranslate2's fixed 4 on a 2-core machine
    assert ct2_threads(0, 16) == 4  # more threads per call only add synchronisation; requests run in parallel
    assert ct2_threads(0, 1) == 1
    assert ct2_threads(3, 2) == 3  # S7_CPU_THREADS wins
