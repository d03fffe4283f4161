"""POST /subtitle through the HTTP API on real speech: SRT/WebVTT structure and limits, clamping, upload
limits, billing, speaker labels. The account runs Whisper tiny.en to keep CI fast."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from server.settings import Settings

pytestmark = pytest.mark.slow

STAMP = r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d)"
TIMING = re.compile(rf"^{STAMP} --> {STAMP}$")


@dataclass(frozen=True)
class ParsedCue:
    index: int | None
    start_ms: int
    end_ms: int
    lines: tuple[str, ...]


def _ms(h: str, m: str, s: str, ms: str) -> int:
    return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(ms)


def parse_subtitles(text: str, fmt: str = "srt") -> list[ParsedCue]:
    """A strict reader: every block must be [index,] timing, at least one text line."""
    if fmt == "vtt":
        assert text.startswith("WEBVTT\n\n"), text[:50]
        text = text[len("WEBVTT\n\n") :]
    assert text.endswith("\n") and "\r" not in text
    cues: list[ParsedCue] = []
    for block in text.strip("\n").split("\n\n"):
        rows = block.split("\n")
        index = None
        if fmt == "srt":
            assert rows[0].isdigit(), f"bad index line in {block!r}"
            index, rows = int(rows[0]), rows[1:]
        m = TIMING.match(rows[0])
        assert m, f"bad timing line in {block!r}"
        lines = tuple(rows[1:])
        assert lines and all(line.strip() for line in lines), f"empty cue text in {block!r}"
        cues.append(ParsedCue(index, _ms(*m.groups()[:4]), _ms(*m.groups()[4:]), lines))
    return cues


def check_cues(cues: list[ParsedCue], max_chars: int, max_lines: int, fmt: str = "srt") -> None:
    """The limits a viewer relies on: order, sizes, and reading time (>= ~1 s unless the next cue starts)."""
    assert cues
    if fmt == "srt":
        assert [c.index for c in cues] == list(range(1, len(cues) + 1))
    for i, c in enumerate(cues):
        assert c.end_ms > c.start_ms, c
        assert len(c.lines) <= max_lines, c
        assert all(len(line) <= max_chars for line in c.lines), c
        if i:
            assert c.start_ms > cues[i - 1].start_ms, (cues[i - 1], c)
        if i + 1 < len(cues):
            nxt = cues[i + 1]
            assert c.end_ms <= nxt.start_ms, (c, nxt)
            # Shorter than a second only where the next cue already starts.
            assert c.end_ms - c.start_ms >= 1000 or c.end_ms == nxt.start_ms, (c, nxt)
        else:
            assert c.end_ms - c.start_ms >= 1000, c


def words_of(cues: list[ParsedCue]) -> list[str]:
    text = " ".join(" ".join(c.lines) for c in cues)
    return re.findall(r"[a-z']+", text.lower())


async def tiny_account(api) -> str:  # type: ignore[no-untyped-def]
    return (await api.account(sttApiKey="whisper:tiny.en"))["apiKey"]


async def post_subtitle(api, key: str, path: Path, ctype: str = "audio/wav", **fields: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    with open(path, "rb") as fh:
        return await api.client.post(
            "/subtitle", headers={"x-api-key": key}, files={"audio": (path.name, fh, ctype)}, data=fields
        )


async def test_srt_on_speech_respects_limits_and_is_billed(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    key = await tiny_account(api)
    clip = testdata / "en" / "LJ001-0001.wav"  # 9.7 s, one long sentence
    r = await post_subtitle(api, key, clip)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-subrip")
    assert 'filename="LJ001-0001.srt"' in r.headers["content-disposition"]
    cues = parse_subtitles(r.text)
    check_cues(cues, 70, 2)
    said = words_of(cues)
    expected = set(re.findall(r"[a-z]+", (testdata / "en" / "LJ001-0001.txt").read_text().lower()))
    assert len([w for w in said if w in expected]) >= 0.7 * len(said), said
    # Billed like /stt: the media's duration rounded up to 0.5 min, one ledger row of kind "subtitle".
    assert float(r.headers["x-minutes-used"]) == 0.5
    assert 9000 < int(r.headers["x-duration-ms"]) < 10500
    assert await api.minutes(key) == pytest.approx(9.5)
    acct = (await api.client.get("/account", headers={"x-api-key": key})).json()
    ledger = (await api.client.get(f"/accounts/{acct['id']}/usage", headers={"x-api-key": api.settings.admin_key})).json()
    assert [(u["kind"], u["status"], u["minutes"]) for u in ledger["usage"] if u["kind"] != "credit"] == [
        ("subtitle", "settled", 0.5)
    ]

    # Narrow lines: the same speech is cut into more, smaller cues, every line within 30 characters.
    r = await post_subtitle(api, key, clip, maxCharsPerLine="30", maxLines="1")
    narrow = parse_subtitles(r.text)
    check_cues(narrow, 30, 1)
    assert len(narrow) > len(cues)
    assert words_of(narrow) == said


async def test_mp4_video_and_webvtt(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    key = await tiny_account(api)
    video = testdata / "video" / "nasa_13013.mp4"
    r = await post_subtitle(api, key, video, ctype="video/mp4", maxCharsPerLine="42")
    assert r.status_code == 200, r.text
    cues = parse_subtitles(r.text)
    check_cues(cues, 42, 2)
    said = " ".join(words_of(cues))
    for word in ("optical", "science", "telescope", "maryland"):
        assert word in said, said
    assert cues[-1].end_ms <= 13_100  # the video is 13.06 s long

    r = await post_subtitle(api, key, video, ctype="video/mp4", maxCharsPerLine="42", format="vtt")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/vtt")
    assert r.headers["content-disposition"].endswith('nasa_13013.vtt"')
    vtt = parse_subtitles(r.text, "vtt")
    check_cues(vtt, 42, 2, "vtt")
    assert [(c.start_ms, c.end_ms, c.lines) for c in vtt] == [(c.start_ms, c.end_ms, c.lines) for c in cues]
    # The dictionary fields of /stt reach the engine: a made-up spelling of a word in the video wins.
    assert "goddart" not in words_of(cues)
    r = await post_subtitle(api, key, video, ctype="video/mp4", customDictionary='["Goddart"]')
    assert r.status_code == 200, r.text
    assert "goddart" in words_of(parse_subtitles(r.text))
    # Three 13 s requests: 0.5 min each.
    assert await api.minutes(key) == pytest.approx(8.5)


async def test_upload_limits_and_media_types(tmp_path: Path, models_root: Path, testdata: Path) -> None:
    from server.app import create_app
    from tests.conftest import ADMIN_KEY, Api

    settings = Settings(warmup=False, data_dir=tmp_path / "data", admin_key=ADMIN_KEY, models_dir=models_root, subtitle_max_upload_mb=0.5)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=300) as c:
            api = Api(app, c, settings)
            key = await tiny_account(api)
            big = testdata / "en" / "jfk.flac"  # 1.1 MB > 0.5 MB
            r = await post_subtitle(api, key, big, ctype="audio/flac")
            assert r.status_code == 413, r.text
            assert r.json()["error"]["code"] == "file_too_large"
            # /stt keeps its own (larger) limit: the subtitle limit is specific to /subtitle.
            with open(big, "rb") as fh:
                r = await c.post("/stt", headers={"x-api-key": key}, files={"audio": ("jfk.flac", fh, "audio/flac")})
            assert r.status_code == 200, r.text
            r = await c.post(
                "/subtitle", headers={"x-api-key": key}, files={"audio": ("notes.txt", b"not media at all", "text/plain")}
            )
            assert r.status_code == 415, r.text
            r = await c.post("/subtitle", headers={"x-api-key": key}, data={"maxLines": "2"})
            assert r.status_code in (400, 415), r.text
            r = await c.post("/subtitle", files={"audio": ("a.wav", b"RIFF", "audio/wav")})
            assert r.status_code == 401
            assert await api.minutes(key) == pytest.approx(9.5)  # only the /stt call was billed
            assert [p for p in (settings.data_dir / "tmp").rglob("*") if p.is_file()] == []  # refused: no file left


async def test_not_enough_minutes_is_402(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    key = (await api.account(sttApiKey="whisper:tiny.en", startingMinutes=0))["apiKey"]
    r = await post_subtitle(api, key, testdata / "en" / "LJ001-0002.wav")
    assert r.status_code == 402, r.text


async def test_speaker_labels_with_diarization(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    """With diarization on, a cue starts with the speaker's label whenever the speaker changes (and only then),
    using speakerNLabel names; the speakers are the ones /stt reports for the same file."""
    key = (await api.account(sttApiKey="whisper:tiny.en", startingMinutes=30))["apiKey"]
    clip = testdata / "diarization" / "sample.wav"  # 30 s, two speakers
    fields = {"enableSpeakerDiarization": "true", "speaker1Label": "Alice", "speaker2Label": "Bob"}
    r = await post_subtitle(api, key, clip, **fields)
    assert r.status_code == 200, r.text
    cues = parse_subtitles(r.text)
    check_cues(cues, 70, 2)
    with open(clip, "rb") as fh:
        stt = await api.client.post(
            "/stt", headers={"x-api-key": key}, files={"audio": (clip.name, fh, "audio/wav")}, data=fields
        )
    assert stt.status_code == 200, stt.text
    names = [s["label"] for s in stt.json()["speakers"]]
    assert names == ["Alice", "Bob"]  # two people speak
    label_re = re.compile(r"^(" + "|".join(re.escape(n) for n in names) + r"): ")
    assert label_re.match(cues[0].lines[0]), cues[0]
    labelled = [m.group(1) for c in cues if (m := label_re.match(c.lines[0]))]
    assert labelled[0] == "Alice"
    assert all(a != b for a, b in itertools.pairwise(labelled)), labelled  # a label marks a change of speaker
    assert set(labelled) == set(names)
    # No label text inside a cue's later lines.
    assert not any(label_re.match(line) for c in cues for line in c.lines[1:])
