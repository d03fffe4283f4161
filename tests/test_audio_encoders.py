"""engines.audio_encoders: every output format streams (bytes come out while PCM is still going in) and the
pieces join into a file PyAV decodes back to the same length at the format's rate. Plus the pure model and
voice name resolution of the OpenAI-compatible API."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from engines.audio_encoders import FORMATS, open_encoder
from engines.types import EngineError
from server.openai_api.errors import OpenAIError
from server.openai_api.models import stt_model, tts_voice

VOICE_RATE = 22050


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * VOICE_RATE)) / VOICE_RATE
    return (0.4 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_format_streams_and_decodes_back(name):
    enc = open_encoder(name, VOICE_RATE)
    pieces = [enc.encode(tone(1.0)) for _ in range(3)]
    tail = enc.flush()
    assert all(pieces), "every second of audio already produced bytes"  # streamed, not held to the end
    raw = b"".join(pieces) + tail
    fmt = FORMATS[name]
    rate = fmt.sample_rate or VOICE_RATE
    opts = {"sample_rate": str(rate), "ch_layout": "mono"} if name == "pcm" else {}
    with av.open(io.BytesIO(raw), format="s16le" if name == "pcm" else None, options=opts) as c:
        frames = list(c.decode(c.streams.audio[0]))
    assert frames[0].sample_rate == rate
    assert sum(f.samples for f in frames) / rate == pytest.approx(3.0, abs=0.1)  # codec delay/padding only


def test_raw_pcm_at_the_voice_rate_is_the_samples_themselves():
    pcm = tone(0.5)
    enc = open_encoder("pcm", VOICE_RATE, sample_rate=VOICE_RATE)
    out = np.frombuffer(enc.encode(pcm) + enc.flush(), "<i2")
    assert out.size == pcm.size and np.abs(out / 32767 - pcm).max() < 1e-3


def test_unknown_format_and_use_after_flush_are_errors():
    with pytest.raises(EngineError, match="unknown audio format"):
        open_encoder("ogg", VOICE_RATE)
    enc = open_encoder("flac", VOICE_RATE)
    enc.flush()
    with pytest.raises(EngineError):
        enc.encode(tone(0.1))


INSTALLED_STT = ["base", "tiny.en"]
VOICES = ["en_US-joe-medium", "de_DE-thorsten-medium"]


@pytest.mark.parametrize(
    "name, expected",
    [("whisper-1", None), ("gpt-4o-mini-transcribe", None), ("WHISPER", None), ("tiny.en", "tiny.en"),
     ("whisper:base", "base")],
)
def test_stt_model_names(name, expected):
    assert stt_model(name, INSTALLED_STT) == expected


def test_stt_model_unknown_or_missing():
    with pytest.raises(OpenAIError) as err:
        stt_model("large-v3", INSTALLED_STT)
    assert (err.value.status, err.value.param) == (404, "model") and "whisper:tiny.en" in err.value.message
    with pytest.raises(OpenAIError) as err:
        stt_model(None, INSTALLED_STT)
    assert (err.value.status, err.value.code) == (400, "missing_required_parameter")


@pytest.mark.parametrize(
    "model, voice, expected",
    [
        ("tts-1", "alloy", None),  # OpenAI's names: the account's voice
        ("gpt-4o-mini-tts", {"id": "coral"}, None),
        ("tts-1", "de_DE-thorsten-medium", "de_DE-thorsten-medium"),  # an installed voice wins
        ("piper:de_DE-thorsten-medium", "alloy", "de_DE-thorsten-medium"),  # the model names the voice
        ("en_US-joe-medium", "piper:de_DE-thorsten-medium", "de_DE-thorsten-medium"),
    ],
)
def test_tts_voice_names(model, voice, expected):
    assert tts_voice(model, voice, VOICES) == expected


def test_tts_voice_refusals():
    with pytest.raises(OpenAIError) as err:
        tts_voice("tts-1", "robot", VOICES)
    assert err.value.param == "voice" and "alloy" in err.value.message
    with pytest.raises(OpenAIError) as err:
        tts_voice("piper:xx_XX-nobody", "alloy", VOICES)
    assert (err.value.status, err.value.code) == (404, "model_not_found")
