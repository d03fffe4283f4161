"""POST /stt through the HTTP API on real speech and the real bundled models: the spec's response shape,
the containers a client sends (made at test time from a real clip with PyAV), every error path, billing
(charged on success, nothing on failure), the dictionaries, language hints and translation.

Most accounts run Whisper tiny.en to keep CI fast; language and translation cases need multilingual base.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engines.wer import wer
from engines.wer import words as words_of
from tests.stt_helpers import (
    CLIP,
    CONTAINERS,
    account,
    error_of,
    ledger,
    leftover_uploads,
    make_media,
    post_stt,
)

pytestmark = pytest.mark.slow

ENTRY_KEYS = {"speaker", "text", "transcript", "startMs", "endMs", "durationMs", "language"}
WORD_KEYS = {"text", "startMs", "endMs", "confidence", "speaker"}
TOP_KEYS = {"text", "speakers", "transcript", "language", "languageProbability", "durationMs", "minutesUsed",
            "task", "context"}


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory, testdata: Path) -> Path:  # type: ignore[no-untyped-def]
    return make_media(tmp_path_factory.mktemp("media"), testdata)


# ---------------------------------------------------------------- the response, to the letter


def check_entries(body: dict, words: bool = False) -> None:
    entries = body["transcript"]
    assert entries
    prev_start = -1
    for e in entries:
        assert set(e) == ENTRY_KEYS | ({"words"} if words else set()), e
        assert e["speaker"] is None and e["transcript"] == e["text"] and e["text"].strip()
        assert 0 <= e["startMs"] < e["endMs"] <= body["durationMs"] + 50, e
        assert e["durationMs"] == e["endMs"] - e["startMs"]
        assert e["startMs"] >= prev_start
        prev_start = e["startMs"]
        assert e["language"] == body["language"]
        if words:
            assert e["words"]
            assert words_of(" ".join(w["text"] for w in e["words"])) == words_of(e["text"])
            for w in e["words"]:
                assert set(w) == WORD_KEYS and w["speaker"] is None
                assert e["startMs"] <= w["startMs"] <= w["endMs"] <= e["endMs"], (w, e)
                assert 0.0 <= w["confidence"] <= 1.0
    assert body["text"] == " ".join(e["text"] for e in entries)


async def test_response_shape_billing_and_ledger(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    key = await account(api)
    clip = testdata / "en" / "jfk.flac"  # 11 s
    r = await post_stt(api, key, clip)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == TOP_KEYS
    assert body["speakers"] == [] and body["task"] == "transcribe" and body["language"] == "en"
    assert 10_900 < body["durationMs"] < 11_100
    assert wer((testdata / "en" / "jfk.txt").read_text(), body["text"]) <= 0.1, body["text"]
    check_entries(body)
    assert body["context"] == {"terms": [], "translation_terms": []}
    # 11 s -> one 0.5 minute quantum, settled in the ledger.
    assert body["minutesUsed"] == 0.5
    assert await api.minutes(key) == pytest.approx(9.5)
    assert await ledger(api, key) == [("stt", "settled", 0.5)]
    assert leftover_uploads(api) == []

    # Word timings on request; the text is the same.
    r = await post_stt(api, key, clip, wordTimestamps="true")
    timed = r.json()
    check_entries(timed, words=True)
    assert timed["text"] == body["text"]

    # json=true: the structured transcript array itself, the same entries.
    r = await post_stt(api, key, clip, json="true")
    assert r.status_code == 200
    array = r.json()
    assert isinstance(array, list) and array == body["transcript"]
    assert all({"transcript", "text", "durationMs"} <= set(e) for e in array)
    assert await api.minutes(key) == pytest.approx(8.5)


async def test_minutes_are_quantized_up_to_half_minutes(api, media_dir: Path) -> None:  # type: ignore[no-untyped-def]
    key = await account(api)
    r = await post_stt(api, key, media_dir / "long.flac")
    body = r.json()
    assert r.status_code == 200, r.text
    assert 40_900 < body["durationMs"] < 41_100
    assert body["minutesUsed"] == 1.0 == math.ceil(body["durationMs"] / 30_000) * 0.5
    assert "americans" in words_of(body["text"])
    assert all(e["endMs"] <= 11_500 for e in body["transcript"])  # nothing invented in the silence
    assert await api.minutes(key) == pytest.approx(9.0)


@pytest.mark.parametrize("name,ctype", [(c[0], c[5]) for c in CONTAINERS])
async def test_containers_and_codecs(api, media_dir: Path, testdata: Path, name: str, ctype: str) -> None:  # type: ignore[no-untyped-def]
    key = await account(api)
    r = await post_stt(api, key, media_dir / name, ctype)
    assert r.status_code == 200, r.text
    body = r.json()
    assert 5_050 < body["durationMs"] < 5_250, body["durationMs"]
    assert wer((testdata / f"{CLIP}.txt").read_text(), body["text"]) <= 0.25, body["text"]
    assert body["minutesUsed"] == 0.5


async def test_real_mp4_video(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    key = await account(api)
    r = await post_stt(api, key, testdata / "video" / "nasa_13013.mp4")
    assert r.status_code == 200, r.text
    body = r.json()
    assert 12_900 < body["durationMs"] < 13_200  # the audio track ends at 13.06 s, before the video does
    said = words_of(body["text"])
    assert {"webb", "telescope", "goddard", "maryland"} <= set(said), body["text"]
    assert wer((testdata / "video" / "nasa_13013.txt").read_text(), body["text"]) <= 0.35, body["text"]


# ---------------------------------------------------------------- errors: each one free of charge


async def test_unsupported_and_missing_media(api, media_dir: Path, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    key = await account(api)
    err = error_of(await post_stt(api, key, media_dir / "notes.txt", "text/plain"), 415)
    assert "audio/*" in err["message"]
    # A media extension does not make a declared text/JSON type acceptable.
    error_of(await post_stt(api, key, testdata / "en" / "LJ001-0002.wav", "application/json"), 415)
    # Not multipart at all.
    r = await api.client.post("/stt", headers={"x-api-key": key}, json={"audio": "x"})
    error_of(r, 415)
    # Multipart without the `audio` file.
    r = await api.client.post("/stt", headers={"x-api-key": key}, files={"other": ("a.wav", b"RIFF", "audio/wav")})
    error_of(r, 400)
    r = await api.client.post("/stt", headers={"x-api-key": key}, data={"task": "transcribe"},
                              files={"x": ("", b"", "text/plain")})
    assert r.status_code == 400
    assert await api.minutes(key) == 10 and await ledger(api, key) == []
    assert leftover_uploads(api) == []


@pytest.mark.parametrize(
    "name,code",
    [("garbage.wav", "undecodable_media"), ("empty.wav", "empty_media"), ("no_samples.wav", "empty_media"),
     ("video_only.mp4", "empty_media")],
)
async def test_undecodable_or_empty_media_is_refused_free(api, media_dir: Path, name: str, code: str) -> None:  # type: ignore[no-untyped-def]
    key = await account(api)
    err = error_of(await post_stt(api, key, media_dir / name), 422)
    assert err["code"] == code
    assert await api.minutes(key) == 10 and await ledger(api, key) == []
    assert leftover_uploads(api) == []


async def test_bad_options_are_400(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    key = await account(api)
    clip = testdata / "en" / "LJ001-0002.wav"
    for fields, fragment in [
        ({"task": "summarize"}, "task"),
        ({"languageHints": "english!"}, "language code"),
        ({"wordTimestamps": "maybe"}, "wordTimestamps"),
        ({"transcriptionTerms": '["Speech7",'}, "transcriptionTerms"),
        ({"context": "[1, 2]"}, "context"),
    ]:
        err = error_of(await post_stt(api, key, clip, **fields), 400)
        assert fragment in err["message"], (fields, err)
    assert await api.minutes(key) == 10 and await ledger(api, key) == []


class TestUploadLimit:
    @pytest.fixture
    def api_settings(self, api_settings):  # type: ignore[no-untyped-def]
        """A 0.25 MB /stt limit here (the 200 MB default would need huge uploads to cross)."""
        return api_settings.with_(stt_max_upload_mb=0.25)

    async def test_over_the_limit_is_413_while_streaming(self, api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
        key = await account(api)
        r = await post_stt(api, key, testdata / "en" / "jfk.flac")  # 1.1 MB
        assert error_of(r, 413)["message"].startswith("File too large")

        boundary = "s7testboundary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"big.wav\"\r\n"
                "Content-Type: audio/wav\r\n\r\n").encode()
        chunk, total = b"\0" * 65536, 400  # 25 MB offered, 0.25 MB allowed
        sent = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            yield head
            for _ in range(total):
                sent += 1
                yield chunk
            yield f"\r\n--{boundary}--\r\n".encode()

        ctype = f"multipart/form-data; boundary={boundary}"
        # Chunked, no length declared: the server stops reading once the limit is crossed.
        r = await api.client.post("/stt", headers={"x-api-key": key, "content-type": ctype}, content=body())
        assert error_of(r, 413)["code"] == "file_too_large"
        assert sent <= 0.25 * 1024 * 1024 / len(chunk) + 2, sent  # stopped at the limit, not at the end
        # A declared length far over the limit is refused before the body is read at all.
        sent = 0
        size = str(len(head) + total * len(chunk) + 64)
        r = await api.client.post(
            "/stt", headers={"x-api-key": key, "content-type": ctype, "content-length": size}, content=body()
        )
        assert error_of(r, 413)["code"] == "file_too_large" and sent == 0
        assert await api.minutes(key) == 10
        # Under the limit is fine with the same settings.
        r = await post_stt(api, key, testdata / "en" / "LJ001-0002.wav")  # 84 KB
        assert r.status_code == 200, r.text
        assert await ledger(api, key) == [("stt", "settled", 0.5)]
        assert leftover_uploads(api) == []


async def test_account_states(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    clip = testdata / "en" / "jfk.flac"  # needs 0.5 min
    off = (await api.account(sttApiKey="off"))["apiKey"]
    assert error_of(await post_stt(api, off, clip), 403)["code"] == "stt_not_configured"
    broke = await account(api, startingMinutes=0)
    assert error_of(await post_stt(api, broke, clip), 402)["code"] == "insufficient_minutes"
    short = await account(api, startingMinutes=0.25)
    err = error_of(await post_stt(api, short, clip), 402)
    assert "0.5" in err["message"]
    assert await api.minutes(short) == 0.25 and await ledger(api, short) == []
    assert await api.minutes(off) == 10 and await ledger(api, off) == []
    # A disabled account is refused like a bad key would be, before any work.
    acct = await api.account(sttApiKey="whisper:tiny.en")
    r = await api.client.patch(f"/accounts/{acct['id']}", json={"apiKey": api.settings.admin_key, "disabled": True})
    assert r.status_code == 200, r.text
    assert (await post_stt(api, acct["apiKey"], clip)).status_code in {401, 403}


async def test_engine_failure_refunds_the_reservation(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    key = await account(api)  # tiny.en cannot transcribe German
    err = error_of(await post_stt(api, key, testdata / "de" / "recorded_sample_02.wav", languageHints="de"), 422)
    assert "English-only" in err["message"]
    assert await api.minutes(key) == 10
    assert await ledger(api, key) == [("stt", "refunded", 0.5)]


async def test_accounts_see_only_their_own_usage(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = await api.account(sttApiKey="whisper:tiny.en"), await api.account(sttApiKey="whisper:tiny.en")
    r = await post_stt(api, a["apiKey"], testdata / "en" / "LJ001-0002.wav")
    assert r.status_code == 200
    assert await api.minutes(a["apiKey"]) == 9.5 and await api.minutes(b["apiKey"]) == 10
    assert await ledger(api, b["apiKey"]) == []
    # Neither the ledger nor the account of another is readable with a user key.
    for path in (f"/accounts/{a['id']}/usage", f"/accounts/{a['id']}"):
        r = await api.client.get(path, headers={"x-api-key": b["apiKey"]})
        assert r.status_code in {401, 403}, (path, r.text)
    own = (await api.client.get("/account", headers={"x-api-key": b["apiKey"]})).json()
    assert own["id"] == b["id"] and own["minutes"] == 10


# ---------------------------------------------------------------- languages, translation, dictionaries


async def test_language_hints_prefer_and_language_forces(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    key = await account(api, "base")
    clip = testdata / "de" / "recorded_sample_02.wav"  # "Der Prophet spricht stets in Gleichnissen."
    detected = (await post_stt(api, key, clip)).json()
    assert detected["language"] == "de" and detected["languageProbability"] > 0.8
    assert "spricht" in words_of(detected["text"])
    assert all(e["language"] == "de" for e in detected["transcript"])
    preferred = (await post_stt(api, key, clip, languageHints='["fr", "de"]')).json()
    assert preferred["language"] == "de"
    # The reference's `languageHints: ["sl"]` on speech in another language is a hint, not an order.
    hinted = (await post_stt(api, key, clip, languageHints='["sl"]')).json()
    assert hinted["language"] == "de" and "spricht" in words_of(hinted["text"])
    english = (await post_stt(api, key, testdata / "en" / "jfk.flac", languageHints='["sl"]')).json()
    assert english["language"] == "en" and "country" in words_of(english["text"])
    forced = (await post_stt(api, key, clip, language="en")).json()
    assert forced["language"] == "en" and forced["languageProbability"] == 1.0


async def test_a_request_may_choose_another_installed_model(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    key = await account(api)  # the account's own model, tiny.en, is English-only
    clip = testdata / "de" / "recorded_sample_02.wav"  # "Der Prophet spricht stets in Gleichnissen."
    body = (await post_stt(api, key, clip, model="base")).json()
    assert body["language"] == "de" and "spricht" in words_of(body["text"]), body
    assert error_of(await post_stt(api, key, clip, model="large-v9"), 400)["code"] == "unknown_model"
    assert "piper" in error_of(await post_stt(api, key, clip, model="piper:en_US-joe-medium"), 400)["message"]
    off = (await api.account(sttApiKey="off"))["apiKey"]
    assert error_of(await post_stt(api, off, clip, model="base"), 403)["code"] == "stt_not_configured"
    assert await ledger(api, key) == [("stt", "settled", 0.5)]  # the refusals cost nothing


async def test_translate_to_english_with_translation_terms(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    key = await account(api, "base")
    clip = testdata / "de" / "recorded_sample_01.wav"  # "Das Teilen eines Benutzerkontos ist ..."
    plain = (await post_stt(api, key, clip, task="translate")).json()
    assert plain["task"] == "translate" and plain["language"] == "de"
    assert all(e["language"] == "en" for e in plain["transcript"])
    assert "account" in words_of(plain["text"]) and "benutzerkontos" not in words_of(plain["text"]), plain["text"]
    # The translation dictionary is enforced in the English output: "Benutzerkonto" must read "user account".
    assert "user account" not in plain["text"].lower()
    r = await post_stt(api, key, clip, task="translate", translationTerms="Benutzerkonto=user account")
    body = r.json()
    assert "user account" in body["text"].lower(), body["text"]
    assert body["context"]["translation_terms"] == [{"source": "Benutzerkonto", "target": "user account"}]


async def test_dictionary_fields_merge_into_the_given_context(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    key = await account(api)
    r = await post_stt(
        api, key, testdata / "en" / "LJ001-0002.wav",
        context=json.dumps({"general": [{"key": "domain", "value": "books"}], "terms": ["Gutenberg"]}),
        transcriptionTerms='["Speech7", "Soniox"]', customDictionary="Quilter; Webb", terms="Goddard",
        customTerms="Greenbelt\nGutenberg", translationTerms="račun=invoice, hvala: thanks",
        translationDictionary='[{"source": "račun", "target": "bill"}]',
    )
    assert r.status_code == 200, r.text
    ctx = r.json()["context"]
    assert ctx["general"] == [{"key": "domain", "value": "books"}]  # kept, not replaced
    assert ctx["terms"] == ["Gutenberg", "Speech7", "Soniox", "Quilter", "Webb", "Goddard", "Greenbelt"]
    assert ctx["translation_terms"] == [{"source": "račun", "target": "invoice"}, {"source": "hvala", "target": "thanks"}]


async def test_a_misspelled_term_comes_out_right_with_the_dictionary(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    # tiny.en hears "NASA's Goddard Space Flight Center" as "Ness's Goddard ..." on its own.
    clip, term, misspelling = "video/nasa_13013.mp4", "NASA", "Ness"
    key = await account(api)
    plain = (await post_stt(api, key, testdata / clip)).json()
    assert term not in plain["text"], plain["text"]
    assert misspelling in plain["text"], plain["text"]
    fixed = (await post_stt(api, key, testdata / clip, customDictionary=term, wordTimestamps="true")).json()
    assert term in fixed["text"] and misspelling not in fixed["text"], fixed["text"]
    assert any(term in w["text"] for e in fixed["transcript"] for w in e["words"])


async def test_dictionary_fixes_german_terms_too(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    # base hears "Der Prophet spricht stets in Gleichnissen." as "Der Profit spricht ...".
    key = await account(api, "base")
    clip = testdata / "de" / "recorded_sample_02.wav"
    plain = (await post_stt(api, key, clip, languageHints="de")).json()
    assert "Profit" in plain["text"], plain["text"]
    fixed = (await post_stt(api, key, clip, languageHints="de", transcriptionTerms='["Prophet"]')).json()
    assert "Prophet" in fixed["text"] and "Profit" not in fixed["text"], fixed["text"]


# ---------------------------------------------------------------- diarization


def reference_turns(rttm: Path) -> list[tuple[float, float, str]]:
    rows = [line.split() for line in rttm.read_text().splitlines() if line.startswith("SPEAKER")]
    return [(float(r[3]), float(r[3]) + float(r[4]), r[7]) for r in rows]


async def test_diarized_response_uses_speaker_labels(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    """Two people speak in sample.wav: the response names exactly two speakers with the labels sent (speaker 1 is
    whoever speaks first) and gives most words to the speaker the reference (RTTM) says spoke them, under the
    better of the two ways to pair the labels with the reference's speakers (as DER scoring pairs them)."""
    key = await account(api)
    clip = testdata / "diarization" / "sample.wav"
    r = await post_stt(api, key, clip, enableSpeakerDiarization="true", speaker1Label="Alice", speaker2Label="Bob",
                       wordTimestamps="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(s["id"], s["label"]) for s in body["speakers"]] == [(1, "Alice"), (2, "Bob")]
    for e in body["transcript"]:
        assert e["speaker"] in ("Alice", "Bob") and e["transcript"] == f"{e['speaker']}: {e['text']}"
    assert {e["speaker"] for e in body["transcript"]} == {"Alice", "Bob"}
    assert all(line.split(": ", 1)[0] in ("Alice", "Bob") for line in body["text"].split("\n"))
    words = [w for e in body["transcript"] for w in e["words"]]
    assert words[0]["speaker"] == "Alice"
    # Words spoken inside one reference turn, where nobody else speaks.
    turns = reference_turns(testdata / "diarization" / "sample.rttm")
    judged: list[tuple[str, str]] = []  # (label given, reference speaker)
    for w in words:
        start, end = w["startMs"] / 1000, w["endMs"] / 1000
        speaking = {who for a, b, who in turns if a < end and start < b}
        if len(speaking) == 1:
            judged.append((w["speaker"], speaking.pop()))
    first, second = sorted({who for _, _, who in turns})
    agreed = max(sum((given, who) in pairing for given, who in judged)
                 for pairing in ({("Alice", first), ("Bob", second)}, {("Alice", second), ("Bob", first)}))
    assert len(judged) >= 30 and agreed / len(judged) >= 0.85, (agreed, len(judged))
